// Per-sample transforms applied when data is read or batched.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace guidiff {

// Pixel values in [0, 255] (uint8, or float after resizing; any shape) -> float32
// p / 127.5 - 1, so 0 -> -1 and 255 -> 1 (the scaling of guided-diffusion's image_datasets.py).
// Throws InputError for other dtypes.
torch::Tensor pixels_to_unit_range(const torch::Tensor& pixels);

// bool [B]: whether sample sample_indices[b] (int64 [B]) is mirrored in epoch `epoch`. Each is
// a fair coin that depends only on (seed, epoch, sample index), never on the batch it is in.
torch::Tensor horizontal_flip_mask(uint64_t seed, int64_t epoch,
                                   const torch::Tensor& sample_indices);

// images [B, C, H, W] with the samples chosen by horizontal_flip_mask mirrored along W (a new
// tensor; the input is unchanged). Throws InputError unless images is [B, C, H, W] with B =
// sample_indices.size(0).
torch::Tensor random_horizontal_flip(const torch::Tensor& images, uint64_t seed, int64_t epoch,
                                     const torch::Tensor& sample_indices);

}  // namespace guidiff
