#include "guidiff/io/checksum.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <vector>

#include "guidiff/core/errors.hpp"

namespace guidiff {

namespace {

// Continues a CRC-32 over more bytes. zlib's crc32 takes a 32-bit length; feed larger buffers
// in pieces.
uLong extend_crc32(uLong crc, std::string_view bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t piece = std::min<size_t>(bytes.size() - done, size_t{1} << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), static_cast<uInt>(piece));
    done += piece;
  }
  return crc;
}

}  // namespace

uint32_t crc32_of(std::string_view bytes) {
  return static_cast<uint32_t>(extend_crc32(crc32(0L, Z_NULL, 0), bytes));
}

std::string file_checksum(const std::string& path) {
  // Streamed in 1 MiB pieces: a sweep checksums its networks at every start, and a full-size
  // guided-diffusion checkpoint is gigabytes that need not be held at once.
  std::ifstream in(path, std::ios::binary);
  if (!in) throw FileError("cannot open '" + path + "' to checksum it");
  std::vector<char> buffer(size_t{1} << 20);
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t total = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const size_t got = static_cast<size_t>(in.gcount());
    crc = extend_crc32(crc, std::string_view(buffer.data(), got));
    total += got;
  }
  if (in.bad()) throw FileError("cannot read '" + path + "' to checksum it");
  char text[64];
  std::snprintf(text, sizeof text, "crc32 %08x, %zu bytes", static_cast<uint32_t>(crc), total);
  return text;
}

}  // namespace guidiff
