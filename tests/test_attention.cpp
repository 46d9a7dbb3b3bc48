// Blocked softmax attention (src/guidiff/models/attention.hpp) against the formula computed in
// one piece: values and gradients, in float64 to rounding and in float32 as accurately as the
// one-piece form, and the blocks' independence of the batch.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "guidiff/core/autocast.hpp"
#include "guidiff/models/attention.hpp"
#include "support/attention_settings.hpp"

namespace guidiff {
namespace {

using testing::AttentionBlockBytes;

// The formula in one piece, written out again as the test's own statement of it:
// out[h, :, t] = sum_s v[h, :, s] softmax_s(q[h, :, t] . k[h, :, s] / sqrt(c)).
torch::Tensor one_piece(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const auto scores = torch::einsum("hct,hcs->hts", {q, k}) / std::sqrt(double(q.size(1)));
  return torch::einsum("hcs,hts->hct", {v, torch::softmax(scores, -1)});
}

struct Inputs {
  torch::Tensor q, k, v;
};

// heads, query channels, value channels, queries T, keys S.
Inputs random_inputs(int64_t heads, int64_t channels, int64_t value_channels, int64_t queries,
                     int64_t keys, torch::Dtype dtype) {
  torch::manual_seed(7);
  const auto options = torch::dtype(dtype);
  // Scores of a few units, as trained attention has: the softmax is neither flat nor one-hot.
  return {2 * torch::randn({heads, channels, queries}, options),
          torch::randn({heads, channels, keys}, options),
          torch::randn({heads, value_channels, keys}, options)};
}

// Block sizes that give 3 query rows per block for `keys` keys of `bytes`-byte scores: the
// 19 queries below end in a ragged block of 1.
int64_t three_rows(int64_t keys, int64_t bytes) { return 3 * keys * bytes; }

TEST(Attention, BlocksGiveTheOnePieceValuesInFloat64) {
  const auto in = random_inputs(3, 8, 5, 19, 23, torch::kFloat64);
  const AttentionBlockBytes blocks(three_rows(23, 8));
  const int64_t calls = blocked_attention_calls();
  const auto got = attention(in.q, in.k, in.v);
  EXPECT_EQ(blocked_attention_calls(), calls + 1);
  const auto want = one_piece(in.q, in.k, in.v);
  ASSERT_EQ(got.sizes(), want.sizes());
  // float64 rounding over sums of 8 and 23 terms: 1e-13 is a thousand times the bound.
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-13);
}

TEST(Attention, WholeHeadsThatFitTakeOneProduct) {
  const auto in = random_inputs(2, 8, 8, 16, 16, torch::kFloat32);
  const int64_t calls = blocked_attention_calls();
  attention(in.q, in.k, in.v);  // 16 x 16 float32 scores: far below the default 1 MiB
  EXPECT_EQ(blocked_attention_calls(), calls);
}

TEST(Attention, BlockedGradientsAreTheOnePieceGradientsInFloat64) {
  auto in = random_inputs(3, 8, 5, 19, 23, torch::kFloat64);
  for (auto* t : {&in.q, &in.k, &in.v}) t->requires_grad_(true);
  const auto weights = torch::randn({3, 5, 19}, torch::kFloat64);  // a loss that weights outputs
  const auto gradients = [&](bool blocked) {
    const AttentionBlockBytes blocks(blocked ? three_rows(23, 8) : int64_t{1} << 40);
    const auto out = blocked ? attention(in.q, in.k, in.v) : one_piece(in.q, in.k, in.v);
    return torch::autograd::grad({(out * weights).sum()}, {in.q, in.k, in.v});
  };
  const int64_t calls = blocked_attention_calls();
  const auto got = gradients(true);
  EXPECT_EQ(blocked_attention_calls(), calls + 1);
  const auto want = gradients(false);
  const char* names[] = {"q", "k", "v"};
  for (size_t i = 0; i < 3; ++i) {
    SCOPED_TRACE(names[i]);
    ASSERT_EQ(got[i].sizes(), want[i].sizes());
    EXPECT_LT((got[i] - want[i]).abs().max().item<double>(),
              1e-12 * std::max(1.0, want[i].abs().max().item<double>()));
  }
}

// float32: the blocked form rounds the same operations as the one-piece one, only in other
// groupings, so its error against the float64 truth may differ from the one-piece form's by a
// small factor, never by orders of magnitude. A block that dropped or repeated a query row
// would be off by the size of the output itself.
TEST(Attention, BlockedFloat32IsAsAccurateAsTheOnePieceForm) {
  const auto in = random_inputs(4, 16, 16, 70, 70, torch::kFloat32);
  const auto truth =
      one_piece(in.q.to(torch::kFloat64), in.k.to(torch::kFloat64), in.v.to(torch::kFloat64));
  const auto error = [&](bool blocked) {
    const AttentionBlockBytes blocks(blocked ? three_rows(70, 4) : int64_t{1} << 40);
    return (attention(in.q, in.k, in.v).to(torch::kFloat64) - truth).abs().max().item<double>();
  };
  const double plain = error(false), blocked = error(true);
  const double unit = std::ldexp(1.0, -24) * truth.abs().max().item<double>();
  EXPECT_LT(blocked, 4 * plain + 4 * unit) << "one-piece error " << plain;
}

TEST(Attention, AHeadsResultDoesNotDependOnTheOtherHeadsInTheBatch) {
  const auto in = random_inputs(5, 16, 16, 40, 40, torch::kFloat32);
  const AttentionBlockBytes blocks(three_rows(40, 4));
  const auto together = attention(in.q, in.k, in.v);
  for (int64_t head = 0; head < 5; ++head) {
    const auto alone =
        attention(in.q.narrow(0, head, 1), in.k.narrow(0, head, 1), in.v.narrow(0, head, 1));
    EXPECT_TRUE(torch::equal(alone[0], together[head])) << "head " << head;
  }
}

TEST(Attention, RecordedAndUnrecordedBlockedRunsAgreeExactly) {
  auto in = random_inputs(2, 8, 8, 33, 33, torch::kFloat32);
  const AttentionBlockBytes blocks(three_rows(33, 4));
  torch::Tensor unrecorded;
  {
    torch::NoGradGuard no_grad;
    unrecorded = attention(in.q, in.k, in.v);
  }
  in.q.requires_grad_(true);
  const auto recorded = attention(in.q, in.k, in.v);
  EXPECT_TRUE(recorded.requires_grad());
  EXPECT_TRUE(torch::equal(recorded.detach(), unrecorded));
}

TEST(Attention, SixteenBitInputsAreBlockedWithFloat32Softmax) {
  const auto in = random_inputs(2, 16, 16, 40, 40, torch::kFloat32);
  const auto bf16 = [](const torch::Tensor& t) { return t.to(torch::kBFloat16); };
  torch::NoGradGuard no_grad;
  const auto want = one_piece(bf16(in.q).to(torch::kFloat32), bf16(in.k).to(torch::kFloat32),
                              bf16(in.v).to(torch::kFloat32));
  const AttentionBlockBytes blocks(three_rows(40, 4));
  const int64_t calls = blocked_attention_calls();
  const auto got = attention(bf16(in.q), bf16(in.k), bf16(in.v));
  EXPECT_EQ(blocked_attention_calls(), calls + 1);
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  // bf16 keeps 8 significant bits: q, k and v, the products' results and the output each
  // round to 2^-9 relative. Scores of a few units then move the probabilities by about 1% and
  // outputs of up to ~2 by a few hundredths (measured: 0.035); 0.1 allows three times that, where
  // a block with the wrong rows or a softmax left in bf16 errs by whole units.
  EXPECT_LT((got.to(torch::kFloat32) - want).abs().max().item<float>(), 0.1f);
}

// bf16 autocast with gradients recorded, as the classifier's guidance gradient is in bf16
// sampling. The blocked form rounds as the one-piece form does: products in bf16 with float32
// accumulation, the softmax and its gradient in float32, and dk and dv each one product over all
// the queries. So against the float64 gradients at the bf16-rounded inputs its mean error
// matches the one-piece form's (measured: the same to 1e-8; stop 39's float32 sums over the
// blocks: to 1e-5). Measured on the same inputs, the softmax's gradient taken in bf16 instead erred 1.15x as
// much on q and k; a dropped or repeated query row errs by the gradients' own size.
TEST(Attention, BlockedBf16GradientsUnderAutocastAreAsAccurateAsTheOnePieceForm) {
  // 256 query and 64 value channels: every product, down to the ragged one-row block's, has
  // more than 16^3 multiplications, where libtorch 1.13 hands bf16 products to oneDNN. Smaller
  // ones take its fallback kernel, which rounds partial sums to bf16 (core/bf16_kernels.hpp):
  // with 16 channels the blocked outputs erred 2.7x as much as the one-piece form's that way.
  // The scale 256^(-1/4) = 1/4 is exact, so both forms round the same inputs.
  const auto in = random_inputs(3, 256, 64, 70, 70, torch::kFloat32);
  const auto weights = torch::randn({3, 64, 70});
  const auto wanted = [&] {
    std::vector<torch::Tensor> rounded;
    for (const auto* t : {&in.q, &in.k, &in.v})
      rounded.push_back(t->to(torch::kBFloat16).to(torch::kFloat64).requires_grad_(true));
    const auto out = one_piece(rounded[0], rounded[1], rounded[2]);
    return torch::autograd::grad({(out * weights.to(torch::kFloat64)).sum()}, rounded);
  }();
  const auto errors = [&](bool blocked) {
    const AttentionBlockBytes blocks(blocked ? three_rows(70, 4) : int64_t{1} << 40);
    std::vector<torch::Tensor> inputs;
    for (const auto* t : {&in.q, &in.k, &in.v}) inputs.push_back(t->clone().requires_grad_(true));
    const int64_t calls = blocked_attention_calls();
    torch::Tensor out;
    {
      const AutocastScope autocast(true, torch::kCPU);
      out = attention(inputs[0], inputs[1], inputs[2]);
    }
    EXPECT_EQ(blocked_attention_calls(), calls + (blocked ? 1 : 0));
    EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
    const auto got = torch::autograd::grad({(out.to(torch::kFloat32) * weights).sum()}, inputs);
    std::vector<double> error;
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(got[i].scalar_type(), torch::kFloat32);
      error.push_back((got[i].to(torch::kFloat64) - wanted[i]).abs().mean().item<double>() /
                      wanted[i].abs().mean().item<double>());
    }
    return error;
  };
  const auto plain = errors(false), blocked = errors(true);
  const char* names[] = {"q", "k", "v"};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_LT(blocked[i], 1.05 * plain[i])
        << names[i] << ": one-piece form's mean error " << plain[i];
  }
}

}  // namespace
}  // namespace guidiff
