#include "guidiff/core/bf16_kernels.hpp"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <torch/version.h>

#include <cmath>
#include <cstdlib>
#include <memory>
#include <mutex>

#include "guidiff/core/cpu_features.hpp"

namespace guidiff {
namespace {

// Positive operands on a fixed pattern (no random generator is touched), so no sum cancels
// and the relative error of the result measures the accumulation alone.
torch::Tensor positive_pattern(torch::IntArrayRef shape) {
  const auto count = c10::multiply_integers(shape);
  const auto index = torch::arange(count, torch::kFloat64);
  return (torch::fmod(index * 0.6180339887, 1.0) + 0.25).to(torch::kFloat32).reshape(shape);
}

// Relative error of the bf16 kernel against float32 accumulation of the same bf16 operands.
// With float32 accumulation it is at most one bf16 rounding of the result (2^-8 relative,
// at most 2^-7 if the two sums straddle a rounding boundary) plus K * 2^-24 (< 2^-11 for
// K <= 4608); a kernel that rounds its partial sums to bf16 misses by several percent.
bool accumulates_in_float32(const torch::Tensor& bf16_result, const torch::Tensor& float32_reference) {
  const double error = ((bf16_result.to(torch::kFloat32) - float32_reference).abs() / float32_reference.abs())
                           .max()
                           .item<double>();
  return error <= std::ldexp(1.0, -7) + std::ldexp(1.0, -11);
}

// As accumulates_in_float32, for a bf16 kernel that may not run at all: libtorch 1.13 sends
// bf16 convolutions to oneDNN when the CPU has AVX-512, and oneDNN held below that by
// ONEDNN_MAX_CPU_ISA refuses them ("could not create a primitive descriptor iterator"). Such a
// kernel counts as lacking float32 accumulation, so autocast gets guidiff's widened kernels,
// which run in float32 at any level.
template <typename Bf16Call, typename Float32Call>
bool usable_and_accumulates_in_float32(Bf16Call&& bf16_call, Float32Call&& float32_call, bool& fails) {
  try {
    return accumulates_in_float32(bf16_call(), float32_call());
  } catch (const std::exception&) {  // oneDNN's dnnl::error, not a c10::Error
    fails = true;
    return false;
  }
}

Bf16KernelReport measure_bf16_kernels() {
  c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::DispatchKeySet(c10::DispatchKey::AutocastCPU)};
  torch::NoGradGuard no_grad;
  Bf16KernelReport report;
  const auto a = positive_pattern({2, 4, 4096}).to(torch::kBFloat16);
  const auto b = positive_pattern({2, 4096, 4}).flip(0).to(torch::kBFloat16);
  const bool mm_ok = usable_and_accumulates_in_float32(
      [&] { return torch::mm(a[0], b[0]); }, [&] { return torch::mm(a[0].to(torch::kFloat32), b[0].to(torch::kFloat32)); },
      report.matrix_product_fails);
  const bool bmm_ok = usable_and_accumulates_in_float32(
      [&] { return torch::bmm(a, b); }, [&] { return torch::bmm(a.to(torch::kFloat32), b.to(torch::kFloat32)); },
      report.matrix_product_fails);
  report.matrix_product_accumulates_in_float32 = mm_ok && bmm_ok;
  const auto input = positive_pattern({1, 512, 5, 5}).to(torch::kBFloat16);
  const auto weight = positive_pattern({2, 512, 3, 3}).flip(1).to(torch::kBFloat16);
  report.convolution_accumulates_in_float32 = usable_and_accumulates_in_float32(
      [&] { return torch::conv2d(input, weight); },
      [&] { return torch::conv2d(input.to(torch::kFloat32), weight.to(torch::kFloat32)); },
      report.convolution_fails);
  return report;
}

// Autocast's lower-precision rule with float32 accumulation: each floating CPU operand
// (float64 excepted, as autocast leaves it) is rounded to bf16 and widened back, the
// operation runs below autocast in float32, and float32 results are rounded to bf16.
// Boxed, so one function serves every signature.
void bf16_operands_float32_accumulation(const c10::OperatorHandle& op, c10::DispatchKeySet,
                                        torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  for (auto it = stack->end() - static_cast<std::ptrdiff_t>(schema.arguments().size()); it != stack->end(); ++it) {
    if (!it->isTensor()) continue;
    const auto tensor = it->toTensor();
    if (!tensor.defined() || !tensor.is_cpu() || !tensor.is_floating_point() ||
        tensor.scalar_type() == torch::kFloat64) {
      continue;
    }
    *it = tensor.to(torch::kBFloat16).to(torch::kFloat32);
  }
  {
    c10::impl::ExcludeDispatchKeyGuard no_autocast{c10::DispatchKeySet(c10::DispatchKey::AutocastCPU)};
    op.callBoxed(stack);
  }
  for (auto it = stack->end() - static_cast<std::ptrdiff_t>(schema.returns().size()); it != stack->end(); ++it) {
    if (it->isTensor() && it->toTensor().scalar_type() == torch::kFloat32) {
      *it = it->toTensor().to(torch::kBFloat16);
    }
  }
}

// Replacing libtorch's own AutocastCPU kernel makes the dispatcher warn once per operator;
// the replacement is deliberate, so the warnings are dropped while installing.
class DropWarnings : public c10::WarningHandler {
 public:
#if TORCH_VERSION_MAJOR >= 2
  void process(const c10::Warning&) override {}
#else
  void process(const c10::SourceLocation&, const std::string&, const bool) override {}
#endif
};

// libtorch 2.0 made Warning a class and moved the guard to WarningUtils.
#if TORCH_VERSION_MAJOR >= 2
using WarningHandlerGuard = c10::WarningUtils::WarningHandlerGuard;
#else
using WarningHandlerGuard = c10::Warning::WarningHandlerGuard;
#endif

}  // namespace

bool keep_libtorch_bf16_kernels() {
  const char* setting = std::getenv("GUIDIFF_BF16_ACCUMULATION");
  return setting != nullptr && std::string(setting) == "libtorch";
}

const Bf16KernelReport& cpu_bf16_kernel_report() {
  static const Bf16KernelReport report = measure_bf16_kernels();
  return report;
}

void ensure_float32_accumulation_under_cpu_autocast() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    const auto& report = cpu_bf16_kernel_report();
    if (report.all_float32() || keep_libtorch_bf16_kernels()) return;
    // Lives for the process: destroying a Library removes its kernels again.
    static auto* overrides =
        new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::AutocastCPU, __FILE__, __LINE__);
    DropWarnings drop;
    WarningHandlerGuard quiet(&drop);
    // Only operations that libtorch's CPU autocast already lowers to bf16 are replaced (the
    // list varies between libtorch versions), so autocast's choice of what runs in bf16 stays
    // libtorch's; only the accumulation changes.
    const auto replace = [](const char* name, const char* overload) {
      const auto op = c10::Dispatcher::singleton().findSchema({std::string("aten::") + name, overload});
      if (!op || !op->hasKernelForDispatchKey(c10::DispatchKey::AutocastCPU)) return;
      const std::string qualified = *overload ? std::string(name) + "." + overload : std::string(name);
      overrides->impl(qualified.c_str(),
                      torch::CppFunction::makeFromBoxedFunction<&bf16_operands_float32_accumulation>());
    };
    if (!report.convolution_accumulates_in_float32) {
      for (const char* name : {"conv1d", "conv2d", "conv3d"}) replace(name, "");
      for (const char* name : {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}) replace(name, "input");
    }
    if (!report.matrix_product_accumulates_in_float32) {
      for (const char* name : {"mm", "addmm", "addbmm", "bmm", "baddbmm", "linear", "matmul"}) replace(name, "");
    }
  });
}

std::optional<std::string> bf16_slowdown_reason(const torch::Device& device) {
  if (!device.is_cpu() || cpu_features().native_bf16()) return std::nullopt;
  std::string reason =
      "this CPU has no bf16 arithmetic (no avx512_bf16 or amx_bf16): bf16 is emulated by converting to float32 "
      "around each operation, which is likely slower than plain float32";
  if (!cpu_bf16_kernel_report().all_float32()) {
    reason += keep_libtorch_bf16_kernels()
                  ? ", and GUIDIFF_BF16_ACCUMULATION=libtorch keeps libtorch's kernels, which accumulate in bf16 here"
                  : ", and guidiff widens convolutions and matrix products to float32 because libtorch's kernels here "
                    "would accumulate in bf16";
  }
  return reason;
}

}  // namespace guidiff
