// How far deflate (zip members, gzip files) can expand its input.
#pragma once
#include <cstdint>

namespace guidiff {

// Deflate expands at most about 1032:1 (a 258-byte match per 2 bits), so n compressed bytes
// hold at most n * 1032 bytes of data. A header that declares more is lying, and readers refuse
// it before allocating what it declares.
constexpr uint64_t kMaxDeflateRatio = 1032;

}  // namespace guidiff
