// How well samples of a Gaussian-mixture model land in their requested class: the demo's
// and the tests' measure of guidance strength, computed against the exact mixture.
#pragma once
#include <torch/torch.h>

#include "guidiff/models/gaussian_mixture.hpp"

namespace guidiff {

// The class of each point's most responsible component at abar = 1 (the clean data),
// int64 [N]. samples: float [N, D].
torch::Tensor nearest_class(const GaussianMixture& mixture, const torch::Tensor& samples);

// Class purity: the fraction of samples whose nearest_class equals the requested label.
// requested: int64 [N]. Throws InputError if the lengths differ or N == 0.
double class_purity(const GaussianMixture& mixture, const torch::Tensor& samples,
                    const torch::Tensor& requested);

// Purity among the samples that requested class c, for c = 0..C-1 (NaN for a class no
// sample requested), float64 [C].
torch::Tensor class_purity_per_class(const GaussianMixture& mixture, const torch::Tensor& samples,
                                     const torch::Tensor& requested);

}  // namespace guidiff
