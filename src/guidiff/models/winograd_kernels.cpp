#include "guidiff/models/winograd_kernels.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "guidiff/models/cpu_lanes.hpp"

namespace guidiff::winograd {
namespace {

using cpu_lanes::for_each_row;
using cpu_lanes::Lanes;
using cpu_lanes::load;
using cpu_lanes::store;
static_assert(kLanes == cpu_lanes::kLanes, "the transforms take channels in lanes of eight");

// B^T d for one column (or row) of a 6x6 input tile (Lavin & Gray 2016, F(4x4, 3x3)):
// B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1].
__attribute__((always_inline)) inline void input_transform(const Lanes d[6], Lanes t[6]) {
  t[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
  t[1] = -4.0f * (d[1] + d[2]) + d[3] + d[4];
  t[2] = 4.0f * (d[1] - d[2]) - d[3] + d[4];
  t[3] = 2.0f * (d[3] - d[1]) - d[2] + d[4];
  t[4] = 2.0f * (d[1] - d[3]) - d[2] + d[4];
  t[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
}

// A^T m for one column (or row) of a 6x6 product tile:
// A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1].
__attribute__((always_inline)) inline void output_transform(const Lanes m[6], Lanes o[4]) {
  const Lanes sum12 = m[1] + m[2], diff12 = m[1] - m[2];
  const Lanes sum34 = m[3] + m[4], diff34 = m[3] - m[4];
  o[0] = m[0] + sum12 + sum34;
  o[1] = diff12 + 2.0f * diff34;
  o[2] = sum12 + 4.0f * sum34;
  o[3] = diff12 + 8.0f * diff34 + m[5];
}

// Channels handled together in one tile row's transforms: their slice of six image rows
// (6 x (W + 2) x 64 floats, 400 KB at W = 256) stays in the core's L2 cache.
constexpr int64_t kChannelBlock = 64;

// The lanes of a and b (numbered 0-7 and 8-15) named by I, in that order.
template <int... I>
__attribute__((always_inline)) inline Lanes shuffle(const Lanes& a, const Lanes& b) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, I...);
#else
  typedef int LaneIndices __attribute__((vector_size(kLanes * sizeof(int))));
  return __builtin_shuffle(a, b, LaneIndices{I...});
#endif
}

// An 8 x 8 block, dst[j * dst_stride + i] = src[i * src_stride + j], in registers: eight rows
// loaded, interleaved in three rounds (pairs of values, pairs of pairs, halves), and eight
// columns stored. The compilers lower the shuffles to unpack, shuffle and lane-permute
// instructions.
static_assert(kLanes == 8, "transpose_block is written for 8 lanes");
__attribute__((always_inline)) inline void transpose_block(const float* src, int64_t src_stride,
                                                           float* dst, int64_t dst_stride) {
  Lanes r[8], t[8], u[8];
  for (int i = 0; i < 8; ++i) r[i] = load(src + i * src_stride);
  for (int i = 0; i < 8; i += 2) {  // t[i] = r[i][0] r[i+1][0] r[i][1] r[i+1][1], then 4, 5
    t[i] = shuffle<0, 8, 1, 9, 4, 12, 5, 13>(r[i], r[i + 1]);
    t[i + 1] = shuffle<2, 10, 3, 11, 6, 14, 7, 15>(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // u[i + c] = column c of rows i..i+3, then column c + 4
    u[i] = shuffle<0, 1, 8, 9, 4, 5, 12, 13>(t[i], t[i + 2]);
    u[i + 1] = shuffle<2, 3, 10, 11, 6, 7, 14, 15>(t[i], t[i + 2]);
    u[i + 2] = shuffle<0, 1, 8, 9, 4, 5, 12, 13>(t[i + 1], t[i + 3]);
    u[i + 3] = shuffle<2, 3, 10, 11, 6, 7, 14, 15>(t[i + 1], t[i + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // column j from the low halves, column j + 4 from the high
    store(dst + j * dst_stride, shuffle<0, 1, 2, 3, 8, 9, 10, 11>(u[j], u[j + 4]));
    store(dst + (j + 4) * dst_stride, shuffle<4, 5, 6, 7, 12, 13, 14, 15>(u[j], u[j + 4]));
  }
}

// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < columns, in 8 x 8
// blocks so that both sides are read and written a cache line at a time. It moves data
// between the network's [C, H, W] layout and the channel-innermost layout of the transforms.
// Inlined into its callers, so it is compiled for each of their CPU clones.
__attribute__((always_inline)) inline void transpose(const float* src, int64_t src_stride,
                                                     float* dst, int64_t dst_stride, int64_t rows,
                                                     int64_t columns) {
  constexpr int64_t kBlock = 8;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    const int64_t i1 = std::min(rows, i0 + kBlock);
    for (int64_t j0 = 0; j0 < columns; j0 += kBlock) {
      const int64_t j1 = std::min(columns, j0 + kBlock);
      if (i1 - i0 == kBlock && j1 - j0 == kBlock) {
        transpose_block(src + i0 * src_stride + j0, src_stride, dst + j0 * dst_stride + i0,
                        dst_stride);
        continue;
      }
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
    }
  }
}

// One tile row of transform_input: its six image rows are gathered a block of channels at a
// time, channel innermost, so that eight channels are transformed at once.
GUIDIFF_VECTOR_CLONES void transform_input_row(const float* input, const TileGrid& grid,
                                               int64_t channels, int64_t row,
                                               std::vector<float>& gathered_rows, float* out) {
  const int64_t tiles = grid.tiles(), columns = grid.columns();
  const int64_t padded_width = columns * kTile + 2;  // one zero column left, >= 1 right
  const int64_t n = row / grid.rows(), tile_y = row % grid.rows();
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t block = std::min(kChannelBlock, channels - c0);
    for (int64_t r = 0; r < kInputTile; ++r) {
      float* gathered = gathered_rows.data() + r * padded_width * block;
      const int64_t y = tile_y * kTile - 1 + r;
      if (y < 0 || y >= grid.height) {  // the padding above and below the image
        std::fill(gathered, gathered + padded_width * block, 0.0f);
        continue;
      }
      // The padding left and right of the image, and past it to the last tile's edge.
      std::fill(gathered, gathered + block, 0.0f);
      std::fill(gathered + (grid.width + 1) * block, gathered + padded_width * block, 0.0f);
      transpose(input + ((n * channels + c0) * grid.height + y) * grid.width,
                grid.height * grid.width, gathered + block, block, block, grid.width);
    }
    float* target = out + row * columns * channels + c0;
    for (int64_t tile_x = 0; tile_x < columns; ++tile_x, target += channels) {
      const float* tile = gathered_rows.data() + tile_x * kTile * block;
      for (int64_t c = 0; c < block; c += kLanes) {
        Lanes d[6][6], t[6][6];
        for (int r = 0; r < 6; ++r)
          for (int s = 0; s < 6; ++s) d[s][r] = load(tile + (r * padded_width + s) * block + c);
        for (int s = 0; s < 6; ++s) input_transform(d[s], t[s]);  // t[s][i] = (B^T d)[i][s]
        for (int i = 0; i < 6; ++i) {
          Lanes row_values[6], v[6];
          for (int s = 0; s < 6; ++s) row_values[s] = t[s][i];
          input_transform(row_values, v);  // v[j] = (B^T d B)[i][j]
          for (int j = 0; j < 6; ++j) store(target + (i * 6 + j) * tiles * channels + c, v[j]);
        }
      }
    }
  }
}

// One tile row of transform_output: its four output rows are made a block of channels at a
// time, channel innermost, then transposed into the output.
GUIDIFF_VECTOR_CLONES void transform_output_row(const float* products, const TileGrid& grid,
                                                int64_t channels, const float* bias, int64_t row,
                                                std::vector<float>& output_rows, float* output) {
  const int64_t tiles = grid.tiles(), columns = grid.columns();
  const int64_t tiled_width = columns * kTile;
  const int64_t n = row / grid.rows(), tile_y = row % grid.rows();
  for (int64_t c0 = 0; c0 < channels; c0 += kChannelBlock) {
    const int64_t block = std::min(kChannelBlock, channels - c0);
    const float* source = products + row * columns * channels + c0;
    for (int64_t tile_x = 0; tile_x < columns; ++tile_x, source += channels) {
      for (int64_t c = 0; c < block; c += kLanes) {
        Lanes m[6][6], t[6][4];
        for (int i = 0; i < 6; ++i)
          for (int j = 0; j < 6; ++j) m[j][i] = load(source + (i * 6 + j) * tiles * channels + c);
        for (int j = 0; j < 6; ++j) output_transform(m[j], t[j]);  // t[j][p] = (A^T M)[p][j]
        const Lanes b = load(bias + c0 + c);
        for (int p = 0; p < 4; ++p) {
          Lanes row_values[6], o[4];
          for (int j = 0; j < 6; ++j) row_values[j] = t[j][p];
          output_transform(row_values, o);  // o[q] = (A^T M A)[p][q]
          for (int q = 0; q < 4; ++q)
            store(output_rows.data() + (p * tiled_width + tile_x * kTile + q) * block + c,
                  o[q] + b);
        }
      }
    }
    for (int64_t p = 0; p < kTile && tile_y * kTile + p < grid.height; ++p) {
      transpose(output_rows.data() + p * tiled_width * block, block,
                output + ((n * channels + c0) * grid.height + tile_y * kTile + p) * grid.width,
                grid.height * grid.width, grid.width, block);
    }
  }
}

// One row of transform_filter: row's filters for every column, eight columns at a time.
GUIDIFF_VECTOR_CLONES void transform_filter_row(const float* weight, int64_t row_step,
                                                int64_t column_step, int64_t columns, int64_t rows,
                                                bool for_input_gradient, int64_t row,
                                                float* transformed) {
  // G for F(4x4, 3x3), rows for the points 0, 1, -1, 2, -2 and infinity.
  constexpr float G[6][3] = {{1.0f / 4, 0.0f, 0.0f},
                             {-1.0f / 6, -1.0f / 6, -1.0f / 6},
                             {-1.0f / 6, 1.0f / 6, -1.0f / 6},
                             {1.0f / 24, 1.0f / 12, 1.0f / 6},
                             {1.0f / 24, -1.0f / 12, 1.0f / 6},
                             {0.0f, 0.0f, 1.0f}};
  for (int64_t c = 0; c < columns; c += kLanes) {
    const float* taps = weight + row * row_step + c * column_step;
    Lanes g[3][3];  // eight columns' filters; for the input gradient reversed in both axes
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b) {
        const int tap = for_input_gradient ? (2 - a) * 3 + (2 - b) : a * 3 + b;
        for (int lane = 0; lane < kLanes; ++lane) g[a][b][lane] = taps[lane * column_step + tap];
      }
    Lanes Gg[6][3];  // G g
    for (int i = 0; i < 6; ++i)
      for (int b = 0; b < 3; ++b)
        Gg[i][b] = G[i][0] * g[0][b] + G[i][1] * g[1][b] + G[i][2] * g[2][b];
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 6; ++j)
        store(transformed + ((i * 6 + j) * rows + row) * columns + c,
              Gg[i][0] * G[j][0] + Gg[i][1] * G[j][1] + Gg[i][2] * G[j][2]);
  }
}

}  // namespace

void transform_filter(const float* weight, int64_t out_channels, int64_t in_channels,
                      bool for_input_gradient, float* transformed) {
  // The transformed filter's [rows, columns] per tile position: [C_in, C_out], or swapped.
  const int64_t rows = for_input_gradient ? out_channels : in_channels;
  const int64_t columns = for_input_gradient ? in_channels : out_channels;
  // Where (row, column)'s taps start, and how far apart consecutive columns' taps lie.
  const int64_t row_step = for_input_gradient ? in_channels * 9 : 9;
  const int64_t column_step = for_input_gradient ? 9 : in_channels * 9;
  for_each_row(rows, 0, [&](std::vector<float>&, int64_t row) {
    transform_filter_row(weight, row_step, column_step, columns, rows, for_input_gradient, row,
                         transformed);
  });
}

void transform_input(const float* input, const TileGrid& grid, int64_t channels, float* out) {
  const int64_t scratch = kInputTile * (grid.columns() * kTile + 2) * kChannelBlock;
  for_each_row(grid.batch * grid.rows(), scratch, [&](std::vector<float>& rows, int64_t row) {
    transform_input_row(input, grid, channels, row, rows, out);
  });
}

void transform_output(const float* products, const TileGrid& grid, int64_t channels,
                      const float* bias, float* output) {
  const std::vector<float> no_bias(bias ? 0 : channels, 0.0f);
  const int64_t scratch = kTile * grid.columns() * kTile * kChannelBlock;
  for_each_row(grid.batch * grid.rows(), scratch, [&](std::vector<float>& rows, int64_t row) {
    transform_output_row(products, grid, channels, bias ? bias : no_bias.data(), row, rows, output);
  });
}

}  // namespace guidiff::winograd
