// C heap tuning at start-up (see allocator.hpp).
#include "guidiff/core/allocator.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace guidiff {

std::string configure_allocator() {
#if defined(__GLIBC__)
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables != nullptr && std::strstr(tunables, "glibc.malloc.") != nullptr) {
    return "glibc malloc: left as GLIBC_TUNABLES sets it";
  }
  // No mmap()ed chunks at all: glibc caps M_MMAP_THRESHOLD at 32 MiB, and a 64x64 UNet's
  // activations at batch 64 are larger than that, so only M_MMAP_MAX = 0 keeps every size in
  // the heap. Requests a thread's arena cannot hold fall back to the main arena (sbrk).
  constexpr int kTrimThreshold = 1024 * 1024 * 1024;
  const bool ok = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  return ok ? "glibc malloc: no mmap chunks, trim threshold 1 GiB" : "glibc malloc: mallopt refused, defaults kept";
#else
  return "not glibc: allocator left as it is";
#endif
}

}  // namespace guidiff
