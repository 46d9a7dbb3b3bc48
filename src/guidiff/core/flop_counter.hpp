// Counting the floating-point work of a network, for the benchmarks' GFLOP/s figures.
#pragma once
#include <cstdint>

namespace guidiff {

// While alive, counts the FLOPs of every convolution, convolution backward and matrix product
// (mm, addmm, bmm, baddbmm) that libtorch's dispatcher runs, from the operands' shapes: a
// multiply-add counts 2, so a 3x3 convolution is 2 * N * C_out * H_out * W_out * C_in/groups * 9.
// Element-wise work (norms, activations, additions) is not counted, as is usual for GFLOP/s.
// A convolution backward counts one forward's worth per gradient it computes (input and/or
// weight), so the figure also shows whether weight gradients were computed at all. It hooks
// libtorch's RecordFunction callbacks, which slow small ops down: count in a separate run
// from the one that is timed. One counter at a time (a second throws std::logic_error).
class FlopCounter {
 public:
  FlopCounter();
  ~FlopCounter();
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;

  int64_t flops() const;

 private:
  uint64_t handle_;
  int64_t start_;
};

}  // namespace guidiff
