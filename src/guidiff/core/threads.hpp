// Thread count and BLAS checks done once at start-up.
#pragma once
#include <string>

namespace guidiff {

// The most intra-op threads guidiff sets (--threads, GUIDIFF_THREADS). OpenMP pools of many
// thousands stall a machine for minutes; a typo should not.
constexpr int kMaxThreads = 1024;

// Sets libtorch's intra-op thread count. requested > 0 wins; otherwise the GUIDIFF_THREADS
// environment variable; otherwise the number of cores (Debian's libtorch starts with 1).
// Returns the count in effect. Throws InputError for a malformed GUIDIFF_THREADS.
int configure_threads(int requested);

// Which BLAS library the process really has mapped (read from /proc/self/maps), e.g.
// "openblas (openmp) /usr/lib/.../libblas.so.3" or "reference /usr/lib/.../blas/libblas.so.3".
struct BlasInfo {
  std::string name;   // "openblas", "reference", "mkl" or "unknown"
  std::string path;   // the shared object's resolved path, empty if none is mapped
                      // ("(linked into libtorch)" for pip's libtorch, which carries MKL inside)
  bool is_reference() const { return name == "reference"; }
};
BlasInfo loaded_blas();

}  // namespace guidiff
