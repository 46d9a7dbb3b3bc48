// The data transforms of Winograd's F(4x4, 3x3) (winograd_conv.hpp), on raw float32 arrays.
// This file's .cpp is compiled with OpenMP and without the precompiled header (CMakeLists.txt):
// it includes no torch headers beyond the thread count, so it builds in seconds.
#pragma once
#include <cstdint>

namespace guidiff::winograd {

constexpr int64_t kTile = 4;       // output tile side (m)
constexpr int64_t kInputTile = 6;  // input tile side (m + r - 1)
constexpr int64_t kPositions = kInputTile * kInputTile;
constexpr int64_t kLanes = 8;  // channels transformed together: counts must be multiples

// An image batch cut into 4x4 output tiles, `rows` x `columns` per image (the last ones cut
// at the image's edge).
struct TileGrid {
  int64_t batch, height, width;
  int64_t rows() const { return (height + kTile - 1) / kTile; }
  int64_t columns() const { return (width + kTile - 1) / kTile; }
  int64_t tiles() const { return batch * rows() * columns(); }
};

// NCHW [batch, channels, height, width] -> V [36, tiles, channels]: B^T d B for every 6x6 input
// tile d (zero outside the image: the convolution's padding of 1) and channel.
void transform_input(const float* input, const TileGrid& grid, int64_t channels,
                     float* transformed);

// [out_channels, in_channels, 3, 3] filter g -> U [36, in_channels, out_channels]: G g G^T for
// every channel pair, in float32. With `for_input_gradient`
// the filter is first turned into the one whose convolution gives the input gradient (its taps
// reversed, its channel axes swapped), and U is [36, out_channels, in_channels].
void transform_filter(const float* weight, int64_t out_channels, int64_t in_channels,
                      bool for_input_gradient, float* transformed);

// M [36, tiles, channels] -> NCHW output: A^T M A + bias (bias may be null) for every tile and
// channel, cut at the image's edge.
void transform_output(const float* products, const TileGrid& grid, int64_t channels,
                      const float* bias, float* output);

}  // namespace guidiff::winograd
