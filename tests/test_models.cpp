// Trainable networks: ADM UNet and encoder classifier (shapes for many configs, zero-init
// output, guided-diffusion parameter names, null class row, log-SNR time), their blocks
// against reference formulas, the MLPs, JSON configs. Files and the factory:
// test_model_files.cpp.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/core/autocast.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/models/conditioning.hpp"
#include "guidiff/models/mlp.hpp"
#include "guidiff/models/network_adapters.hpp"
#include "guidiff/models/norm_kernels.hpp"
#include "guidiff/models/unet.hpp"
#include "guidiff/models/unet_blocks.hpp"
#include "support/precision_bounds.hpp"
#include "support/test_files.hpp"

using namespace guidiff;
using guidiff::testing::expect_error;
using nlohmann::json;

namespace {

// Replaces every parameter with N(0, scale^2) noise, so zero-initialised layers stop hiding
// the rest of the network.
void randomize(torch::nn::Module& module, double scale = 0.2) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) parameter.copy_(torch::randn_like(parameter) * scale);
}

std::map<std::string, std::vector<int64_t>> parameter_shapes(const torch::nn::Module& module) {
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const auto& item : module.named_parameters())
    shapes[item.key()] = item.value().sizes().vec();
  return shapes;
}

torch::Tensor steps(std::vector<int64_t> values) { return torch::tensor(values, torch::kInt64); }

// A small UNet: 16x16, one channel, two levels, norm_groups 8.
UNetConfig tiny_unet() {
  UNetConfig config;
  config.image_size = 16;
  config.in_channels = 1;
  config.model_channels = 16;
  config.channel_mult = {1, 2};
  config.num_res_blocks = 1;
  config.attention_resolutions = {8};
  config.num_heads = 2;
  config.norm_groups = 8;
  return config;
}

ClassifierConfig tiny_classifier(const std::string& pool) {
  ClassifierConfig config;
  config.image_size = 16;
  config.in_channels = 1;
  config.model_channels = 16;
  config.channel_mult = {1, 2};
  config.num_res_blocks = 1;
  config.attention_resolutions = {8};
  config.num_head_channels = 8;
  config.norm_groups = 8;
  config.num_classes = 5;
  config.pool = pool;
  return config;
}

// ---- UNet shapes ---------------------------------------------------------------------

struct ShapeCase {
  std::string name;
  UNetConfig config;
  int64_t side;
};

std::vector<ShapeCase> shape_cases() {
  std::vector<ShapeCase> cases;
  {
    auto c = tiny_unet();
    c.image_size = 28;
    c.attention_resolutions = {14};  // one level of attention, num_heads
    cases.push_back({"fashion_28_mult_1_2_heads", c, 28});
  }
  {
    auto c = tiny_unet();
    c.image_size = 28;
    c.channel_mult = {1, 2, 2};  // 28 -> 14 -> 7
    c.attention_resolutions = {14, 7};
    c.num_head_channels = 8;
    c.num_classes = 10;
    c.learn_sigma = true;
    cases.push_back({"fashion_28_mult_1_2_2_head_channels_sigma_classes", c, 28});
  }
  {
    auto c = tiny_unet();
    c.image_size = 32;
    c.in_channels = 3;
    c.channel_mult = {1, 2, 2};
    c.attention_resolutions = {16};
    c.resblock_updown = true;
    c.use_scale_shift_norm = true;
    c.num_classes = 3;
    cases.push_back({"cifar_32_updown_scale_shift", c, 32});
  }
  {
    auto c = tiny_unet();
    c.time.kind = TimeKind::log_snr;
    c.conv_resample = false;
    c.use_new_attention_order = true;
    c.attention_resolutions = {};
    c.dropout = 0.1;
    cases.push_back({"log_snr_no_conv_resample_new_order", c, 16});
  }
  return cases;
}

TEST(UNet, OutputShapesForManyConfigs) {
  torch::manual_seed(0);
  for (const auto& test : shape_cases()) {
    SCOPED_TRACE(test.name);
    UNetDenoiser denoiser{UNetModel(test.config)};
    randomize(*denoiser.network());
    const int64_t c = test.config.in_channels;
    const auto x = torch::randn({2, c, test.side, test.side});
    const auto time = test.config.time.kind == TimeKind::log_snr ? torch::tensor({-3.0f, 5.0f})
                                                                 : steps({10, 900});
    const auto y =
        test.config.num_classes > 0 ? steps({1, test.config.num_classes}) : torch::Tensor();
    const auto out = denoiser.predict(x, time, y);
    EXPECT_EQ(out.eps.sizes(), x.sizes());
    EXPECT_TRUE(torch::isfinite(out.eps).all().item<bool>());
    EXPECT_GT(out.eps.abs().max().item<double>(), 0.0);
    EXPECT_EQ(denoiser.learns_variance(), test.config.learn_sigma);
    if (test.config.learn_sigma) {
      ASSERT_TRUE(out.variance_output.defined());
      EXPECT_EQ(out.variance_output.sizes(), x.sizes());
      // The same forward on the same batch (same shapes, same kernels): bitwise.
      const auto raw = denoiser.network()->forward(x, time, y);
      EXPECT_EQ(raw.size(1), 2 * c);
      EXPECT_TRUE(torch::equal(out.eps, raw.narrow(1, 0, c)));
      EXPECT_TRUE(torch::equal(out.variance_output, raw.narrow(1, c, c)));
    } else {
      EXPECT_FALSE(out.variance_output.defined());
    }
  }
}

TEST(UNet, ZeroInitialisedOutputLayerGivesZeroAtInit) {
  torch::manual_seed(1);
  for (const auto& test : shape_cases()) {
    SCOPED_TRACE(test.name);
    UNetModel net(test.config);
    const auto x = torch::randn({2, test.config.in_channels, test.side, test.side});
    const auto time =
        test.config.time.kind == TimeKind::log_snr ? torch::tensor({0.0f, 1.0f}) : steps({0, 5});
    const auto out = net->forward(x, time);
    EXPECT_TRUE(torch::equal(out, torch::zeros_like(out)));
  }
}

TEST(UNet, Bf16AutocastForwardRunsAndStaysCloseToFloat32) {
  torch::manual_seed(3);
  UNetModel net(tiny_unet());
  randomize(*net);
  net->eval();
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 1, 16, 16});
  const auto time = steps({10, 500});
  const auto reference = net->forward(x, time);
  torch::Tensor lower;
  {
    AutocastScope autocast(true, torch::kCPU);
    lower = net->forward(x, time);
  }
  EXPECT_EQ(lower.scalar_type(), torch::kBFloat16);  // the last convolution ran in bf16
  EXPECT_GT(reference.abs().max().item<double>(), 0.1);
  // bf16's 8 bits through the network's rounded layers: u sqrt(D) of the output's mean
  // magnitude (support/precision_bounds.hpp).
  const double relative = (lower.to(torch::kFloat32) - reference).abs().mean().item<double>() /
                          reference.abs().mean().item<double>();
  EXPECT_GT(relative, 0.0);
  EXPECT_LT(relative, guidiff::testing::bf16_network_relative_error(*net));
}

TEST(Blocks, GroupNormOfBfloat16IsTheFloat32NormRounded) {
  torch::manual_seed(4);
  auto norm = make_group_norm(4, 8);
  randomize(*norm, 1.0);
  const auto x = torch::randn({3, 8, 5, 5}) * 3.0 + 1.0;
  const auto x_bf16 = x.to(torch::kBFloat16);
  const auto out = norm(x_bf16);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  const auto expected = norm(x_bf16.to(torch::kFloat32)).to(torch::kBFloat16);
  EXPECT_TRUE(torch::equal(out, expected));
  expect_error<InputError>([] { make_group_norm(3, 8); }, {"norm_groups = 3", "8 channels"});
}

// silu(GroupNorm(x) * (1 + scale) + shift) in float64 from the same (bf16) inputs, and the
// size of its pre-activation's two terms, |w (1 + scale) * normalised| + |b (1 + scale) + shift|.
struct NormSiluReference {
  torch::Tensor value, terms;
};
NormSiluReference norm_scale_shift_silu_in_float64(Float32GroupNorm& norm, const torch::Tensor& x,
                                                   const torch::Tensor& scale,
                                                   const torch::Tensor& shift) {
  const auto wide = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  const auto normalised =
      torch::group_norm(wide(x), norm->options.num_groups(), {}, {}, norm->options.eps());
  const auto factor = 1 + wide(scale);
  const auto gain = wide(norm->weight).view({1, -1, 1, 1}) * factor;
  const auto offset = wide(norm->bias).view({1, -1, 1, 1}) * factor + wide(shift);
  return {torch::silu(gain * normalised + offset), (gain * normalised).abs() + offset.abs()};
}

// Both layouts: NCHW (blocks of whole groups) and channels-last (bf16 sampling's layout on the
// CPU, norm_kernels.cpp: blocks of rows merged in float64).
void expect_norm_silu_rounded_once(torch::MemoryFormat format) {
  torch::manual_seed(5);
  auto norm = make_group_norm(32, 64);
  randomize(*norm, 1.0);
  // 24576 elements per group: blocks of 10 groups (96 groups in all), spread over the threads.
  // Channels-last: 12288 positions of 64 channels, in blocks of 2048 rows per sample.
  const auto x =
      (torch::randn({3, 64, 128, 96}) * 3.0 + 1.0).to(torch::kBFloat16).contiguous(format);
  // As ResBlock hands them over: halves of one [N, 2C, 1, 1] embedding, so not contiguous.
  const auto scale_shift = (torch::randn({3, 128, 1, 1}) * 0.5).to(torch::kBFloat16).chunk(2, 1);
  const auto &scale = scale_shift[0], &shift = scale_shift[1];
  torch::Tensor out, separate;
  {
    c10::InferenceMode inference;  // how sampling runs the network
    out = norm->forward_silu(x, scale, shift);
    separate = torch::silu(norm(x) * (1 + scale) + shift);
  }
  ASSERT_EQ(out.scalar_type(), torch::kBFloat16);
  ASSERT_EQ(out.sizes(), x.sizes());
  EXPECT_TRUE(out.is_contiguous(format));
  const auto [exact, terms] = norm_scale_shift_silu_in_float64(norm, x, scale, shift);
  // float32 statistics and arithmetic leave about 1e-6 of the pre-activation's terms (the mean
  // and variance to a few ulps, then a product and a sum), bounded here by 1e-5; SiLU's slope
  // is below 1.1; then one rounding to bf16 (8 significant bits) adds at most 2^-8 of the value.
  const auto bound = exact.abs() * std::ldexp(1.0, -8) + 1.1e-5 * terms;
  const auto error = (out.to(torch::kFloat64) - exact).abs();
  EXPECT_TRUE((error <= bound).all().item<bool>())
      << "worst excess " << (error - bound).max().item<double>();
  // The separate operations round after the norm, the scale, the shift and the SiLU.
  const double one_pass_error = error.mean().item<double>();
  const double separate_error = (separate.to(torch::kFloat64) - exact).abs().mean().item<double>();
  EXPECT_LT(one_pass_error, 0.8 * separate_error)
      << one_pass_error << " against " << separate_error;

  // Without scale and shift: silu(GroupNorm(x)).
  torch::Tensor plain;
  {
    c10::InferenceMode inference;
    plain = norm->forward_silu(x);
  }
  const auto zeros = torch::zeros({3, 64, 1, 1});
  const auto plain_exact = norm_scale_shift_silu_in_float64(norm, x, zeros, zeros);
  const auto plain_bound =
      plain_exact.value.abs() * std::ldexp(1.0, -8) + 1.1e-5 * plain_exact.terms;
  EXPECT_TRUE(
      ((plain.to(torch::kFloat64) - plain_exact.value).abs() <= plain_bound).all().item<bool>());
}

TEST(Blocks, NormSiluOfBfloat16IsTheExactValueRoundedOnce) {
  expect_norm_silu_rounded_once(torch::MemoryFormat::Contiguous);
}

TEST(Blocks, NormSiluOfChannelsLastBfloat16IsTheExactValueRoundedOnce) {
  expect_norm_silu_rounded_once(torch::MemoryFormat::ChannelsLast);
}

// The channels-last kernel's own arithmetic, with the norm made the identity (mean 0, rstd 1,
// gain 1, offset 0): SiLU over its whole range, and the rounding to bf16.
TEST(Blocks, ChannelsLastNormSiluKernelRoundsSiluOfEveryValue) {
  const int64_t channels = 8;
  const norm_kernels::ChannelsLastShape shape{1, 0, channels, 1};
  const auto run = [&](const torch::Tensor& x, const torch::Tensor& gain) {
    auto shaped = shape;
    shaped.positions = x.numel() / channels;
    const auto statistics = torch::tensor({0.0f, 1.0f});
    const auto offset = torch::zeros({channels});
    auto y = torch::empty_like(x);
    norm_kernels::normalize_silu(
        reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), shaped,
        statistics.data_ptr<float>(), statistics.data_ptr<float>() + 1, gain.data_ptr<float>(),
        offset.data_ptr<float>(), reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()));
    return y;
  };
  // SiLU from -100 to 100 (the exponential's clamp is at -87 and 88): within one bf16
  // rounding (2^-8 of the value) of the float64 value, plus 1e-30 where it underflows.
  const auto grid = torch::linspace(-100.0, 100.0, 8 * 4001, torch::kFloat64).to(torch::kBFloat16);
  const auto y = run(grid, torch::ones({channels}));
  const auto exact = torch::silu(grid.to(torch::kFloat64));
  const auto error = (y.to(torch::kFloat64) - exact).abs();
  const auto bound = exact.abs() * std::ldexp(1.0, -8) + 1e-30;
  EXPECT_TRUE((error <= bound).all().item<bool>())
      << "worst excess " << (error - bound).max().item<double>();
  // Above 88 SiLU is the value itself, so the output is the float32 product x * gain rounded:
  // exactly libtorch's float32 -> bf16 conversion (to nearest, ties to even), midpoints
  // included (gain 1 + 2^-8 puts 128 * gain halfway between two bf16 values).
  const auto large = torch::cat({torch::full({8}, 128.0), torch::full({8}, 129.0),
                                 torch::rand({8 * 500}, torch::kFloat64) * 1e6 + 100.0})
                         .to(torch::kBFloat16);
  for (const float factor : {1.0f + std::ldexp(1.0f, -8), 1.37f, 0.6180339f}) {
    const auto gain = torch::full({channels}, factor);
    const auto rounded = (large.to(torch::kFloat32) * factor).to(torch::kBFloat16);
    EXPECT_TRUE(torch::equal(run(large, gain), rounded)) << "gain " << factor;
  }
  // NaN stays NaN; infinity stays infinity.
  const auto special =
      torch::tensor({std::nanf(""), INFINITY, 0.0f, -0.0f, 1.0f, -1.0f, 2.0f, 3.0f})
          .to(torch::kBFloat16);
  const auto y_special = run(special, torch::ones({channels})).to(torch::kFloat32);
  EXPECT_TRUE(std::isnan(y_special[0].item<float>()));
  EXPECT_EQ(y_special[1].item<float>(), INFINITY);
  EXPECT_EQ(y_special[2].item<float>(), 0.0f);
}

TEST(Blocks, NormSiluOfOneSampleDoesNotDependOnTheBatch) {
  torch::manual_seed(6);
  auto norm = make_group_norm(32, 64);
  randomize(*norm, 1.0);
  const auto scale = torch::randn({5, 64, 1, 1}).to(torch::kBFloat16),
             shift = torch::randn({5, 64, 1, 1}).to(torch::kBFloat16);
  torch::NoGradGuard no_grad;
  // 160x160 channels-last: 6400 positions in blocks of 2048 rows, the last one shorter.
  for (const auto format : {torch::MemoryFormat::Contiguous, torch::MemoryFormat::ChannelsLast}) {
    const auto x = (torch::randn({5, 64, 160, 40}) * 2.0).to(torch::kBFloat16).contiguous(format);
    const auto batch = norm->forward_silu(x, scale, shift);
    for (const int64_t i : {0, 3, 4}) {
      const auto alone =
          norm->forward_silu(x.narrow(0, i, 1), scale.narrow(0, i, 1), shift.narrow(0, i, 1));
      EXPECT_TRUE(torch::equal(alone, batch.narrow(0, i, 1))) << "sample " << i;
    }
  }
}

// The channels-last bf16 form with gradients recorded (the classifier's guidance gradient under
// --bf16) is its own autograd node, whose backward is norm_kernels::normalize_silu_backward.
// Against float64 autograd of the same formula from the same bf16 inputs and output gradient:
// the input's gradient and those that reach the norm's weight and bias and the scale and shift.
TEST(Blocks, ChannelsLastNormSiluGradientsAreTheFloat64Gradients) {
  torch::manual_seed(8);
  auto norm = make_group_norm(32, 64);
  randomize(*norm, 1.0);
  const auto bf16 = [](const torch::Tensor& t) {
    return t.to(torch::kBFloat16).requires_grad_(true);
  };
  // 7680 positions of 64 channels per sample: blocks of 2048 rows, the last one shorter.
  const auto x = bf16((torch::randn({3, 64, 96, 80}) * 3.0 + 1.0)
                          .contiguous(torch::MemoryFormat::ChannelsLast));
  const auto scale = bf16(torch::randn({3, 64, 1, 1}) * 0.5), shift = bf16(torch::randn({3, 64, 1, 1}));
  // The output's gradient in bf16 values, so that both sides are given the same one.
  const auto dy = torch::randn(x.sizes()).to(torch::kBFloat16).to(torch::kFloat64);
  const auto out = norm->forward_silu(x, scale, shift);
  ASSERT_TRUE(out.is_contiguous(torch::MemoryFormat::ChannelsLast));
  (out.to(torch::kFloat64) * dy).sum().backward();

  // float64: a = gain * normalised + offset, y = silu(a), keeping a's and normalised's values.
  const auto wide = [](const torch::Tensor& t) {
    return t.detach().to(torch::kFloat64).requires_grad_(true);
  };
  const auto x64 = wide(x), w64 = wide(norm->weight), b64 = wide(norm->bias), s64 = wide(scale),
             t64 = wide(shift);
  const auto normalised = torch::group_norm(x64, 32, {}, {}, norm->options.eps());
  const auto factor = 1 + s64;
  const auto gain = w64.view({1, -1, 1, 1}) * factor;
  auto a = gain * normalised + b64.view({1, -1, 1, 1}) * factor + t64;
  a.retain_grad();
  (torch::silu(a) * dy).sum().backward();
  const auto da = a.grad().detach(), xhat = normalised.detach(), g = da * gain.detach();

  // dx = rstd (g - mean(g) - xhat mean(g xhat)) over each group: float32 arithmetic on those
  // terms (and on float32 statistics) errs by about 1e-6 of their sizes, bounded by 1e-5; then
  // one rounding to bf16, 2^-8 of the value.
  const auto grouped = [](const torch::Tensor& t) { return t.contiguous().view({3, 32, -1}); };
  const auto rstd = grouped(x64.detach()).var(-1, false, true).add(norm->options.eps()).rsqrt();
  const auto dx_terms =
      (rstd * (grouped(g).abs() + grouped(g).mean(-1, true).abs() +
               grouped(xhat).abs() * (grouped(g) * grouped(xhat)).mean(-1, true).abs()))
          .view(x.sizes());
  const auto dx_error = (x.grad().to(torch::kFloat64) - x64.grad()).abs();
  EXPECT_TRUE((dx_error <= x64.grad().abs() * std::ldexp(1.0, -8) + 1e-5 * dx_terms).all().item<bool>())
      << "worst excess " << (dx_error - x64.grad().abs() * std::ldexp(1.0, -8) - 1e-5 * dx_terms).max().item<double>();
  // The others are sums over the positions (and for the weight and bias, the samples) of
  // float32 terms: within 1e-4 of the sum of the terms' sizes (float32 partial sums of 32 rows,
  // then of the block's partials, then float64); the scale's and shift's are then rounded to
  // bf16, as those are.
  const auto sum_over = [](const torch::Tensor& t, std::vector<int64_t> dims) {
    return t.abs().sum(dims, true);
  };
  const auto expect_near = [](const torch::Tensor& got, const torch::Tensor& exact,
                              const torch::Tensor& term_sizes, double rounding, const char* name) {
    const auto error = (got.to(torch::kFloat64) - exact).abs();
    const auto bound = exact.abs() * rounding + 1e-4 * term_sizes.view(exact.sizes());
    EXPECT_TRUE((error <= bound).all().item<bool>())
        << name << ": worst excess " << (error - bound).max().item<double>();
  };
  expect_near(norm->weight.grad(), w64.grad(), sum_over(da * xhat * factor.detach(), {0, 2, 3}), 0.0,
              "weight");
  expect_near(norm->bias.grad(), b64.grad(), sum_over(da * factor.detach(), {0, 2, 3}), 0.0, "bias");
  expect_near(scale.grad(), s64.grad(),
              sum_over(da * (w64.detach().view({1, -1, 1, 1}) * xhat + b64.detach().view({1, -1, 1, 1})), {2, 3}),
              std::ldexp(1.0, -8), "scale");
  expect_near(shift.grad(), t64.grad(), sum_over(da, {2, 3}), std::ldexp(1.0, -8), "shift");

  // The separate operations round after each of them and in their GroupNorm backward: their
  // input gradient errs more.
  const auto x_nchw = x.detach().contiguous().requires_grad_(true);
  (torch::silu(norm(x_nchw) * (1 + scale) + shift).to(torch::kFloat64) * dy).sum().backward();
  const double kernel_error = dx_error.mean().item<double>();
  const double separate_error = (x_nchw.grad().to(torch::kFloat64) - x64.grad()).abs().mean().item<double>();
  EXPECT_LT(kernel_error, 0.8 * separate_error) << kernel_error << " against " << separate_error;


  // A sample's input gradient does not depend on the batch.
  const auto alone = x.detach().narrow(0, 1, 1).clone(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
  (norm->forward_silu(alone, scale.detach().narrow(0, 1, 1), shift.detach().narrow(0, 1, 1))
       .to(torch::kFloat64) *
   dy.narrow(0, 1, 1))
      .sum()
      .backward();
  EXPECT_TRUE(torch::equal(alone.grad(), x.grad().narrow(0, 1, 1)));
}

TEST(Blocks, NormSiluKeepsTheSeparateOperationsForFloat32AndGradients) {
  torch::manual_seed(7);
  auto norm = make_group_norm(4, 8);
  randomize(*norm, 1.0);
  const auto x = torch::randn({2, 8, 6, 6}) * 2.0 + 0.5;
  const auto scale = torch::randn({2, 8, 1, 1}), shift = torch::randn({2, 8, 1, 1});
  {
    torch::NoGradGuard no_grad;  // float32: libtorch's GroupNorm, bit for bit as before
    EXPECT_TRUE(torch::equal(norm->forward_silu(x, scale, shift),
                             torch::silu(norm(x) * (1 + scale) + shift)));
    EXPECT_TRUE(torch::equal(norm->forward_silu(x), torch::silu(norm(x))));
  }
  // NCHW bf16 with gradients recorded (training under autocast): the separate operations, so
  // that gradients reach the input and the norm's weights.
  const auto x_bf16 = x.to(torch::kBFloat16).requires_grad_(true);
  const auto out =
      norm->forward_silu(x_bf16, scale.to(torch::kBFloat16), shift.to(torch::kBFloat16));
  const auto separate =
      torch::silu(norm(x_bf16) * (1 + scale.to(torch::kBFloat16)) + shift.to(torch::kBFloat16));
  EXPECT_TRUE(torch::equal(out, separate));
  out.to(torch::kFloat32).sum().backward();
  ASSERT_TRUE(x_bf16.grad().defined());
  EXPECT_GT(x_bf16.grad().abs().sum().item<double>(), 0.0);
  ASSERT_TRUE(norm->weight.grad().defined());
  expect_error<InputError>([&] { norm->forward_silu(x, scale); },
                           {"scale-shift", "only the scale"});
}

TEST(UNet, ParameterNamesFollowGuidedDiffusion) {
  auto config = tiny_unet();  // levels (1, 2), one res block, attention at 8 px (ds 2)
  config.num_classes = 10;
  config.learn_sigma = true;
  const auto shapes = parameter_shapes(*UNetModel(config));
  // key -> shape, as guided-diffusion's UNetModel(in 1, mc 16, out 2, ...) names them.
  const std::map<std::string, std::vector<int64_t>> expected = {
      {"time_embed.0.weight", {64, 16}},
      {"time_embed.2.weight", {64, 64}},
      {"label_emb.weight", {11, 64}},
      {"input_blocks.0.0.weight", {16, 1, 3, 3}},
      {"input_blocks.1.0.in_layers.0.weight", {16}},
      {"input_blocks.1.0.in_layers.2.weight", {16, 16, 3, 3}},
      {"input_blocks.1.0.emb_layers.1.weight", {16, 64}},
      {"input_blocks.1.0.out_layers.0.bias", {16}},
      {"input_blocks.1.0.out_layers.3.weight", {16, 16, 3, 3}},
      {"input_blocks.2.0.op.weight", {16, 16, 3, 3}},
      {"input_blocks.3.0.skip_connection.weight", {32, 16, 1, 1}},
      {"input_blocks.3.1.norm.weight", {32}},
      {"input_blocks.3.1.qkv.weight", {96, 32, 1}},
      {"input_blocks.3.1.proj_out.weight", {32, 32, 1}},
      {"middle_block.0.in_layers.2.weight", {32, 32, 3, 3}},
      {"middle_block.1.qkv.weight", {96, 32, 1}},
      {"middle_block.2.out_layers.3.bias", {32}},
      {"output_blocks.0.0.skip_connection.weight", {32, 64, 1, 1}},
      {"output_blocks.0.1.qkv.bias", {96}},
      {"output_blocks.1.0.in_layers.0.weight", {48}},
      {"output_blocks.1.2.conv.weight", {32, 32, 3, 3}},
      {"output_blocks.2.0.skip_connection.weight", {16, 48, 1, 1}},
      {"output_blocks.3.0.in_layers.0.weight", {32}},
      {"out.0.weight", {16}},
      {"out.2.weight", {2, 16, 3, 3}},
      {"out.2.bias", {2}},
  };
  for (const auto& [key, shape] : expected) {
    const auto it = shapes.find(key);
    ASSERT_NE(it, shapes.end()) << "missing " << key;
    EXPECT_EQ(it->second, shape) << key;
  }
  for (const char* absent :
       {"input_blocks.1.0.skip_connection.weight", "input_blocks.1.1.norm.weight",
        "input_blocks.4.0.op.weight", "output_blocks.4.0.in_layers.0.weight",
        "input_blocks.1.0.in_layers.1.weight", "output_blocks.3.1.conv.weight"}) {
    EXPECT_EQ(shapes.count(absent), 0u) << absent;
  }
  // Residual up/down-sampling blocks and scale-shift norm change what sits at those places.
  config.resblock_updown = true;
  config.use_scale_shift_norm = true;
  const auto updown = parameter_shapes(*UNetModel(config));
  EXPECT_EQ(updown.count("input_blocks.2.0.op.weight"), 0u);
  EXPECT_EQ(updown.at("input_blocks.2.0.in_layers.2.weight"), (std::vector<int64_t>{16, 16, 3, 3}));
  EXPECT_EQ(updown.at("output_blocks.1.2.out_layers.3.weight"),
            (std::vector<int64_t>{32, 32, 3, 3}));
  EXPECT_EQ(updown.at("input_blocks.1.0.emb_layers.1.weight"), (std::vector<int64_t>{32, 64}));
}

TEST(UNet, ClassifierParameterNamesFollowGuidedDiffusion) {
  const auto attention = parameter_shapes(*EncoderUNetModel(tiny_classifier("attention")));
  EXPECT_EQ(attention.at("out.0.weight"), (std::vector<int64_t>{32}));
  EXPECT_EQ(attention.at("out.2.positional_embedding"), (std::vector<int64_t>{32, 8 * 8 + 1}));
  EXPECT_EQ(attention.at("out.2.qkv_proj.weight"), (std::vector<int64_t>{96, 32, 1}));
  EXPECT_EQ(attention.at("out.2.c_proj.weight"), (std::vector<int64_t>{5, 32, 1}));
  EXPECT_EQ(attention.at("middle_block.1.proj_out.weight"), (std::vector<int64_t>{32, 32, 1}));
  EXPECT_EQ(attention.count("output_blocks.0.0.in_layers.0.weight"), 0u);
  EXPECT_EQ(attention.count("label_emb.weight"), 0u);
  const auto adaptive = parameter_shapes(*EncoderUNetModel(tiny_classifier("adaptive")));
  EXPECT_EQ(adaptive.at("out.3.weight"), (std::vector<int64_t>{5, 32, 1, 1}));
  EXPECT_EQ(adaptive.count("out.2.positional_embedding"), 0u);
}

TEST(UNet, LabelEmbeddingHasANullRowUsedWhenYIsMissing) {
  torch::manual_seed(2);
  auto config = tiny_unet();
  config.num_classes = 4;
  UNetDenoiser denoiser{UNetModel(config)};
  randomize(*denoiser.network());
  EXPECT_EQ(denoiser.network()->named_parameters()["label_emb.weight"].size(0), 5);
  EXPECT_EQ(denoiser.num_classes(), 4);
  const auto x = torch::randn({3, 1, 16, 16});
  const auto t = steps({1, 2, 3});
  const auto null = denoiser.predict(x, t, steps({4, 4, 4})).eps;
  // Missing y is the null row: the same forward, bitwise. Real labels move the output by the
  // embedding's O(0.1) effect, far outside allclose's default 1e-5.
  EXPECT_TRUE(torch::equal(denoiser.predict(x, t, torch::Tensor()).eps, null));
  EXPECT_FALSE(torch::allclose(denoiser.predict(x, t, steps({0, 1, 2})).eps, null));
  expect_error<InputError>([&] { denoiser.predict(x, t, steps({0, 5, 1})); }, {"y", "5"});
  expect_error<InputError>([&] { denoiser.predict(x, t, steps({0, -1, 1})); }, {"y", "-1"});
  expect_error<InputError>([&] { denoiser.predict(x, t, steps({0, 1})); }, {"y", "[3]"});

  // An unconditional model has no label embedding and ignores y.
  UNetDenoiser unconditional{UNetModel(tiny_unet())};
  randomize(*unconditional.network());
  EXPECT_EQ(unconditional.network()->named_parameters().find("label_emb.weight"), nullptr);
  EXPECT_TRUE(torch::equal(unconditional.predict(x, t, steps({0, 1, 2})).eps,
                           unconditional.predict(x, t, torch::Tensor()).eps));
}

TEST(UNet, LogSnrTimeIsEmbeddedAsTheMatchingTimestep) {
  // t' = 1000 (lambda_max - lambda) / (lambda_max - lambda_min): with lambda in [-10, 10],
  // lambda = 10, 0, -10, 5 are the timesteps 0, 500, 1000, 250.
  torch::manual_seed(3);
  auto discrete_config = tiny_unet();
  auto log_snr_config = discrete_config;
  log_snr_config.time.kind = TimeKind::log_snr;
  log_snr_config.time.log_snr.lambda_min = -10.0;
  log_snr_config.time.log_snr.lambda_max = 10.0;
  UNetModel discrete(discrete_config), continuous(log_snr_config);
  randomize(*discrete);
  {
    torch::NoGradGuard no_grad;
    const auto source = discrete->named_parameters();
    for (auto& item : continuous->named_parameters()) item.value().copy_(source[item.key()]);
  }
  const auto x = torch::randn({4, 1, 16, 16});
  const auto by_lambda =
      continuous->forward(x, torch::tensor({10.0, 0.0, -10.0, 5.0}, torch::kFloat64));
  const auto by_step = discrete->forward(x, steps({0, 500, 1000, 250}));
  // 1000 (10 - lambda) / 20 is exact in float64 for these lambdas, so both networks embed the
  // same float32 timesteps and run the same forward: bitwise.
  EXPECT_TRUE(torch::equal(by_lambda, by_step));
  EXPECT_GT(by_step.abs().max().item<double>(), 0.0);

  expect_error<InputError>([&] { discrete->forward(x, torch::zeros({4})); }, {"time", "discrete"});
  expect_error<InputError>(
      [&] {
        continuous->forward(x, steps({1, 2, 3, 4}));
      },
      {"time", "log-SNR"});
  expect_error<InputError>([&] { discrete->forward(x, steps({1, 2})); }, {"time", "[4]"});
}

TEST(UNet, RejectsInputsOfTheWrongShape) {
  UNetModel net(tiny_unet());
  expect_error<InputError>(
      [&] {
        net->forward(torch::zeros({1, 3, 16, 16}), steps({0}));
      },
      {"x", "[1, 3, 16, 16]"});
  expect_error<InputError>(
      [&] {
        net->forward(torch::zeros({1, 1, 15, 16}), steps({0}));
      },
      {"x", "divisible by 2"});
}

// ---- blocks against reference formulas -----------------------------------------------

TEST(Blocks, SinusoidalEmbeddingMatchesTheClosedForm) {
  const auto t = torch::tensor({0.0f, 3.0f, 250.0f});
  for (const int64_t dim : {6, 7}) {
    const auto embedding = sinusoidal_embedding(t, dim);
    ASSERT_EQ(embedding.sizes(), (std::vector<int64_t>{3, dim}));
    for (int64_t n = 0; n < 3; ++n) {
      for (int64_t i = 0; i < 3; ++i) {
        const double frequency = std::pow(10000.0, -static_cast<double>(i) / 3.0);
        const double arg = t[n].item<double>() * frequency;
        // float32: t f (t <= 250) is rounded to half an ulp of 250 (7.6e-6), f = exp(-9.2 i / 3)
        // carries a few u (2^-24) of its |argument| <= 6.2, cos/sin add an ulp: ~1e-5; 2e-4.
        EXPECT_NEAR(embedding[n][i].item<double>(), std::cos(arg), 2e-4);
        EXPECT_NEAR(embedding[n][3 + i].item<double>(), std::sin(arg), 2e-4);
      }
      if (dim == 7) {
        EXPECT_EQ(embedding[n][6].item<float>(), 0.0f);
      }
    }
  }
}

// softmax(q^T k / sqrt(c)) v for one head, column-major tokens: q, k, v [c, T] -> [c, T].
torch::Tensor reference_head(const torch::Tensor& q, const torch::Tensor& k,
                             const torch::Tensor& v) {
  const double c = static_cast<double>(q.size(0));
  auto out = torch::zeros_like(v);
  for (int64_t t = 0; t < q.size(1); ++t) {
    const auto scores = (q.select(1, t).unsqueeze(1) * k).sum(0) / std::sqrt(c);  // [S]
    out.select(1, t).copy_((v * torch::softmax(scores, 0).unsqueeze(0)).sum(1));
  }
  return out;
}

TEST(Blocks, QkvAttentionMatchesTheReferenceFormulaInBothLayouts) {
  torch::manual_seed(4);
  const int64_t batch = 2, heads = 3, c = 4, length = 5;
  const auto qkv = torch::randn({batch, 3 * heads * c, length}, torch::kFloat64);
  const auto legacy = qkv_attention_legacy(qkv, heads);
  const auto split_first = qkv_attention(qkv, heads);
  ASSERT_EQ(legacy.sizes(), (std::vector<int64_t>{batch, heads * c, length}));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      // Legacy: head h owns channels [3ch, 3c(h+1)) = [q; k; v].
      const auto own = qkv[b].narrow(0, 3 * c * h, 3 * c);
      const auto expected_legacy =
          reference_head(own.narrow(0, 0, c), own.narrow(0, c, c), own.narrow(0, 2 * c, c));
      // float64 matmuls vs elementwise sums over c = 4 and 5 tokens of |values| < 5: a few ulps,
      // ~1e-15 absolute; 1e-12 absolute (plus 1e-10 relative) leaves ~1000x.
      EXPECT_TRUE(torch::allclose(legacy[b].narrow(0, c * h, c), expected_legacy, 1e-10, 1e-12));
      // New order: q, k, v are the three thirds; head h is channels [ch, c(h+1)) of each.
      const auto q = qkv[b].narrow(0, c * h, c);
      const auto k = qkv[b].narrow(0, heads * c + c * h, c);
      const auto v = qkv[b].narrow(0, 2 * heads * c + c * h, c);
      EXPECT_TRUE(torch::allclose(split_first[b].narrow(0, c * h, c), reference_head(q, k, v),
                                  1e-10, 1e-12));
    }
  }
}

TEST(Blocks, AttentionHeadsComeFromTheConfigAndMustDivide) {
  EXPECT_EQ(attention_heads(64, 4, -1), 4);
  EXPECT_EQ(attention_heads(64, 4, 16), 4);
  EXPECT_EQ(attention_heads(64, 1, 32), 2);
  expect_error<InputError>([] { attention_heads(48, 1, 32); }, {"num_head_channels", "48"});
  expect_error<InputError>([] { attention_heads(48, 5, -1); }, {"num_heads", "48"});
}

// ---- config validation and JSON ------------------------------------------------------

TEST(Configs, InvalidFieldsAreNamed) {
  const auto bad = [](auto edit, const std::vector<std::string>& fragments) {
    auto config = tiny_unet();
    edit(config);
    expect_error<InputError>([&] { UNetModel{config}; }, fragments);
  };
  bad([](UNetConfig& c) { c.norm_groups = 32; }, {"unet config", "norm_groups", "16"});
  bad([](UNetConfig& c) { c.num_head_channels = 12; }, {"unet config", "num_head_channels"});
  bad([](UNetConfig& c) { c.num_heads = 3; }, {"unet config", "num_heads"});
  bad(
      [](UNetConfig& c) {
        c.image_size = 30;
        c.channel_mult = {1, 2, 2};
        c.attention_resolutions = {};
      },
      {"\"image_size\"", "30"});
  bad([](UNetConfig& c) { c.attention_resolutions = {5}; }, {"\"attention_resolutions\"", "5"});
  bad([](UNetConfig& c) { c.attention_resolutions = {4}; },
      {"\"attention_resolutions\"", "4"});  // rate 4 > 2
  bad([](UNetConfig& c) { c.channel_mult = {}; }, {"\"channel_mult\""});
  bad([](UNetConfig& c) { c.dropout = 1.0; }, {"\"dropout\""});
  bad([](UNetConfig& c) { c.num_classes = -1; }, {"\"num_classes\""});
  bad(
      [](UNetConfig& c) {
        c.time.kind = TimeKind::log_snr;
        c.time.log_snr.lambda_min = 5;
        c.time.log_snr.lambda_max = 1;
      },
      {"lambda_min"});
  auto classifier = tiny_classifier("max");
  expect_error<InputError>([&] { EncoderUNetModel{classifier}; },
                           {"classifier config", "\"pool\"", "max"});
  classifier.pool = "attention";
  classifier.num_classes = 0;
  expect_error<InputError>([&] { EncoderUNetModel{classifier}; }, {"\"num_classes\""});
}

TEST(Configs, JsonRoundTripsAndRejectsUnknownOrMistypedFields) {
  auto config = shape_cases()[1].config;
  config.time.kind = TimeKind::log_snr;
  config.time.log_snr.lambda_min = -15;
  const json text = config;
  const auto back = text.get<UNetConfig>();
  EXPECT_EQ(json(back), text);
  EXPECT_EQ(back.channel_mult, config.channel_mult);
  EXPECT_EQ(back.attention_resolutions, config.attention_resolutions);
  EXPECT_EQ(back.time.log_snr.lambda_min, -15);
  EXPECT_TRUE(back.learn_sigma);

  // Missing fields take the defaults.
  const auto defaults = json::object().get<UNetConfig>();
  EXPECT_EQ(json(defaults), json(UNetConfig{}));

  expect_error<InputError>(
      [] {
        json{{"model_chanels", 32}}.get<UNetConfig>();
      },
      {"unet config", "model_chanels"});
  expect_error<InputError>(
      [] {
        json{{"model_channels", "32"}}.get<UNetConfig>();
      },
      {"\"model_channels\"", "integer"});
  // An integer past int64_t's range (nlohmann would wrap 2^64 - 1 to -1), an integer list
  // holding one, and a long value quoted as one short line.
  expect_error<InputError>([] { json{{"model_channels", 18446744073709551615ull}}.get<UNetConfig>(); },
                           {"\"model_channels\"", "integer", "18446744073709551615"});
  expect_error<InputError>([] { json{{"attention_resolutions", {7, 18446744073709551615ull}}}.get<UNetConfig>(); },
                           {"\"attention_resolutions\"", "integers"});
  try {
    json{{"model_channels", std::string(1000, 'x') + "\n"}}.get<UNetConfig>();
    ADD_FAILURE() << "a string accepted as model_channels";
  } catch (const InputError& error) {
    EXPECT_LT(std::string(error.what()).size(), 200u) << error.what();
    EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << error.what();
  }
  // Fractional multipliers are fine when they give whole channel counts (guided-diffusion's
  // 512x512 models start at 0.5); 2.01 x 64 channels is not whole.
  const json fractional = {{"channel_mult", {0.5, 2.5}}};
  EXPECT_EQ(fractional.get<UNetConfig>().level_channels(1), 160);
  EXPECT_EQ(json(fractional.get<UNetConfig>()).at("channel_mult"), json::parse("[0.5, 2.5]"));
  const json whole = {{"channel_mult", {1.0, 2.0}}};
  EXPECT_EQ(json(whole.get<UNetConfig>()).at("channel_mult").dump(), "[1,2]");  // written as before
  expect_error<InputError>(
      [] {
        json{{"channel_mult", {1, 2.01}}}.get<UNetConfig>();
      },
      {"\"channel_mult\"", "whole"});
  expect_error<InputError>([] { json{{"channel_mult", {1, "2"}}}.get<UNetConfig>(); }, {"\"channel_mult\""});
  expect_error<InputError>([] { json{{"learn_sigma", 1}}.get<UNetConfig>(); }, {"\"learn_sigma\""});
  expect_error<InputError>(
      [] {
        json{{"time_input", "seconds"}}.get<UNetConfig>();
      },
      {"\"time_input\"", "seconds"});

  const auto classifier = tiny_classifier("adaptive");
  EXPECT_EQ(json(json(classifier).get<ClassifierConfig>()), json(classifier));
  MlpConfig mlp;
  mlp.num_classes = 3;
  mlp.time.kind = TimeKind::log_snr;
  EXPECT_EQ(json(json(mlp).get<MlpConfig>()), json(mlp));
  expect_error<InputError>([] { json{{"hidden", 3}}.get<MlpConfig>(); }, {"mlp config", "hidden"});
}

// ---- classifiers ---------------------------------------------------------------------

// grad_x of sum(logits * w) against a central difference along a random direction, in float64.
void expect_gradient_matches_finite_difference(Classifier& classifier, const torch::Tensor& x,
                                               const torch::Tensor& time) {
  const auto weights = torch::randn({x.size(0), classifier.num_classes()}, torch::kFloat64);
  const auto objective = [&](const torch::Tensor& input) {
    return (classifier.logits(input, time) * weights).sum();
  };
  auto input = x.clone().requires_grad_(true);
  const auto gradient = torch::autograd::grad({objective(input)}, {input})[0];
  EXPECT_GT(gradient.abs().max().item<double>(), 0.0);
  const auto direction = torch::randn_like(x);
  const double h = 1e-5;
  torch::NoGradGuard no_grad;
  const double numeric =
      (objective(x + h * direction) - objective(x - h * direction)).item<double>() / (2 * h);
  const double analytic = (gradient * direction).sum().item<double>();
  // float64 central difference, h = 1e-5: truncation h^2 |f'''| / 6 ~ 1e-10 |f'''|, rounding
  // ~ (forward's error ~1e-14) / h ~ 1e-9; 1e-6 relative leaves ~1000x for a smooth network.
  EXPECT_NEAR(analytic, numeric, 1e-6 * (1.0 + std::abs(numeric)));
}

TEST(Classifiers, LogitsHaveOneRowPerSampleAndAreDifferentiableInX) {
  torch::manual_seed(5);
  for (const std::string pool : {"attention", "adaptive"}) {
    SCOPED_TRACE(pool);
    UNetClassifier classifier{EncoderUNetModel(tiny_classifier(pool))};
    randomize(*classifier.network());  // the adaptive head starts at zero
    classifier.network()->to(torch::kFloat64);
    EXPECT_EQ(classifier.num_classes(), 5);
    const auto x = torch::randn({3, 1, 16, 16}, torch::kFloat64);
    const auto time = steps({0, 100, 999});
    EXPECT_EQ(classifier.logits(x, time).sizes(), (std::vector<int64_t>{3, 5}));
    expect_gradient_matches_finite_difference(classifier, x, time);
  }
  UNetClassifier attention{EncoderUNetModel(tiny_classifier("attention"))};
  expect_error<InputError>(
      [&] {
        attention.logits(torch::zeros({1, 1, 8, 8}), steps({0}));
      },
      {"x", "16x16"});

  MlpConfig config;
  config.num_classes = 4;
  config.hidden_channels = 32;
  MlpClassifier mlp{MlpClassifierNet(config)};
  mlp.network()->to(torch::kFloat64);
  const auto points = torch::randn({6, 2}, torch::kFloat64);
  const auto time = steps({0, 1, 2, 3, 4, 5});
  EXPECT_EQ(mlp.logits(points, time).sizes(), (std::vector<int64_t>{6, 4}));
  expect_gradient_matches_finite_difference(mlp, points, time);
}

// ---- MLP denoiser --------------------------------------------------------------------

TEST(Mlp, DenoiserShapesZeroInitAndNullClass) {
  torch::manual_seed(6);
  MlpConfig config;
  config.hidden_channels = 32;
  config.num_blocks = 2;
  config.num_classes = 3;
  MlpDenoiser denoiser{MlpDenoiserNet(config)};
  const auto x = torch::randn({5, 2});
  const auto t = steps({0, 10, 100, 500, 999});
  EXPECT_TRUE(torch::equal(denoiser.predict(x, t, torch::Tensor()).eps, torch::zeros({5, 2})));
  randomize(*denoiser.network());
  const auto null = denoiser.predict(x, t, torch::Tensor()).eps;
  EXPECT_EQ(null.sizes(), x.sizes());
  EXPECT_TRUE(torch::equal(denoiser.predict(x, t, steps({3, 3, 3, 3, 3})).eps, null));
  EXPECT_FALSE(torch::allclose(denoiser.predict(x, t, steps({0, 1, 2, 0, 1})).eps, null));  // O(0.1) apart
  EXPECT_EQ(denoiser.network()->named_parameters()["label_emb.weight"].size(0), 4);
  EXPECT_FALSE(denoiser.learns_variance());
  // float64 input comes back as float64, equal to the float32 computation (the network runs
  // in float32; float32 -> float64 -> float32 is exact).
  const auto doubled = denoiser.predict(x.to(torch::kFloat64), t, torch::Tensor()).eps;
  EXPECT_EQ(doubled.scalar_type(), torch::kFloat64);
  EXPECT_TRUE(torch::equal(doubled.to(torch::kFloat32), null));
  expect_error<InputError>(
      [&] {
        denoiser.predict(torch::zeros({5, 3}), t, torch::Tensor());
      },
      {"x", "[N, 2]"});
  config.num_classes = 0;
  config.data_dim = 0;
  expect_error<InputError>([&] { MlpDenoiserNet{config}; },
                           {"mlp_denoiser config", "\"data_dim\""});
}

}  // namespace
