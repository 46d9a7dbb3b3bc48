// bfloat16 kernels that keep float32 accumulation on every CPU.
//
// bf16 keeps 8 significant bits, so a product of bf16 operands is exact in float32, and a
// sum of K such products loses about K * 2^-24 of its magnitude when accumulated in float32
// but up to K * 2^-9 when every partial sum is rounded back to bf16. oneDNN accumulates in
// float32 wherever it runs bf16 (AVX-512 and AMX CPUs). On CPUs without AVX-512, libtorch
// 1.13 runs bf16 convolutions and matrix products through its own fallback kernels, and
// those round each partial sum to bf16: measured on an AVX2 EPYC, a 4096-term bf16 matmul
// was 15% off and a 576-term convolution 6.5% off, against 0.2% with float32 accumulation.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>

namespace guidiff {

// Measured once per process: does libtorch's CPU kernel for this family of operations,
// given bf16 operands, accumulate in float32? Found by a positive-valued K = 4608 (conv) or
// K = 4096 (matmul) reduction whose bf16-accumulated sum is far from its float32 sum.
// A kernel that throws (see bf16_kernels.cpp) counts as not accumulating in float32 and is
// also marked as failing.
struct Bf16KernelReport {
  bool convolution_accumulates_in_float32 = true;
  bool matrix_product_accumulates_in_float32 = true;
  bool convolution_fails = false;
  bool matrix_product_fails = false;
  bool all_float32() const { return convolution_accumulates_in_float32 && matrix_product_accumulates_in_float32; }
};
const Bf16KernelReport& cpu_bf16_kernel_report();

// Makes CPU autocast keep float32 accumulation for the families that lack it: their bf16
// operands are widened to float32, the operation runs in float32, and the result is
// rounded to bf16, which is what a native bf16 kernel computes. Installed once, for the
// rest of the process, as libtorch AutocastCPU kernels in place of libtorch's own for those
// of conv1d/2d/3d, conv_transpose1d/2d/3d, mm, addmm, addbmm, bmm, baddbmm, linear and matmul
// that its autocast lowers to bf16; it changes nothing where the report is all float32.
// AutocastScope calls it; idempotent.
void ensure_float32_accumulation_under_cpu_autocast();

// GUIDIFF_BF16_ACCUMULATION=libtorch leaves libtorch's kernels as they are (for measuring
// what the replacement changes); anything else, or unset, lets guidiff replace them.
bool keep_libtorch_bf16_kernels();

// Why bf16 on `device` will likely be slower than float32, or nothing when the CPU has bf16
// in hardware (AVX512_BF16 or AMX) or the device is not the CPU.
std::optional<std::string> bf16_slowdown_reason(const torch::Device& device);

}  // namespace guidiff
