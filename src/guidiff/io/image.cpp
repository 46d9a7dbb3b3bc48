#include "guidiff/io/image.hpp"

// The one translation unit that compiles stb_image_write's implementation.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff {
namespace {

void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

}  // namespace

torch::Tensor image_grid_pixels(const torch::Tensor& images, const ImageGridOptions& options) {
  if (!images.defined() || images.dim() != 4 || !images.is_floating_point()) {
    throw InputError("images must be a float tensor [N, C, H, W]");
  }
  const int64_t n = images.size(0), channels = images.size(1), height = images.size(2),
                width = images.size(3);
  if (channels != 1 && channels != 3) {
    throw InputError("images must have 1 or 3 channels to be written as PNG, got " + std::to_string(channels));
  }
  if (n < 1 || height < 1 || width < 1) throw InputError("cannot write an empty image grid");
  if (options.nrow < 1 || options.padding < 0) throw InputError("image grid: nrow must be >= 1 and padding >= 0");
  if (!torch::isfinite(images).all().item<bool>()) throw NumericError("images contain NaN or infinity");

  const int64_t cols = std::min(options.nrow, n);
  const int64_t rows = (n + cols - 1) / cols;
  const int64_t pad = options.padding;
  const torch::Tensor pixels = images_to_uint8_nhwc(images.detach());  // [N, H, W, C]
  torch::Tensor grid = torch::full({rows * (height + pad) + pad, cols * (width + pad) + pad, channels},
                                   static_cast<int64_t>(options.pad_value), torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t top = pad + (i / cols) * (height + pad);
    const int64_t left = pad + (i % cols) * (width + pad);
    grid.narrow(0, top, height).narrow(1, left, width).copy_(pixels[i]);
  }
  return grid;
}

void write_png_grid(const std::string& path, const torch::Tensor& images, const ImageGridOptions& options) {
  const torch::Tensor grid = image_grid_pixels(images, options).contiguous();
  const int height = static_cast<int>(grid.size(0)), width = static_cast<int>(grid.size(1)),
            channels = static_cast<int>(grid.size(2));
  std::string png;
  if (stbi_write_png_to_func(append_to_string, &png, width, height, channels, grid.data_ptr<uint8_t>(),
                             width * channels) == 0) {
    throw FileError("cannot encode PNG '" + path + "'");
  }
  write_file_atomically(path, png);
}

torch::Tensor images_to_uint8_nhwc(const torch::Tensor& images_nchw) {
  if (!images_nchw.defined() || !images_nchw.is_floating_point() || images_nchw.dim() != 4) {
    throw InputError("images must be a floating [N, C, H, W] tensor, got " +
                     (images_nchw.defined() ? c10::str(images_nchw.scalar_type(), " ", images_nchw.sizes()) : std::string("an undefined tensor")));
  }
  torch::Tensor x = images_nchw.detach().to(torch::kCPU);
  // float64 keeps its precision; half types are widened so the arithmetic is exact enough.
  if (x.scalar_type() != torch::kFloat64) x = x.to(torch::kFloat32);
  if (!torch::isfinite(x).all().item<bool>()) throw NumericError("images contain NaN or infinity");
  // torch::round rounds half to even, as numpy's np.round does.
  return ((x + 1) * 127.5).round().clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
}

torch::Tensor uint8_nhwc_to_images(const torch::Tensor& pixels_nhwc) {
  if (!pixels_nhwc.defined() || pixels_nhwc.scalar_type() != torch::kUInt8 || pixels_nhwc.dim() != 4) {
    throw InputError("pixels must be a uint8 [N, H, W, C] tensor, got " +
                     (pixels_nhwc.defined() ? c10::str(pixels_nhwc.scalar_type(), " ", pixels_nhwc.sizes()) : std::string("an undefined tensor")));
  }
  return (pixels_nhwc.detach().to(torch::kCPU).permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1).contiguous();
}

void write_png_images(const std::string& dir, const torch::Tensor& images, int64_t first_index) {
  ImageGridOptions single;
  single.nrow = 1;
  single.padding = 0;
  for (int64_t i = 0; i < images.size(0); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "/%06lld.png", static_cast<long long>(i + first_index));
    write_png_grid(dir + name, images.slice(0, i, i + 1), single);
  }
}

}  // namespace guidiff
