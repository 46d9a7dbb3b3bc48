// Counter-based Gaussian noise. The value drawn for (seed, sample index, stream, element)
// is a pure function of those four numbers, so a sample's noise -- its x_T and every
// ancestral step -- never depends on batch size, sharding or order.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace guidiff {

class SampleNoise {
 public:
  // The stream of the starting noise x_T; sampler steps use their step number (>= 0).
  static constexpr int64_t initial_stream = -1;

  explicit SampleNoise(uint64_t seed) : seed_(seed) {}
  uint64_t seed() const { return seed_; }

  // Standard normal float32 [N, per_sample_shape...] on the CPU; row n is drawn from the
  // stream (seed, sample_indices[n], stream). sample_indices: int64 [N].
  torch::Tensor normal(const torch::Tensor& sample_indices, int64_t stream,
                       torch::IntArrayRef per_sample_shape) const;

 private:
  uint64_t seed_;
};

}  // namespace guidiff
