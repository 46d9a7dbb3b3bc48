// Start-up tuning of the C heap that libtorch's CPU tensors live on.
#pragma once
#include <string>

namespace guidiff {

// glibc serves allocations above a dynamic threshold (at most 32 MiB) with fresh mmap()s and
// returns them with munmap() when freed, so every sampling step's activations (MiBs each)
// come back as new zero pages: on the default UNet half the CPU time went to page faults.
// This turns mmap()ed chunks off (M_MMAP_MAX = 0) and raises the trim threshold to 1 GiB, so
// freed blocks of every size stay in the heap and the next step reuses them. Measured on 2
// cores (docs/performance.md): DDIM 50 steps x 64 samples 13.6 s -> 6.6 s unguided with a
// 32 MiB mmap threshold; turning mmap off as well keeps one UNet forward at ~215 GFLOP/s from
// batch 64 to 256 and at image size 64 (25 GFLOP/s there with the threshold alone). The price:
// up to 1 GiB of freed memory stays with the process. Skipped when the user set
// GLIBC_TUNABLES with malloc settings of their own, or on other C libraries. Returns a
// one-line description of what was done.
std::string configure_allocator();

}  // namespace guidiff
