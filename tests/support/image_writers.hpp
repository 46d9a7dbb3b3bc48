// PNG and JPEG files for the image-folder tests, written by stb_image_write so that the reader
// is checked against another library's encoder rather than guidiff's own.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace guidiff::testing {

// Pixels row-major, `channels` interleaved bytes per pixel; false when stb cannot write.
bool write_png_with_stb(const std::string& path, int width, int height, int channels,
                        const std::vector<uint8_t>& pixels);
bool write_jpeg_with_stb(const std::string& path, int width, int height, int channels,
                         const std::vector<uint8_t>& pixels, int quality);

}  // namespace guidiff::testing
