// Denoiser / Classifier adapters over the trainable networks (see network_adapters.hpp).
#include "guidiff/models/network_adapters.hpp"

#include <algorithm>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

// The device of a network's parameters (every network has one) and the type its inputs take:
// the widest among its parameters' (a network whose convolutions keep bf16 weights for bf16
// sampling, bf16_models.hpp, still takes float32 inputs, as autocast over float32 weights did).
torch::TensorOptions network_options(const torch::nn::Module& network) {
  const auto parameters = network.parameters();
  const auto widest = std::max_element(
      parameters.begin(), parameters.end(),
      [](const auto& a, const auto& b) { return a.element_size() < b.element_size(); });
  return widest->options();
}

// Undefined inputs pass through for the network to report.
torch::Tensor to_network(const torch::Tensor& x, const torch::TensorOptions& options) {
  return x.defined() ? x.to(options.device(), options.dtype().toScalarType()) : x;
}

torch::Tensor optional_to(const torch::Tensor& t, const torch::Device& device) {
  return t.defined() ? t.to(device) : t;
}

torch::Tensor back_to(const torch::Tensor& result, const torch::Tensor& x_t) {
  return result.to(x_t.device(), x_t.scalar_type());
}

}  // namespace

std::shared_ptr<UNetDenoiser> UNetDenoiser::conditioned_on(const torch::Tensor& low_res) const {
  if (!network_->config().is_super_resolution()) {
    throw ModelError("low-resolution conditioning needs a super-resolution UNet (config low_res_size > 0)");
  }
  auto conditioned = std::make_shared<UNetDenoiser>(network_);
  conditioned->low_res_ = low_res;
  return conditioned;
}

DenoiserOutput UNetDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                     const torch::Tensor& y) {
  const auto options = network_options(*network_);
  const auto y_in = num_classes() > 0 ? optional_to(y, options.device()) : torch::Tensor();
  torch::Tensor low_res;
  if (network_->config().is_super_resolution()) {
    if (!low_res_.defined()) {
      throw ModelError("a super-resolution UNet needs its low-resolution images (guidiff upsample --base-samples)");
    }
    const int64_t rows = low_res_.size(0);
    if (rows == 0 || x_t.size(0) % rows != 0) {
      throw ModelError("super-resolution UNet: a batch of " + std::to_string(x_t.size(0)) + " samples for " +
                       std::to_string(rows) + " low-resolution images");
    }
    low_res = to_network(low_res_, options).repeat({x_t.size(0) / rows, 1, 1, 1});
  }
  const auto out = network_->forward(to_network(x_t, options), optional_to(time, options.device()), y_in, low_res);
  const int64_t channels = network_->config().in_channels;
  DenoiserOutput result;
  result.eps = back_to(out.narrow(1, 0, channels), x_t);
  if (learns_variance()) result.variance_output = back_to(out.narrow(1, channels, channels), x_t);
  return result;
}

torch::Tensor UNetClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  const auto options = network_options(*network_);
  return back_to(network_->forward(to_network(x_t, options), optional_to(time, options.device())),
                 x_t);
}

DenoiserOutput MlpDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                    const torch::Tensor& y) {
  const auto options = network_options(*network_);
  const auto y_in = num_classes() > 0 ? optional_to(y, options.device()) : torch::Tensor();
  DenoiserOutput result;
  result.eps = back_to(
      network_->forward(to_network(x_t, options), optional_to(time, options.device()), y_in), x_t);
  return result;
}

torch::Tensor MlpClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  const auto options = network_options(*network_);
  return back_to(network_->forward(to_network(x_t, options), optional_to(time, options.device())),
                 x_t);
}

torch::Tensor CnnClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& /*time*/) {
  return back_to(network_->forward(to_network(x_t, network_options(*network_))), x_t);
}

}  // namespace guidiff
