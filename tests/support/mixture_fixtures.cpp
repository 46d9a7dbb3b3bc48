#include "support/mixture_fixtures.hpp"

#include "guidiff/sampling/sample_noise.hpp"

namespace guidiff::testing {

torch::Tensor diagonal_covariances(const std::vector<std::vector<double>>& variances) {
  std::vector<torch::Tensor> rows;
  for (const auto& row : variances) rows.push_back(torch::tensor(row, torch::kFloat64));
  return torch::diag_embed(torch::stack(rows));
}

GaussianMixture make_mixture(std::vector<double> weights, std::vector<std::vector<double>> means,
                             torch::Tensor covariances, std::vector<int64_t> classes, int64_t num_classes) {
  GaussianMixture mixture;
  std::vector<torch::Tensor> mean_rows;
  for (const auto& mean : means) mean_rows.push_back(torch::tensor(mean, torch::kFloat64));
  mixture.weights = torch::tensor(weights, torch::kFloat64);
  mixture.means = torch::stack(mean_rows);
  mixture.covariances = covariances;
  mixture.component_class = torch::tensor(classes, torch::kInt64);
  mixture.num_classes = num_classes;
  mixture.validate();
  return mixture;
}

SampleBatch make_batch(int64_t n, int64_t dim, uint64_t seed, torch::Tensor labels, torch::ScalarType dtype) {
  SampleBatch batch;
  batch.sample_indices = torch::arange(n, torch::kLong);
  batch.x_T = SampleNoise(seed).normal(batch.sample_indices, SampleNoise::initial_stream, {dim}).to(dtype);
  batch.labels = labels;
  return batch;
}

}  // namespace guidiff::testing
