// FlopCounter against FLOP counts worked out by hand from the operand shapes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <stdexcept>

#include "guidiff/core/flop_counter.hpp"

namespace guidiff {
namespace {

TEST(FlopCounterTest, Convolution3x3CountsTwoFlopsPerMultiplyAdd) {
  c10::InferenceMode inference;
  const auto x = torch::randn({2, 3, 8, 8});
  const auto weight = torch::randn({16, 3, 3, 3});
  FlopCounter counter;
  torch::conv2d(x, weight, {}, 1, 1);
  // 2 * N * C_out * H_out * W_out * C_in * 3 * 3
  EXPECT_EQ(counter.flops(), 2 * 2 * 16 * 8 * 8 * 3 * 9);
}

TEST(FlopCounterTest, StridedAndGroupedConvolutionUseTheirOutputSize) {
  c10::InferenceMode inference;
  FlopCounter counter;
  torch::conv2d(torch::randn({1, 4, 9, 9}), torch::randn({6, 2, 3, 3}), {}, /*stride=*/2, /*padding=*/1,
                /*dilation=*/1, /*groups=*/2);
  // 9x9, k3, s2, p1 -> 5x5; each output sees C_in / groups = 2 channels.
  EXPECT_EQ(counter.flops(), 2 * 1 * 6 * 5 * 5 * 2 * 9);
}

TEST(FlopCounterTest, LinearAndBatchedMatrixProducts) {
  c10::InferenceMode inference;
  FlopCounter counter;
  torch::nn::functional::linear(torch::randn({5, 7}), torch::randn({11, 7}), torch::randn({11}));  // addmm
  EXPECT_EQ(counter.flops(), 2 * 5 * 7 * 11);
  torch::bmm(torch::randn({4, 3, 5}), torch::randn({4, 5, 6}));
  EXPECT_EQ(counter.flops(), 2 * 5 * 7 * 11 + 2 * 4 * 3 * 5 * 6);
  torch::mm(torch::randn({2, 3}), torch::randn({3, 4}));
  EXPECT_EQ(counter.flops(), 2 * 5 * 7 * 11 + 2 * 4 * 3 * 5 * 6 + 2 * 2 * 3 * 4);
  torch::relu(torch::randn({100}));  // element-wise work is not counted
  EXPECT_EQ(counter.flops(), 2 * 5 * 7 * 11 + 2 * 4 * 3 * 5 * 6 + 2 * 2 * 3 * 4);
}

TEST(FlopCounterTest, ConvolutionBackwardCountsEachGradientItComputes) {
  const int64_t forward = 2 * 2 * 8 * 6 * 6 * 4 * 9;
  auto x = torch::randn({2, 4, 6, 6}).requires_grad_(true);
  auto weight = torch::randn({8, 4, 3, 3}).requires_grad_(true);
  {
    FlopCounter counter;  // both gradients: forward + two forwards' worth
    torch::conv2d(x, weight, {}, 1, 1).sum().backward();
    EXPECT_EQ(counter.flops(), 3 * forward);
  }
  {
    FlopCounter counter;  // the input gradient only (as classifier guidance asks for)
    const auto out = torch::conv2d(x, weight, {}, 1, 1).sum();
    torch::autograd::grad({out}, {x});
    EXPECT_EQ(counter.flops(), 2 * forward);
  }
}

TEST(FlopCounterTest, CountsOnlyWhileAliveAndOneAtATime) {
  c10::InferenceMode inference;
  const auto a = torch::randn({3, 3});
  int64_t counted = 0;
  {
    FlopCounter counter;
    EXPECT_THROW(FlopCounter second, std::logic_error);
    torch::mm(a, a);
    counted = counter.flops();
  }
  torch::mm(a, a);  // after the counter is gone: no callback left behind
  FlopCounter counter;
  EXPECT_EQ(counted, 2 * 27);
  EXPECT_EQ(counter.flops(), 0);
}

}  // namespace
}  // namespace guidiff
