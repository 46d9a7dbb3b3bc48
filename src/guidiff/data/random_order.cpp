#include "guidiff/data/random_order.hpp"

#include <string>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

constexpr uint64_t kGoldenGamma = 0x9E3779B97F4A7C15ull;  // splitmix64's Weyl increment

// splitmix64's output function: a bijection on 64-bit words with good avalanche.
uint64_t splitmix64_finalize(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The splitmix64 generator: a Weyl sequence passed through the finaliser.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t state) : state_(state) {}
  uint64_t next() { return splitmix64_finalize(state_ += kGoldenGamma); }
  // Uniform in [0, bound], bound >= 0, without modulo bias: draws below 2^64 mod (bound + 1)
  // are rejected, so every remaining residue class is equally large.
  uint64_t uniform_at_most(uint64_t bound) {
    const uint64_t range = bound + 1;
    if (range == 0) return next();  // bound = 2^64 - 1: every word is fair
    const uint64_t rejected_below = (0 - range) % range;
    uint64_t word = next();
    while (word < rejected_below) word = next();
    return word % range;
  }

 private:
  uint64_t state_;
};

}  // namespace

uint64_t data_random_bits(uint64_t seed, uint64_t domain, uint64_t a, uint64_t b) {
  uint64_t h = splitmix64_finalize(seed + kGoldenGamma);
  h = splitmix64_finalize(h ^ (domain + kGoldenGamma));
  h = splitmix64_finalize(h ^ (a + kGoldenGamma));
  return splitmix64_finalize(h ^ (b + kGoldenGamma));
}

torch::Tensor epoch_order(uint64_t seed, int64_t epoch, int64_t n) {
  if (n < 0) throw InputError("epoch_order: n must be >= 0, got " + std::to_string(n));
  if (epoch < 0) throw InputError("epoch_order: epoch must be >= 0, got " + std::to_string(epoch));
  torch::Tensor order = torch::arange(n, torch::kInt64);
  int64_t* values = order.data_ptr<int64_t>();
  SplitMix64 generator(data_random_bits(seed, kOrderDomain, static_cast<uint64_t>(epoch), 0));
  // Fisher-Yates (Knuth, TAOCP vol. 2, Algorithm 3.4.2 P): position i takes a uniformly
  // chosen element among those not yet placed.
  for (int64_t i = n - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(generator.uniform_at_most(static_cast<uint64_t>(i)));
    std::swap(values[i], values[j]);
  }
  return order;
}

}  // namespace guidiff
