#include "guidiff/sampling/sample_noise.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"

namespace guidiff {

namespace {

// Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"): a
// bijective, keyed mixing of a 128-bit counter, so distinct counters give independent-
// looking outputs with no state. Key = the seed; counter = (element block, stream,
// sample index lo, sample index hi), an injective packing, so no two (index, stream,
// element) triples ever share random bits.
using Block = std::array<uint32_t, 4>;

constexpr uint32_t kPhiloxMultiplier0 = 0xD2511F53u;
constexpr uint32_t kPhiloxMultiplier1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxWeyl0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kPhiloxWeyl1 = 0xBB67AE85u;  // sqrt(3) - 1
constexpr int kPhiloxRounds = 10;

inline Block philox4x32(Block counter, uint32_t key0, uint32_t key1) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    if (round > 0) {
      key0 += kPhiloxWeyl0;
      key1 += kPhiloxWeyl1;
    }
    const uint64_t product0 = static_cast<uint64_t>(kPhiloxMultiplier0) * counter[0];
    const uint64_t product1 = static_cast<uint64_t>(kPhiloxMultiplier1) * counter[2];
    counter = {static_cast<uint32_t>(product1 >> 32) ^ counter[1] ^ key0,
               static_cast<uint32_t>(product1),
               static_cast<uint32_t>(product0 >> 32) ^ counter[3] ^ key1,
               static_cast<uint32_t>(product0)};
  }
  return counter;
}

constexpr double kTwoPi = 6.283185307179586476925286766559;
constexpr double kTwoToMinus32 = 1.0 / 4294967296.0;

// Box-Muller: two 32-bit uniforms -> two independent standard normals. u1 is taken in
// (0, 1) (never 0, so the log is finite); tails are cut at about 6.8 sigma.
inline void box_muller(uint32_t a, uint32_t b, float* out0, float* out1) {
  const double u1 = (static_cast<double>(a) + 0.5) * kTwoToMinus32;
  const double theta = kTwoPi * static_cast<double>(b) * kTwoToMinus32;
  const double radius = std::sqrt(-2.0 * std::log(u1));
  *out0 = static_cast<float>(radius * std::cos(theta));
  *out1 = static_cast<float>(radius * std::sin(theta));
}

constexpr int64_t kValuesPerBlock = 4;
constexpr int64_t kParallelGrain = 1024;  // blocks per task

}  // namespace

torch::Tensor SampleNoise::normal(const torch::Tensor& sample_indices, int64_t stream,
                                  torch::IntArrayRef per_sample_shape) const {
  if (!sample_indices.defined() || sample_indices.dim() != 1 ||
      sample_indices.scalar_type() != torch::kInt64) {
    throw InputError("sample noise: sample_indices must be int64 [N]");
  }
  if (stream < std::numeric_limits<int32_t>::min() || stream > std::numeric_limits<int32_t>::max()) {
    throw InputError("sample noise: stream " + std::to_string(stream) + " outside the 32-bit range");
  }
  int64_t per_sample = 1;
  for (const int64_t extent : per_sample_shape) {
    if (extent < 0) throw InputError("sample noise: negative extent in the per-sample shape");
    per_sample *= extent;
  }
  const int64_t blocks_per_sample = (per_sample + kValuesPerBlock - 1) / kValuesPerBlock;
  if (blocks_per_sample > (int64_t{1} << 32)) {
    throw InputError("sample noise: more than 2^34 values per sample");
  }

  const int64_t n = sample_indices.size(0);
  std::vector<int64_t> shape{n};
  shape.insert(shape.end(), per_sample_shape.begin(), per_sample_shape.end());
  auto result = torch::empty(shape, torch::TensorOptions().dtype(torch::kFloat32));
  if (result.numel() == 0) return result;

  const auto indices = sample_indices.to(torch::kCPU).contiguous();
  const int64_t* index_data = indices.data_ptr<int64_t>();
  float* out = result.data_ptr<float>();
  const uint32_t key0 = static_cast<uint32_t>(seed_);
  const uint32_t key1 = static_cast<uint32_t>(seed_ >> 32);
  const uint32_t stream_word = static_cast<uint32_t>(static_cast<int32_t>(stream));

  at::parallel_for(0, n * blocks_per_sample, kParallelGrain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / blocks_per_sample;
      const int64_t block = task % blocks_per_sample;
      const uint64_t index = static_cast<uint64_t>(index_data[row]);
      const Block bits = philox4x32({static_cast<uint32_t>(block), stream_word,
                                     static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32)},
                                    key0, key1);
      std::array<float, kValuesPerBlock> values;
      box_muller(bits[0], bits[1], &values[0], &values[1]);
      box_muller(bits[2], bits[3], &values[2], &values[3]);
      const int64_t first = block * kValuesPerBlock;
      const int64_t count = std::min(kValuesPerBlock, per_sample - first);
      float* destination = out + row * per_sample + first;
      for (int64_t i = 0; i < count; ++i) destination[i] = values[i];
    }
  });
  return result;
}

}  // namespace guidiff
