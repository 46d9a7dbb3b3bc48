#include "guidiff/data/mixture_dataset.hpp"

#include "guidiff/core/errors.hpp"

namespace guidiff {

Dataset mixture_dataset(const GaussianMixture& mixture, int64_t n, uint64_t seed,
                        const std::string& name) {
  if (n < 1)
    throw InputError("mixture dataset: the number of points must be >= 1, got " +
                     std::to_string(n));
  mixture.validate();
  auto [points, labels] = mixture.sample(n, seed);
  Dataset dataset;
  dataset.name = name;
  dataset.images = points.to(torch::kFloat32);
  dataset.labels = labels.to(torch::kInt64);
  dataset.num_classes = mixture.num_classes;
  return dataset;
}

}  // namespace guidiff
