// The data layer's randomness: which order an epoch visits the samples in, and per-sample
// coins (augmentation). Everything is a pure function of (seed, epoch, sample index), so a
// run resumed from a saved LoaderPosition sees exactly the batches an uninterrupted run
// would have seen, whatever the batch size or thread timing.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace guidiff {

// Where a loader stands: the next sample is epoch_order(seed, epoch, N)[offset].
// offset lies in [0, N]; N means the epoch is used up.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t offset = 0;
  bool operator==(const LoaderPosition& other) const {
    return epoch == other.epoch && offset == other.offset;
  }
  bool operator!=(const LoaderPosition& other) const { return !(*this == other); }
};

// A uniformly random permutation of [0, n), int64 [n], that depends only on (seed, epoch, n):
// Fisher-Yates driven by splitmix64 words with unbiased (rejection) bounded draws, so the
// order is identical on every platform and libtorch version. Throws InputError if n < 0 or
// epoch < 0.
torch::Tensor epoch_order(uint64_t seed, int64_t epoch, int64_t n);

// 64 random bits that depend only on (seed, domain, a, b): a chain of splitmix64 finalisers
// (Steele, Lea & Flood 2014). `domain` keeps unrelated uses (order, flips, ...) independent.
uint64_t data_random_bits(uint64_t seed, uint64_t domain, uint64_t a, uint64_t b);

// The domains used by the data layer.
constexpr uint64_t kOrderDomain = 1;
constexpr uint64_t kFlipDomain = 2;

}  // namespace guidiff
