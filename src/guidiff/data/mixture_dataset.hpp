// Labelled points drawn from a Gaussian mixture: the 2-D (or D-dimensional) toy data whose
// exact score the mixture oracle knows, so a model trained on it can be checked exactly.
#pragma once
#include <cstdint>
#include <string>

#include "guidiff/data/dataset.hpp"
#include "guidiff/models/gaussian_mixture.hpp"

namespace guidiff {

// n exact draws of GaussianMixture::sample(n, seed) as float32 [n, D] with their classes;
// num_classes is the mixture's. Throws InputError if n < 1 or the mixture is inconsistent.
Dataset mixture_dataset(const GaussianMixture& mixture, int64_t n, uint64_t seed,
                        const std::string& name = "mixture");

}  // namespace guidiff
