#include "support/fixture_models.hpp"

namespace guidiff::testing {
namespace {

// v [N] as x's dtype, shaped [N, 1, ...] to broadcast against x.
torch::Tensor per_sample(const torch::Tensor& v, const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = -1;
  return v.to(x.scalar_type()).reshape(shape);
}

}  // namespace

std::string fixture_path(const std::string& name) { return std::string(GUIDIFF_TEST_DATA_DIR) + "/" + name; }

DenoiserOutput LinearConditionalTwin::predict(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
  return {0.1 * x + 0.01 * per_sample(y, x) + 1e-4 * per_sample(t, x), torch::Tensor()};
}

DenoiserOutput LinearUnconditionalTwin::predict(const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
  return {0.2 * x + 1e-4 * per_sample(t, x), torch::Tensor()};
}

torch::Tensor LinearClassifierTwin::logits(const torch::Tensor& x, const torch::Tensor& t) {
  const auto i = torch::arange(16, torch::kFloat32).unsqueeze(1);
  const auto k = torch::arange(3, torch::kFloat32).unsqueeze(0);
  const auto weight = 0.1 * torch::sin(i + 3.0 * k);
  return x.flatten(1).matmul(weight.to(x.scalar_type())) + 1e-4 * t.to(x.scalar_type()).unsqueeze(1);
}

}  // namespace guidiff::testing
