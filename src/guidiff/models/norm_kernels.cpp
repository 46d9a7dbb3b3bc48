#include "guidiff/models/norm_kernels.hpp"

#include <cmath>

#include "guidiff/models/cpu_lanes.hpp"

namespace guidiff::norm_kernels {
namespace {

using cpu_lanes::for_each_row;
static_assert(kLanes == cpu_lanes::kLanes, "channels are taken in lanes of eight");
using cpu_lanes::Lanes;
using cpu_lanes::load;
using cpu_lanes::store;
typedef uint16_t Halves __attribute__((vector_size(kLanes * sizeof(uint16_t))));
typedef uint32_t Words __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef int32_t Ints __attribute__((vector_size(kLanes * sizeof(int32_t))));

// A block of rows is read twice (its mean, then its centred squares) while it sits in the
// core's L2 cache: 2^17 values, 256 KiB of bf16.
constexpr int64_t kBlockValues = int64_t{1} << 17;
// Column sums accumulate in float32 over at most this many rows, then add into the block's
// total: the rounding error grows with 32 + rows / 32 terms instead of with all the rows.
constexpr int64_t kPartialRows = 32;

// bf16 is the upper half of a float32, so widening is exact.
__attribute__((always_inline)) inline Lanes widen(const uint16_t* p) {
  Halves halves;
  std::memcpy(&halves, p, sizeof halves);
  const Words words = __builtin_convertvector(halves, Words) << 16;
  Lanes values;
  std::memcpy(&values, &words, sizeof values);
  return values;
}

// Rounds to the nearest bf16, ties to even (adding 0x7fff plus the kept half's lowest bit
// carries into the upper half exactly when the lower half is past the midpoint); NaN becomes
// bf16's quiet NaN rather than rounding into infinity.
__attribute__((always_inline)) inline void narrow(const Lanes& values, uint16_t* p) {
  Words words;
  std::memcpy(&words, &values, sizeof words);
  const Words rounded = (words + 0x7fffu + ((words >> 16) & 1u)) >> 16;
  const Words is_nan = (Words)((words & 0x7fffffffu) > 0x7f800000u);
  const Halves halves = __builtin_convertvector((is_nan & 0x7fc0u) | (~is_nan & rounded), Halves);
  std::memcpy(p, &halves, sizeof halves);
}

// mask ? a : b, lane by lane (mask lanes all ones or all zeros).
__attribute__((always_inline)) inline Lanes select(const Ints& mask, const Lanes& a,
                                                   const Lanes& b) {
  return (Lanes)(((Ints)a & mask) | ((Ints)b & ~mask));
}

// e^x for x in [-87, 88], where 2^k stays a normal float: x = k ln 2 + r with k the nearest
// integer to x / ln 2 and |r| <= ln 2 / 2 (ln 2 split in two, the upper part exact in 15 bits,
// so k ln2_hi is exact: Cody & Waite 1980), e^r by its Taylor series to degree 7 (the
// remainder is below 1e-8 of the value), and 2^k built in the exponent bits.
__attribute__((always_inline)) inline Lanes exp_in_range(const Lanes& x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2High = 0.693145751953125f, kLn2Low = 1.42860682030941723e-6f;
  // Adding and subtracting 1.5 * 2^23 rounds to an integer (to nearest, ties to even).
  constexpr float kRound = 12582912.0f;
  const Lanes k = (x * kLog2e + kRound) - kRound;
  const Lanes r = (x - k * kLn2High) - k * kLn2Low;
  Lanes p = r * (1.0f / 5040) + (1.0f / 720);
  p = p * r + (1.0f / 120);
  p = p * r + (1.0f / 24);
  p = p * r + (1.0f / 6);
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const Ints exponent = (__builtin_convertvector(k, Ints) + 127) << 23;
  return p * (Lanes)exponent;
}

// silu(v) = v / (1 + e^-v) (Elfwing et al. 2018). e^-v is taken at -v clamped to [-87, 88]:
// beyond, v / (1 + e^-v) is v itself or below 1e-36 in size, as it is at the clamp. A NaN v is
// replaced by 0 inside the exponential, and v's NaN carries to the result.
__attribute__((always_inline)) inline Lanes exp_negated(const Lanes& v) {
  Lanes z = -v;
  z = select(z < -87.0f, Lanes{} - 87.0f, z);
  z = select(z > 88.0f, Lanes{} + 88.0f, z);
  z = select(z == z, z, Lanes{});
  return exp_in_range(z);
}
__attribute__((always_inline)) inline Lanes silu(const Lanes& v) {
  return v / (1.0f + exp_negated(v));
}

// silu'(v) = s (1 + v (1 - s)) with s = 1 / (1 + e^-v), the logistic function; e^-v clamped as
// in silu (beyond the clamp the slope is 1, or below 1e-35 in size).
__attribute__((always_inline)) inline Lanes silu_slope(const Lanes& v) {
  const Lanes s = 1.0f / (1.0f + exp_negated(v));
  return s * (1.0f + v * (1.0f - s));
}

// Column sums of one block of rows, in float32: partials over kPartialRows rows, each added into
// the block's sums. add(row, c) adds row's terms at channels [c, c + kLanes) into
// partial[k * channels + c], one term for each of the kOutputs sums, which end in
// sums[k * channels + c]. Row by row and four vectors of channels at a time, so that consecutive
// operations go to different channels and do not wait on each other. partial and sums hold
// kOutputs * channels floats.
template <int kOutputs, typename AddRow>
__attribute__((always_inline)) inline void partial_column_sums(int64_t rows, int64_t channels,
                                                               float* partial, float* sums,
                                                               const AddRow& add) {
  const int64_t length = kOutputs * channels;
  std::fill(sums, sums + length, 0.0f);
  for (int64_t first = 0; first < rows; first += kPartialRows) {
    const int64_t last = std::min(rows, first + kPartialRows);
    std::fill(partial, partial + length, 0.0f);
    for (int64_t row = first; row < last; ++row) {
      int64_t c = 0;
      for (; c + 4 * kLanes <= channels; c += 4 * kLanes)
        for (int k = 0; k < 4; ++k) add(row, c + k * kLanes);
      for (; c < channels; c += kLanes) add(row, c);
    }
    for (int64_t i = 0; i < length; i += kLanes)
      store(sums + i, load(sums + i) + load(partial + i));
  }
}

// sums[c] = the sum over the rows of x[row][c], or with kCentred of (x[row][c] - centre[c])^2.
// partial holds `channels` floats.
template <bool kCentred>
__attribute__((always_inline)) inline void column_sums(const uint16_t* x, int64_t rows,
                                                       int64_t channels, const float* centre,
                                                       float* partial, float* sums) {
  partial_column_sums<1>(
      rows, channels, partial, sums, [&](int64_t row, int64_t c) __attribute__((always_inline)) {
        Lanes v = widen(x + row * channels + c);
        if constexpr (kCentred) {
          v -= load(centre + c);
          v *= v;
        }
        store(partial + c, load(partial + c) + v);
      });
}

// out[at, at + kLanes) = narrow(value(at)) for every vector of a block's `values` values, four
// vectors at a time: the CPU then overlaps their long chains of dependent operations (the
// exponential, the division, the rounding).
template <typename Value>
__attribute__((always_inline)) inline void narrow_in_fours(int64_t values, uint16_t* out,
                                                           const Value& value) {
  constexpr int kTogether = 4;
  int64_t at = 0;
  for (; at + kTogether * kLanes <= values; at += kTogether * kLanes) {
    Lanes v[kTogether];
    for (int k = 0; k < kTogether; ++k) v[k] = value(at + k * kLanes);
    for (int k = 0; k < kTogether; ++k) narrow(v[k], out + at + k * kLanes);
  }
  for (; at < values; at += kLanes) narrow(value(at), out + at);
}

// One block of rows: its per-group mean and centred sum of squares (in float64 from float32
// column sums). scratch holds 3 * channels floats.
GUIDIFF_VECTOR_CLONES void block_moments(const uint16_t* x, int64_t rows, int64_t channels,
                                         int64_t groups, float* scratch, double* means,
                                         double* squares) {
  const int64_t per_group = channels / groups;
  float* sums = scratch;
  float* centre = scratch + channels;
  float* partial = scratch + 2 * channels;
  const auto group_total = [&](int64_t g) {
    double total = 0.0;
    for (int64_t c = g * per_group; c < (g + 1) * per_group; ++c) total += sums[c];
    return total;
  };
  column_sums<false>(x, rows, channels, nullptr, partial, sums);
  const double count = static_cast<double>(rows * per_group);
  for (int64_t g = 0; g < groups; ++g) {
    means[g] = group_total(g) / count;
    std::fill(centre + g * per_group, centre + (g + 1) * per_group, static_cast<float>(means[g]));
  }
  column_sums<true>(x, rows, channels, centre, partial, sums);
  // The squares are centred on the float32 rounding of the mean, which shifts their sum by
  // count * (mean - centre)^2.
  for (int64_t g = 0; g < groups; ++g) {
    const double shift = means[g] - static_cast<double>(centre[g * per_group]);
    squares[g] = std::max(0.0, group_total(g) - count * shift * shift);
  }
}

// The rows are consecutive, so the block is one run of rows * channels values.
GUIDIFF_VECTOR_CLONES void normalize_silu_rows(const uint16_t* x, int64_t rows, int64_t channels,
                                               const float* centre, const float* scale,
                                               const float* offset, uint16_t* y) {
  narrow_in_fours(
      rows * channels, y, [&](int64_t at) __attribute__((always_inline)) {
        // A vector never straddles two rows: channels % kLanes == 0.
        const int64_t c = at % channels;
        return silu((widen(x + at) - load(centre + c)) * load(scale + c) + load(offset + c));
      });
}

// Per channel of one sample, for the backward passes: the group's mean and rstd, rstd * gain
// (the forward's scale), and offset.
struct ChannelTerms {
  const float *centre, *inverse, *scale, *offset;
};

// At x[at], channel c: the pre-activation's gradient da = dy * silu'(a) and xhat. a is taken as
// normalize_silu_rows takes it.
__attribute__((always_inline)) inline Lanes activation_gradient(const uint16_t* x,
                                                                const uint16_t* dy, int64_t at,
                                                                int64_t c, const ChannelTerms& t,
                                                                Lanes& xhat) {
  const Lanes centred = widen(x + at) - load(t.centre + c);
  xhat = centred * load(t.inverse + c);
  return widen(dy + at) * silu_slope(centred * load(t.scale + c) + load(t.offset + c));
}

// One block of rows: the column sums of da (sums[c]) and of da * xhat (sums[channels + c]).
// scratch holds 2 * channels floats.
GUIDIFF_VECTOR_CLONES void backward_block_sums(const uint16_t* x, const uint16_t* dy, int64_t rows,
                                               int64_t channels, const ChannelTerms& terms,
                                               float* scratch, float* sums) {
  float* partial_offset = scratch;
  float* partial_gain = scratch + channels;
  partial_column_sums<2>(
      rows, channels, scratch, sums, [&](int64_t row, int64_t c) __attribute__((always_inline)) {
        Lanes xhat;
        const Lanes da = activation_gradient(x, dy, row * channels + c, c, terms, xhat);
        store(partial_offset + c, load(partial_offset + c) + da);
        store(partial_gain + c, load(partial_gain + c) + da * xhat);
      });
}

// One block of rows: dx = da * scale - (shift + xhat * slope) rounded to bf16, with scale =
// rstd * gain, shift = rstd * mean_group(g) and slope = rstd * mean_group(g xhat) per channel.
GUIDIFF_VECTOR_CLONES void backward_block_input(const uint16_t* x, const uint16_t* dy,
                                                int64_t rows, int64_t channels,
                                                const ChannelTerms& terms, const float* shift,
                                                const float* slope, uint16_t* dx) {
  narrow_in_fours(
      rows * channels, dx, [&](int64_t at) __attribute__((always_inline)) {
        const int64_t c = at % channels;
        Lanes xhat;
        const Lanes da = activation_gradient(x, dy, at, c, terms, xhat);
        return da * load(terms.scale + c) - (load(shift + c) + xhat * load(slope + c));
      });
}

// One sample's group mean and rstd * gain for each channel (what normalize_silu_rows takes as
// centre and scale), and rstd itself where `inverse` is given; mean and rstd per sample and
// group, gain per sample and channel.
void per_channel_terms(const ChannelsLastShape& shape, int64_t sample, const float* mean,
                       const float* rstd, const float* gain, float* centre, float* scale,
                       float* inverse = nullptr) {
  const int64_t per_group = shape.channels / shape.groups;
  for (int64_t c = 0; c < shape.channels; ++c) {
    const int64_t g = sample * shape.groups + c / per_group;
    centre[c] = mean[g];
    scale[c] = rstd[g] * gain[sample * shape.channels + c];
    if (inverse) inverse[c] = rstd[g];
  }
}

// Each sample's positions in blocks of about kBlockValues values; blocks never span two samples.
struct RowBlocks {
  ChannelsLastShape shape;
  int64_t rows, per_sample;
  explicit RowBlocks(const ChannelsLastShape& shape)
      : shape(shape),
        rows(std::max<int64_t>(1, std::min(shape.positions, kBlockValues / shape.channels))),
        per_sample((shape.positions + rows - 1) / rows) {}
  int64_t all() const { return shape.batch * per_sample; }
  int64_t sample(int64_t block) const { return block / per_sample; }
  int64_t first_row(int64_t block) const { return (block % per_sample) * rows; }
  int64_t count(int64_t block) const { return std::min(rows, shape.positions - first_row(block)); }
  // Where the block's values start in the [batch, positions, channels] array.
  int64_t start(int64_t block) const {
    return (sample(block) * shape.positions + first_row(block)) * shape.channels;
  }
};

}  // namespace

void group_statistics(const uint16_t* x, const ChannelsLastShape& shape, double eps, float* mean,
                      float* rstd) {
  const RowBlocks blocks(shape);
  const int64_t groups = shape.groups;
  std::vector<double> block_means(blocks.all() * groups), block_squares(blocks.all() * groups);
  for_each_row(blocks.all(), 3 * shape.channels, [&](std::vector<float>& scratch, int64_t block) {
    block_moments(x + blocks.start(block), blocks.count(block), shape.channels, groups,
                  scratch.data(), block_means.data() + block * groups,
                  block_squares.data() + block * groups);
  });
  // Chan, Golub & LeVeque's merge: M2 = sum_b M2_b + sum_b n_b (mean_b - mean)^2.
  const double per_group = static_cast<double>(shape.channels / groups);
  const double total = static_cast<double>(shape.positions) * per_group;
  for (int64_t sample = 0; sample < shape.batch; ++sample) {
    const int64_t first = sample * blocks.per_sample;
    for (int64_t g = 0; g < groups; ++g) {
      double weighted = 0.0;
      for (int64_t b = first; b < first + blocks.per_sample; ++b)
        weighted += static_cast<double>(blocks.count(b)) * per_group * block_means[b * groups + g];
      const double group_mean = weighted / total;
      double squares = 0.0;
      for (int64_t b = first; b < first + blocks.per_sample; ++b) {
        const double d = block_means[b * groups + g] - group_mean;
        squares += block_squares[b * groups + g] +
                   static_cast<double>(blocks.count(b)) * per_group * d * d;
      }
      mean[sample * groups + g] = static_cast<float>(group_mean);
      rstd[sample * groups + g] = static_cast<float>(1.0 / std::sqrt(squares / total + eps));
    }
  }
}

void normalize_silu(const uint16_t* x, const ChannelsLastShape& shape, const float* mean,
                    const float* rstd, const float* gain, const float* offset, uint16_t* y) {
  const RowBlocks blocks(shape);
  const int64_t channels = shape.channels;
  for_each_row(blocks.all(), 2 * channels, [&](std::vector<float>& scratch, int64_t block) {
    const int64_t sample = blocks.sample(block);
    float* centre = scratch.data();
    float* scale = centre + channels;
    per_channel_terms(shape, sample, mean, rstd, gain, centre, scale);
    normalize_silu_rows(x + blocks.start(block), blocks.count(block), channels, centre, scale,
                        offset + sample * channels, y + blocks.start(block));
  });
}

void normalize_silu_backward(const uint16_t* x, const uint16_t* dy, const ChannelsLastShape& shape,
                             const float* mean, const float* rstd, const float* gain,
                             const float* offset, uint16_t* dx, float* gain_gradient,
                             float* offset_gradient) {
  const RowBlocks blocks(shape);
  const int64_t channels = shape.channels, groups = shape.groups, per_group = channels / groups;
  // Per sample and channel: the group's mean, rstd, rstd * gain and the offset (the last two
  // as normalize_silu forms them).
  std::vector<float> centre(shape.batch * channels), inverse(centre.size()), scale(centre.size());
  for (int64_t sample = 0; sample < shape.batch; ++sample) {
    const int64_t first = sample * channels;
    per_channel_terms(shape, sample, mean, rstd, gain, centre.data() + first, scale.data() + first,
                      inverse.data() + first);
  }
  const auto terms = [&](int64_t sample) {
    const int64_t first = sample * channels;
    return ChannelTerms{centre.data() + first, inverse.data() + first, scale.data() + first,
                        offset + first};
  };
  // Pass 1: each block's column sums of da and da * xhat, in float32.
  std::vector<float> block_sums(blocks.all() * 2 * channels);
  for_each_row(blocks.all(), 2 * channels, [&](std::vector<float>& scratch, int64_t block) {
    float* sums = block_sums.data() + block * 2 * channels;
    backward_block_sums(x + blocks.start(block), dy + blocks.start(block), blocks.count(block),
                        channels, terms(blocks.sample(block)), scratch.data(), sums);
  });
  // Each sample's sums in float64, block after block: the gradients of offset and gain.
  std::vector<double> offset_sums(centre.size()), gain_sums(centre.size());
  for (int64_t block = 0; block < blocks.all(); ++block) {
    const float* sums = block_sums.data() + block * 2 * channels;
    const int64_t first = blocks.sample(block) * channels;
    for (int64_t c = 0; c < channels; ++c) {
      offset_sums[first + c] += sums[c];
      gain_sums[first + c] += sums[channels + c];
    }
  }
  for (size_t i = 0; i < centre.size(); ++i) {
    offset_gradient[i] = static_cast<float>(offset_sums[i]);
    gain_gradient[i] = static_cast<float>(gain_sums[i]);
  }
  // The group means of g = da * gain and of g * xhat, times rstd, per sample and channel.
  std::vector<float> shift(centre.size()), slope(centre.size());
  const double count = static_cast<double>(shape.positions * per_group);
  for (int64_t sample = 0; sample < shape.batch; ++sample) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t first = sample * channels + g * per_group;
      double g_sum = 0.0, g_xhat_sum = 0.0;
      for (int64_t i = first; i < first + per_group; ++i) {
        g_sum += static_cast<double>(gain[i]) * offset_sums[i];
        g_xhat_sum += static_cast<double>(gain[i]) * gain_sums[i];
      }
      const double r = rstd[sample * groups + g];
      std::fill(shift.begin() + first, shift.begin() + first + per_group,
                static_cast<float>(r * g_sum / count));
      std::fill(slope.begin() + first, slope.begin() + first + per_group,
                static_cast<float>(r * g_xhat_sum / count));
    }
  }
  // Pass 2: dx.
  for_each_row(blocks.all(), 0, [&](std::vector<float>&, int64_t block) {
    const int64_t sample = blocks.sample(block);
    backward_block_input(x + blocks.start(block), dy + blocks.start(block), blocks.count(block),
                         channels, terms(sample), shift.data() + sample * channels,
                         slope.data() + sample * channels, dx + blocks.start(block));
  });
}

}  // namespace guidiff::norm_kernels
