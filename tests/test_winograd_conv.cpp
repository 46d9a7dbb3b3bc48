// Winograd F(4x4, 3x3) convolutions (src/guidiff/models/winograd_conv.hpp) against libtorch's
// convolution in float64, within a rounding bound computed from the algorithm's own arithmetic.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/winograd_conv.hpp"
#include "support/winograd_settings.hpp"

namespace guidiff {
namespace {

torch::Tensor float64(const torch::Tensor& t) { return t.to(torch::kFloat64); }

// The transforms of F(4x4, 3x3) (Lavin & Gray 2016), written out again here in float64 as the
// test's own statement of them.
torch::Tensor matrix(std::vector<double> values, int64_t rows, int64_t columns) {
  return torch::tensor(values, torch::kFloat64).view({rows, columns});
}
const torch::Tensor& input_transform() {  // B^T
  static const auto m = matrix({4, 0,  -5, 0, 1, 0, 0, -4, -4, 1,  1, 0, 0, 4, -4, -1, 1, 0,
                                0, -2, -1, 2, 1, 0, 0, 2,  -1, -2, 1, 0, 0, 4, 0,  -5, 0, 1},
                               6, 6);
  return m;
}
const torch::Tensor& filter_transform() {  // G
  static const auto m =
      matrix({1.0 / 4, 0, 0, -1.0 / 6, -1.0 / 6, -1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6, 1.0 / 24,
              1.0 / 12, 1.0 / 6, 1.0 / 24, -1.0 / 12, 1.0 / 6, 0, 0, 1},
             6, 3);
  return m;
}
const torch::Tensor& output_transform() {  // A^T
  static const auto m =
      matrix({1, 1, 1, 1, 1, 0, 0, 1, -1, 2, -2, 0, 0, 1, 1, 4, 4, 0, 0, 1, -1, 8, -8, 1}, 4, 6);
  return m;
}

// Runs the algorithm in float64 with every matrix entry and operand squared. Each output value
// is a sum over paths (input pixel, filter tap, transform entries) of products; this returns,
// per output, the sum of the squared path products. Rounding errors in float32 act like
// independent perturbations of size u = 2^-24 along a chain of at most `depth` roundings per
// path (the channel sum, then the transforms' few additions), so the error's standard
// deviation is at most u sqrt(depth * sum of squares) (Higham & Mary 2019, probabilistic
// rounding error analysis).
torch::Tensor squared_path_sums(const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t height = x.size(2), width = x.size(3);
  const int64_t rows = (height + 3) / 4, columns = (width + 3) / 4;
  const auto B = input_transform().square(), G = filter_transform().square(),
             A = output_transform().square();
  // 6x6 tiles at stride 4 of the zero-padded image: [N, C, rows, columns, 6, 6].
  const auto padded = torch::constant_pad_nd(
      float64(x).square(), {1, columns * 4 + 1 - width, 1, rows * 4 + 1 - height});
  const auto tiles = padded.unfold(2, 6, 4).unfold(3, 6, 4);
  const auto V = torch::einsum("ir,ncturs,js->ntuijc", {B, tiles, B});
  const auto U = torch::einsum("ia,ocab,jb->ijco", {G, float64(w).square(), G});
  const auto M = torch::einsum("ntuijc,ijco->ntuijo", {V, U});
  const auto Y = torch::einsum("pi,ntuijo,qj->notpuq", {A, M, A});
  return Y.reshape({x.size(0), w.size(0), rows * 4, columns * 4})
      .slice(2, 0, height)
      .slice(3, 0, width);
}

// |winograd - exact| <= 10 standard deviations of the rounding model above, element by element
// (measured: at most 0.21 of it; a coefficient of the output transform off by 1.25e-4 exceeds
// it 30-fold).
void expect_within_rounding(const torch::Tensor& got, const torch::Tensor& x,
                            const torch::Tensor& w, const torch::Tensor& bias) {
  const double u = std::ldexp(1.0, -24);
  const int64_t depth = w.size(1) + 20;  // the channel sum, then the transforms (<= 20 roundings)
  auto exact =
      torch::conv2d(float64(x), float64(w), bias.defined() ? float64(bias) : torch::Tensor(), 1, 1);
  auto bound = 10.0 * u * torch::sqrt(depth * squared_path_sums(x, w));
  if (bias.defined()) bound = bound + u * float64(bias).abs().view({1, -1, 1, 1});
  const auto error = (float64(got) - exact).abs();
  EXPECT_TRUE((error <= bound).all().item<bool>())
      << "worst error / bound " << (error / bound).max().item<double>();
  // Not vacuous: the bound is a small fraction of the outputs' size.
  EXPECT_LT(bound.max().item<double>(), 1e-4 * exact.abs().max().item<double>());
}

struct Shape {
  int64_t batch, in_channels, out_channels, height, width;
};

// With each backend of the 36 matrix products (libtorch's BLAS; oneDNN's sgemm where exported).
TEST(WinogradConvolution, MatchesTheExactConvolutionWithinItsRoundingBound) {
  testing::WinogradSettings restored(winograd_enabled(), winograd_min_pixels());
  torch::NoGradGuard no_grad;
  for (const WinogradProducts backend : testing::available_products_backends()) {
    set_winograd_products_backend(backend);
    SCOPED_TRACE(backend == WinogradProducts::OneDnn ? "products by oneDNN"
                                                     : "products by the BLAS");
    torch::manual_seed(3);
    // Square and ragged images (cut tiles at the right and bottom edges), one pixel, a batch.
    for (const Shape& s : std::vector<Shape>{{1, 8, 8, 4, 4},
                                             {2, 24, 40, 9, 13},
                                             {1, 16, 8, 1, 1},
                                             {3, 8, 64, 17, 5},
                                             {1, 128, 96, 32, 32},
                                             {2, 64, 64, 7, 7}}) {
      SCOPED_TRACE(std::to_string(s.batch) + "x" + std::to_string(s.in_channels) + "->" +
                   std::to_string(s.out_channels) + " " + std::to_string(s.height) + "x" +
                   std::to_string(s.width));
      const auto x = torch::randn({s.batch, s.in_channels, s.height, s.width});
      const auto w =
          torch::randn({s.out_channels, s.in_channels, 3, 3}) / std::sqrt(9.0 * s.in_channels);
      const auto bias = torch::randn({s.out_channels});
      expect_within_rounding(winograd_conv3x3(x, w, bias), x, w, bias);
      expect_within_rounding(winograd_conv3x3(x, w, torch::Tensor()), x, w, torch::Tensor());
    }
  }
}

// The backend is a choice: asking for oneDNN's sgemm where this libtorch lacks it is an error,
// and either backend, once set, is the one the convolutions use.
TEST(WinogradConvolution, TheProductsBackendIsTheOneSet) {
  testing::WinogradSettings restored(winograd_enabled(), winograd_min_pixels());
  set_winograd_products_backend(WinogradProducts::Blas);
  EXPECT_EQ(winograd_products_backend(), WinogradProducts::Blas);
  if (!onednn_products_available()) {
    EXPECT_THROW(set_winograd_products_backend(WinogradProducts::OneDnn), InputError);
    return;
  }
  set_winograd_products_backend(WinogradProducts::OneDnn);
  EXPECT_EQ(winograd_products_backend(), WinogradProducts::OneDnn);
  // Each convolution runs its products where the choice says (the two backends may or may not
  // agree bit for bit, depending on the CPU's kernels, so the count tells them apart), and both
  // compute the same convolution.
  torch::NoGradGuard no_grad;
  torch::manual_seed(8);
  const auto x = torch::randn({2, 256, 16, 16});
  const auto w = torch::randn({256, 256, 3, 3}) / 48.0;
  const int64_t onednn_calls = winograd_onednn_product_calls();
  const auto by_onednn = winograd_conv3x3(x, w, torch::Tensor());
  EXPECT_EQ(winograd_onednn_product_calls(), onednn_calls + 1);
  set_winograd_products_backend(WinogradProducts::Blas);
  const auto by_blas = winograd_conv3x3(x, w, torch::Tensor());
  EXPECT_EQ(winograd_onednn_product_calls(), onednn_calls + 1);
  EXPECT_TRUE(torch::allclose(by_onednn, by_blas, 1e-4, 1e-4));
}

TEST(WinogradConvolution, AWrongFilterOrChannelCountIsRefused) {
  const auto x = torch::randn({1, 16, 8, 8});
  EXPECT_THROW(winograd_conv3x3(x, torch::randn({16, 8, 3, 3}), {}),
               c10::Error);  // channels differ
  EXPECT_THROW(winograd_conv3x3(x, torch::randn({16, 16, 5, 5}), {}), c10::Error);  // not 3x3
  EXPECT_THROW(winograd_conv3x3(torch::randn({1, 12, 8, 8}), torch::randn({16, 12, 3, 3}), {}),
               c10::Error);
  EXPECT_THROW(winograd_conv3x3(x.to(torch::kFloat64), torch::randn({16, 16, 3, 3}), {}),
               c10::Error);
}

TEST(WinogradConvolution, TheLayerTakesThePathOnlyWhereItApplies) {
  testing::WinogradSettings everywhere(true, 0);
  torch::manual_seed(4);
  Conv3x3 conv(16, 24);
  const auto x = torch::randn({2, 16, 12, 12});
  const auto direct = [&] { return torch::conv2d(x, conv->weight, conv->bias, 1, 1); };
  const auto winograd = [&] { return winograd_conv3x3(x, conv->weight, conv->bias); };
  {
    torch::NoGradGuard no_grad;
    const auto fast = conv(x);
    EXPECT_TRUE(torch::equal(fast, winograd()));
    EXPECT_FALSE(torch::equal(fast, direct()));  // the other path's rounding differs somewhere
    conv->weight.mul_(-2.0);                     // the filter is transformed afresh each call
    EXPECT_TRUE(torch::equal(conv(x), winograd()));
    set_winograd_enabled(false);
    EXPECT_TRUE(torch::equal(conv(x), direct()));
    set_winograd_enabled(true);
    set_winograd_min_pixels(12 * 12 + 1);  // an image below the threshold
    EXPECT_TRUE(torch::equal(conv(x), direct()));
    set_winograd_min_pixels(0);
    Conv3x3 odd(12, 24);  // channel counts must be multiples of 8
    const auto x12 = torch::randn({1, 12, 8, 8});
    EXPECT_TRUE(torch::equal(odd(x12), torch::conv2d(x12, odd->weight, odd->bias, 1, 1)));
  }
  {
    c10::InferenceMode inference;  // how the samplers run the networks
    EXPECT_TRUE(torch::equal(conv(x), winograd()));
  }
  // Recording autograd (training): libtorch's convolution.
  const auto recorded = conv(x);
  EXPECT_TRUE(recorded.requires_grad());
  EXPECT_TRUE(torch::equal(recorded, direct()));
}

// Below winograd_min_pixels() a call takes the path only with at least 64 tiles over its batch
// and at least 256 channels on both sides: the 64x64 model's 16x16 layers at batch 4, not 3.
TEST(WinogradConvolution, SmallImagesTakeThePathInCallsOfEnoughTilesAndChannels) {
  testing::WinogradSettings from_32x32(true, 32 * 32);
  torch::NoGradGuard no_grad;
  torch::manual_seed(7);
  Conv3x3 wide(256, 264), narrow(248, 256);
  const auto winograd_for = [](Conv3x3 conv, const torch::Tensor& x) {
    return torch::equal(conv(x), winograd_conv3x3(x, conv->weight, conv->bias));
  };
  const auto direct_for = [](Conv3x3 conv, const torch::Tensor& x) {
    return torch::equal(conv(x), torch::conv2d(x, conv->weight, conv->bias, 1, 1));
  };
  const int64_t calls = winograd_calls();
  const auto four = torch::randn({4, 256, 16, 16});  // 4 x 16 tiles
  EXPECT_TRUE(winograd_for(wide, four));
  EXPECT_TRUE(direct_for(wide, four.slice(0, 0, 3)));               // 48 tiles
  EXPECT_TRUE(direct_for(narrow, torch::randn({4, 248, 16, 16})));  // 248 input channels
  EXPECT_TRUE(direct_for(Conv3x3(256, 248), four));                 // 248 output channels
  const auto sixteen = torch::randn({16, 256, 8, 8});               // 16 x 4 tiles
  EXPECT_TRUE(winograd_for(wide, sixteen));
  EXPECT_TRUE(direct_for(wide, sixteen.slice(0, 0, 15)));
  EXPECT_EQ(winograd_calls(), calls + 4);  // the layer's two Winograd calls and the checks' two
}

// The classifier guidance gradient: inside InputGradientsOnly the layer records a Winograd
// convolution whose backward pass gives the input gradient by Winograd (within the rounding
// bound of that convolution: the output gradient convolved with the reversed, channel-swapped
// filter) and, if asked, libtorch's own weight and bias gradients.
TEST(WinogradConvolution, InputGradientsOnlyRecordsAWinogradConvolutionWithItsGradient) {
  testing::WinogradSettings everywhere(true, 0);
  torch::manual_seed(5);
  Conv3x3 conv(16, 24);
  const auto x = torch::randn({2, 16, 9, 11}).requires_grad_(true);
  const auto output_gradient = torch::randn({2, 24, 9, 11});
  const int64_t calls = winograd_calls();
  torch::Tensor recorded;
  {
    InputGradientsOnly scope;
    recorded = conv(x);
    EXPECT_TRUE(
        torch::equal(recorded.detach(), winograd_conv3x3(x.detach(), conv->weight, conv->bias)));
    recorded.backward(output_gradient);
  }
  EXPECT_EQ(winograd_calls(), calls + 3);  // the forward, the check above, the input gradient
  const auto reversed = conv->weight.detach().flip({2, 3}).transpose(0, 1);
  expect_within_rounding(x.grad(), output_gradient, reversed, torch::Tensor());
  // The weight and bias gradients are libtorch's, computed from the same output gradient.
  const auto weight_gradient = conv->weight.grad().clone(),
             bias_gradient = conv->bias.grad().clone();
  conv->weight.mutable_grad() = torch::Tensor();
  conv->bias.mutable_grad() = torch::Tensor();
  torch::conv2d(x, conv->weight, conv->bias, 1, 1).backward(output_gradient);
  EXPECT_TRUE(torch::allclose(weight_gradient, conv->weight.grad(), 1e-6, 1e-6));
  EXPECT_TRUE(torch::allclose(bias_gradient, conv->bias.grad(), 1e-6, 1e-6));
  // Outside the scope the same layer records libtorch's convolution again.
  EXPECT_TRUE(
      torch::equal(conv(x).detach(), torch::conv2d(x, conv->weight, conv->bias, 1, 1).detach()));
}

// A layer without a bias records a Winograd convolution too: autograd's Function::apply refuses
// an undefined tensor argument, so the bias travels as an optional.
TEST(WinogradConvolution, ALayerWithoutBiasRecordsAWinogradConvolution) {
  testing::WinogradSettings everywhere(true, 0);
  torch::manual_seed(6);
  Conv3x3 conv(8, 16, /*with_bias=*/false);
  ASSERT_FALSE(conv->bias.defined());
  const auto x = torch::randn({1, 8, 7, 5}).requires_grad_(true);
  const auto output_gradient = torch::randn({1, 16, 7, 5});
  const int64_t calls = winograd_calls();
  {
    InputGradientsOnly scope;
    const auto recorded = conv(x);
    EXPECT_TRUE(torch::equal(recorded.detach(),
                             winograd_conv3x3(x.detach(), conv->weight, torch::Tensor())));
    recorded.backward(output_gradient);
  }
  EXPECT_EQ(winograd_calls(), calls + 3);
  const auto reversed = conv->weight.detach().flip({2, 3}).transpose(0, 1);
  expect_within_rounding(x.grad(), output_gradient, reversed, torch::Tensor());
  const auto weight_gradient = conv->weight.grad().clone();
  conv->weight.mutable_grad() = torch::Tensor();
  torch::conv2d(x, conv->weight, {}, 1, 1).backward(output_gradient);
  EXPECT_TRUE(torch::allclose(weight_gradient, conv->weight.grad(), 1e-6, 1e-6));
}

}  // namespace
}  // namespace guidiff
