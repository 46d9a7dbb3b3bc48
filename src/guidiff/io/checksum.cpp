#include "guidiff/io/checksum.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>

#include "guidiff/io/atomic_file.hpp"

namespace guidiff {

uint32_t crc32_of(std::string_view bytes) {
  // zlib's crc32 takes a 32-bit length; feed larger buffers in pieces.
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t piece = std::min<size_t>(bytes.size() - done, size_t{1} << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), static_cast<uInt>(piece));
    done += piece;
  }
  return static_cast<uint32_t>(crc);
}

std::string file_checksum(const std::string& path) {
  const std::string bytes = read_file_bytes(path);
  char text[64];
  std::snprintf(text, sizeof text, "crc32 %08x, %zu bytes", crc32_of(bytes), bytes.size());
  return text;
}

}  // namespace guidiff
