// Gaussian mixtures and starting batches that the sampler tests share.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/sampling/samplers.hpp"

namespace guidiff::testing {

// float64 [K, D, D] diagonal covariances from one row of variances per component.
torch::Tensor diagonal_covariances(const std::vector<std::vector<double>>& variances);

// A validated mixture from its weights, means [K][D], covariances and component classes.
GaussianMixture make_mixture(std::vector<double> weights, std::vector<std::vector<double>> means,
                             torch::Tensor covariances, std::vector<int64_t> classes, int64_t num_classes);

// n samples of x_T ~ N(0, I) from the seed's initial stream (sample indices 0..n-1), of
// `dtype`, with the given labels (or undefined).
SampleBatch make_batch(int64_t n, int64_t dim, uint64_t seed, torch::Tensor labels = {},
                       torch::ScalarType dtype = torch::kFloat32);

}  // namespace guidiff::testing
