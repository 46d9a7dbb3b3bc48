// Shared by the hand-written CPU kernels (winograd_kernels.cpp, norm_kernels.cpp): eight
// float32 lanes as a GCC/clang vector type, the CPU clones their hot functions are compiled
// for, and the OpenMP loop that spreads their work over libtorch's threads. Include it only
// from those files: they are compiled with OpenMP and without the precompiled header
// (CMakeLists.txt), and include no torch headers beyond the thread count.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace guidiff::cpu_lanes {

constexpr int64_t kLanes = 8;

// Eight values at a time. GCC and clang lower this to the vector registers of the target
// each function is compiled for (two SSE registers on baseline x86-64, one AVX register in the
// clones below), so no intrinsics are needed.
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));

// Always inlined, so no 32-byte vector crosses a real call; GCC's note that such a call's ABI
// depends on AVX is moot here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
__attribute__((always_inline)) inline Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void store(float* p, const Lanes& v) {
  std::memcpy(p, &v, sizeof v);
}

// The hot functions are compiled for AVX-512, AVX2 and baseline x86-64, and the loader
// picks the widest the CPU has (GCC's function multi-versioning): they do a few operations
// per value loaded, and at baseline SSE width they, not memory, would limit the kernels.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GUIDIFF_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GUIDIFF_VECTOR_CLONES
#endif

// Runs body(scratch, row) for row in [0, count), split over libtorch's intra-op thread count,
// each thread with its own scratch buffer of `scratch_floats`. An OpenMP loop
// of our own rather than at::parallel_for: that template only runs in parallel where the
// including file is compiled with OpenMP, and it takes the thread count from whichever OpenMP
// runtime the symbol resolves to (pip's libtorch bundles its own), where num_threads here is
// libtorch's. Each row writes its own outputs, so the result does not depend on the split.
template <typename Body>
void for_each_row(int64_t count, int64_t scratch_floats, const Body& body) {
  const int threads =
      at::in_parallel_region()
          ? 1
          : static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count)));
  std::vector<std::vector<float>> scratch(threads, std::vector<float>(scratch_floats));
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
  for (int64_t row = 0; row < count; ++row) {
#ifdef _OPENMP
    body(scratch[omp_get_thread_num()], row);
#else
    body(scratch[0], row);
#endif
  }
}

}  // namespace guidiff::cpu_lanes
