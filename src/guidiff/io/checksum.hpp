// Checksums of bytes and files: the CRC-32 that zip archives (.npz) store, and a file's
// checksum for telling whether a network's weights are still the ones a result was made with.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace guidiff {

// CRC-32 (ISO-HDLC, as zip and gzip use it) of `bytes`, through zlib.
uint32_t crc32_of(std::string_view bytes);

// "crc32 <8 hex digits>, <size> bytes" of the file's contents. Unlike a modification time it
// survives a copy or a fresh clone and changes when the contents do. Reads the file in pieces
// (memory stays bounded). Throws FileError naming the path if it cannot be read.
std::string file_checksum(const std::string& path);

}  // namespace guidiff
