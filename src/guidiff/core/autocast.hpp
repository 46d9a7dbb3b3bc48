// bfloat16 autocast as a scope, for training's forward pass and the bf16 benchmarks.
#pragma once
#include <torch/torch.h>

namespace guidiff {

// While alive (and enabled), matmuls and convolutions on `device`'s type (CPU or CUDA) run
// in bfloat16 under autocast, always with float32 accumulation (on CPUs where libtorch's own
// bf16 kernels would accumulate in bf16, see core/bf16_kernels.hpp). Leaving the scope clears autocast's cache of lower-precision
// weight copies, which the next optimiser step would make stale.
class AutocastScope {
 public:
  AutocastScope(bool enabled, const torch::Device& device);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool enabled_;
  bool cuda_;
};

// The type CPU autocast lowers float32 operands to on this thread, or nullopt while it is off.
c10::optional<c10::ScalarType> cpu_autocast_type();

}  // namespace guidiff
