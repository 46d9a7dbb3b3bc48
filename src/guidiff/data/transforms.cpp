#include "guidiff/data/transforms.hpp"

#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/random_order.hpp"

namespace guidiff {

torch::Tensor pixels_to_unit_range(const torch::Tensor& pixels) {
  if (!pixels.defined() || (pixels.scalar_type() != torch::kUInt8 && !pixels.is_floating_point())) {
    throw InputError("pixels must be uint8 or floating point in [0, 255]");
  }
  return pixels.to(torch::kFloat32) / 127.5f - 1.0f;
}

torch::Tensor horizontal_flip_mask(uint64_t seed, int64_t epoch,
                                   const torch::Tensor& sample_indices) {
  if (!sample_indices.defined() || sample_indices.dim() != 1 ||
      sample_indices.scalar_type() != torch::kInt64) {
    throw InputError("horizontal flip: sample indices must be int64 [B]");
  }
  const torch::Tensor indices = sample_indices.to(torch::kCPU).contiguous();
  const int64_t* index = indices.data_ptr<int64_t>();
  torch::Tensor mask = torch::empty({indices.size(0)}, torch::kBool);
  bool* flip = mask.data_ptr<bool>();
  for (int64_t b = 0; b < indices.size(0); ++b) {
    // The top bit is the coin: splitmix64's high bits are its best mixed.
    flip[b] = (data_random_bits(seed, kFlipDomain, static_cast<uint64_t>(epoch),
                                static_cast<uint64_t>(index[b])) >>
               63) != 0;
  }
  return mask;
}

torch::Tensor random_horizontal_flip(const torch::Tensor& images, uint64_t seed, int64_t epoch,
                                     const torch::Tensor& sample_indices) {
  if (!images.defined() || images.dim() != 4) {
    throw InputError("horizontal flip needs images [B, C, H, W]");
  }
  const torch::Tensor mask = horizontal_flip_mask(seed, epoch, sample_indices);
  if (mask.size(0) != images.size(0)) {
    std::ostringstream message;
    message << "horizontal flip: " << images.size(0) << " images but " << mask.size(0)
            << " sample indices";
    throw InputError(message.str());
  }
  return torch::where(mask.to(images.device()).view({-1, 1, 1, 1}), images.flip({3}), images);
}

}  // namespace guidiff
