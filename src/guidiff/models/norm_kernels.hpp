// GroupNorm, scale-shift and SiLU over channels-last bf16 activations, on raw arrays: the
// layout bf16 sampling runs in on the CPU (store_lowered_weights_in_bf16), where a group's
// values are strided and spread over the whole sample, so that libtorch's operations would
// need a transposed copy. This file's .cpp is compiled like winograd_kernels.cpp (OpenMP, no
// precompiled header).
#pragma once
#include <cstdint>

namespace guidiff::norm_kernels {

// Channel counts must be multiples of this.
constexpr int64_t kLanes = 8;

// `batch` samples of `positions` x `channels` values (channels innermost); `groups` divides
// `channels`, and `channels` is a multiple of kLanes.
struct ChannelsLastShape {
  int64_t batch, positions, channels, groups;
};

// Every sample's per-group mean and 1 / sqrt(variance + eps) (biased variance, as GroupNorm),
// [batch * groups] each, from x's bf16 bit patterns. Blocks of rows (never two samples') are
// read twice while in cache, for their mean and their centred sum of squares; the blocks are
// merged in float64 (Chan, Golub & LeVeque 1979). The result does not depend on the thread
// count or on the other samples.
void group_statistics(const uint16_t* x, const ChannelsLastShape& shape, double eps, float* mean,
                      float* rstd);

// y = silu((x - mean) * rstd * gain + offset) rounded to bf16 (to nearest, ties to even; NaN
// stays NaN), with mean and rstd per sample and group, gain and offset per sample and channel
// ([batch * channels], float32).
void normalize_silu(const uint16_t* x, const ChannelsLastShape& shape, const float* mean,
                    const float* rstd, const float* gain, const float* offset, uint16_t* y);

// The gradients of normalize_silu's y (with group_statistics' mean and rstd) given y's
// gradient dy (bf16): dx rounded to bf16, and gain_gradient and offset_gradient
// ([batch * channels], float32; the gradients of each sample's gain and offset). With
// a = xhat * gain + offset, xhat = (x - mean) * rstd and da = dy * silu'(a):
//   d offset = sum da,  d gain = sum da xhat  (over the sample's positions),
//   dx = rstd (g - mean_group(g) - xhat mean_group(g xhat)),  g = da * gain,
// the input gradient through the group's mean and variance (Wu & He 2018, Eq. 1, with the
// biased variance and eps inside the root). The sums are float32 over blocks of rows, merged in
// float64 in a fixed order: the result does not depend on the thread count or the batch.
void normalize_silu_backward(const uint16_t* x, const uint16_t* dy, const ChannelsLastShape& shape,
                             const float* mean, const float* rstd, const float* gain,
                             const float* offset, uint16_t* dx, float* gain_gradient,
                             float* offset_gradient);

}  // namespace guidiff::norm_kernels
