#include "support/precision_bounds.hpp"

#include <cmath>

#include "guidiff/models/unet_blocks.hpp"

namespace guidiff::testing {

int64_t bf16_rounded_layers(const torch::nn::Module& network) {
  int64_t layers = 0;
  for (const auto& module : network.modules(/*include_self=*/true)) {
    const auto* raw = module.get();
    if (dynamic_cast<const torch::nn::Conv1dImpl*>(raw) || dynamic_cast<const torch::nn::Conv2dImpl*>(raw) ||
        dynamic_cast<const torch::nn::LinearImpl*>(raw)) {
      layers += 1;
    } else if (dynamic_cast<const AttentionBlockImpl*>(raw) || dynamic_cast<const AttentionPool2dImpl*>(raw)) {
      layers += 2;  // q k^T and the weighted sum of v (their projections are counted as convolutions)
    }
  }
  return layers;
}

double bf16_network_relative_error(const torch::nn::Module& network) {
  return bf16_unit_roundoff * std::sqrt(static_cast<double>(bf16_rounded_layers(network)));
}

}  // namespace guidiff::testing
