// stb_image_write in its own translation unit: its JPEG bit writer left-shifts a negative int
// (Debian 12's stb 1.16, stbiw__jpg_writeBits), undefined before C++20 and harmless on every
// two's-complement compiler. UBSan stops there, so tests/CMakeLists.txt builds this file, and
// only this file, without the shift check. The product only reads JPEGs.
#include "support/image_writers.hpp"

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

namespace guidiff::testing {

bool write_png_with_stb(const std::string& path, int width, int height, int channels,
                        const std::vector<uint8_t>& pixels) {
  return stbi_write_png(path.c_str(), width, height, channels, pixels.data(), width * channels) != 0;
}

bool write_jpeg_with_stb(const std::string& path, int width, int height, int channels,
                         const std::vector<uint8_t>& pixels, int quality) {
  return stbi_write_jpg(path.c_str(), width, height, channels, pixels.data(), quality) != 0;
}

}  // namespace guidiff::testing
