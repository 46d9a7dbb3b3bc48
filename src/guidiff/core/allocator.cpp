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
  // 32 MiB is glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX).
  constexpr int kMmapThreshold = 32 * 1024 * 1024;
  constexpr int kTrimThreshold = 1024 * 1024 * 1024;
  const bool ok = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  return ok ? "glibc malloc: mmap threshold 32 MiB, trim threshold 1 GiB" : "glibc malloc: mallopt refused, defaults kept";
#else
  return "not glibc: allocator left as it is";
#endif
}

}  // namespace guidiff
