// What this CPU can do, and what libtorch and oneDNN chose to do with it: the facts that
// decide which kernels (and so which rounding) a computation gets. `guidiff info` prints
// them and the benchmarks record them beside every figure.
#pragma once
#include <string>

namespace guidiff {

// Vector extensions reported by CPUID (and enabled by the OS: the AVX/AVX-512/AMX state
// components must be set in XCR0, or the instructions fault).
struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512dq = false;
  bool avx512_bf16 = false;  // VDPBF16PS: bf16 dot products with float32 accumulation
  bool amx_bf16 = false;     // AMX tiles with bf16 (Sapphire Rapids and later)

  // A CPU with bf16 arithmetic in hardware. Without it, bf16 is emulated by converting to
  // float32 around each operation, which costs more than computing in float32.
  bool native_bf16() const { return avx512_bf16 || amx_bf16; }
  // "avx2 fma avx512f ... " in the order of the fields, "none" when nothing is present.
  std::string summary() const;
};

// Read once (CPUID and XGETBV); all false on a non-x86 CPU.
const CpuFeatures& cpu_features();

// The kernel level libtorch's CPU dispatch runs at, as libtorch reports it ("AVX2",
// "AVX512", "NO AVX", ...). ATEN_CPU_CAPABILITY=default|avx2|avx512 lowers it.
std::string aten_cpu_capability();

// The instruction set oneDNN (libtorch's convolution library) uses, e.g. "avx2" or
// "avx512_core_bf16"; ONEDNN_MAX_CPU_ISA caps it. "unknown" where oneDNN is linked into
// libtorch without exported symbols (pip's wheels).
std::string onednn_cpu_isa();

}  // namespace guidiff
