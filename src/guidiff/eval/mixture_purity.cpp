#include "guidiff/eval/mixture_purity.hpp"

#include <limits>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

torch::Tensor hits(const GaussianMixture& mixture, const torch::Tensor& samples, const torch::Tensor& requested) {
  if (!requested.defined() || requested.dim() != 1 || !samples.defined() || samples.dim() != 2 ||
      requested.size(0) != samples.size(0) || samples.size(0) == 0) {
    throw InputError("class purity needs samples [N, D] and requested labels [N] with N >= 1");
  }
  return nearest_class(mixture, samples).eq(requested.to(torch::kCPU, torch::kLong));
}

}  // namespace

torch::Tensor nearest_class(const GaussianMixture& mixture, const torch::Tensor& samples) {
  const torch::Tensor component = mixture.nearest_component(samples.to(torch::kCPU, torch::kFloat64));
  return mixture.component_class.to(torch::kLong).index_select(0, component);
}

double class_purity(const GaussianMixture& mixture, const torch::Tensor& samples, const torch::Tensor& requested) {
  return hits(mixture, samples, requested).to(torch::kFloat64).mean().item<double>();
}

torch::Tensor class_purity_per_class(const GaussianMixture& mixture, const torch::Tensor& samples,
                                     const torch::Tensor& requested) {
  const torch::Tensor hit = hits(mixture, samples, requested).to(torch::kFloat64);
  const torch::Tensor labels = requested.to(torch::kCPU, torch::kLong);
  torch::Tensor purity = torch::empty({mixture.num_classes}, torch::kFloat64);
  for (int64_t c = 0; c < mixture.num_classes; ++c) {
    const torch::Tensor mine = labels.eq(c);
    purity[c] = mine.any().item<bool>() ? hit.index({mine}).mean().item<double>()
                                        : std::numeric_limits<double>::quiet_NaN();
  }
  return purity;
}

}  // namespace guidiff
