// bf16 autocast: every convolution and matrix product accumulates in float32 on any CPU
// (core/bf16_kernels), and sampling with it (guidiff sample --bf16) on the committed
// Fashion-MNIST models gives float32 outputs, really computed in bf16, within the distance
// that bf16's precision allows.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "guidiff/core/autocast.hpp"
#include "guidiff/core/bf16_kernels.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/data/idx.hpp"
#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/models/bf16_models.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/sampling/generate.hpp"
#include "support/precision_bounds.hpp"

namespace guidiff {
namespace {

using testing::bf16_network_relative_error;
using testing::bf16_unit_roundoff;
using testing::float32_unit_roundoff;

const std::string models_dir = std::string(GUIDIFF_SOURCE_DIR) + "/models/fashion-mnist/";

double mean_abs(const torch::Tensor& t) { return t.abs().mean().item<double>(); }

// ---- Float32 accumulation, operation by operation ---------------------------------------

// The largest error that a bf16 kernel with float32 accumulation may make on a reduction of
// K products of positive operands, relative to float32 arithmetic on the same (bf16-rounded)
// operands: the result's own rounding to bf16 (2^-8), plus float32 accumulation error in each
// of the two sums (at most K * 2^-24 of the sum of |terms|, which is the value itself when
// every term is positive). A kernel that rounds its partial sums to bf16 loses up to
// K * 2^-8 instead, and a few percent in practice.
double float32_accumulation_bound(int64_t reduction_length) {
  return bf16_unit_roundoff + 2.0 * static_cast<double>(reduction_length) * float32_unit_roundoff;
}

// max |result - reference| / |reference|, elementwise.
double worst_relative_error(const torch::Tensor& result, const torch::Tensor& reference) {
  return ((result.to(torch::kFloat32) - reference).abs() / reference.abs()).max().item<double>();
}

torch::Tensor positive(torch::IntArrayRef shape, torch::Generator& generator) {
  return torch::rand(shape, generator) + 0.25;
}

torch::Tensor rounded_to_bf16(const torch::Tensor& t) { return t.to(torch::kBFloat16).to(torch::kFloat32); }

struct ReductionCase {
  std::string name;
  int64_t reduction_length;  // K: products summed into each output element
  std::vector<std::vector<int64_t>> operand_shapes;
  std::function<torch::Tensor(const std::vector<torch::Tensor>&)> run;
};

std::vector<ReductionCase> reduction_cases() {
  using Operands = std::vector<torch::Tensor>;
  return {
      {"conv1d", 96 * 5, {{2, 96, 20}, {4, 96, 5}}, [](const Operands& o) { return torch::conv1d(o[0], o[1]); }},
      {"conv2d", 128 * 9, {{2, 128, 8, 8}, {4, 128, 3, 3}, {4}},
       [](const Operands& o) { return torch::conv2d(o[0], o[1], o[2], 1, 1); }},
      {"conv_transpose2d", 64 * 4, {{2, 64, 6, 6}, {64, 3, 4, 4}},
       [](const Operands& o) { return torch::conv_transpose2d(o[0], o[1], {}, 2); }},
      {"mm", 2048, {{8, 2048}, {2048, 6}}, [](const Operands& o) { return torch::mm(o[0], o[1]); }},
      {"addmm", 2048, {{6}, {8, 2048}, {2048, 6}}, [](const Operands& o) { return torch::addmm(o[0], o[1], o[2]); }},
      {"bmm", 1024, {{3, 5, 1024}, {3, 1024, 4}}, [](const Operands& o) { return torch::bmm(o[0], o[1]); }},
      {"baddbmm", 1024, {{3, 5, 4}, {3, 5, 1024}, {3, 1024, 4}},
       [](const Operands& o) { return torch::baddbmm(o[0], o[1], o[2]); }},
      {"linear", 1536, {{7, 1536}, {5, 1536}, {5}}, [](const Operands& o) { return torch::linear(o[0], o[1], o[2]); }},
      {"matmul", 1024, {{2, 3, 1024}, {1024, 5}}, [](const Operands& o) { return torch::matmul(o[0], o[1]); }},
  };
}

TEST(Bf16Kernels, AutocastConvolutionsAndMatrixProductsAccumulateInFloat32) {
  auto generator = at::detail::createCPUGenerator(11);
  for (const auto& test : reduction_cases()) {
    SCOPED_TRACE(test.name);
    std::vector<torch::Tensor> operands, rounded;
    for (const auto& shape : test.operand_shapes) {
      operands.push_back(positive(shape, generator));
      rounded.push_back(rounded_to_bf16(operands.back()));
    }
    torch::Tensor result;
    {
      AutocastScope autocast(true, torch::kCPU);
      result = test.run(operands);
    }
    if (result.scalar_type() == torch::kFloat32) {
      // This libtorch's autocast keeps the operation in float32 (conv_transpose2d in 1.13):
      // then it must be untouched.
      EXPECT_TRUE(torch::equal(result, test.run(operands)));
      continue;
    }
    ASSERT_EQ(result.scalar_type(), torch::kBFloat16);
    const auto reference = test.run(rounded);
    // +1 term for a bias, which is one more positive addend.
    EXPECT_LE(worst_relative_error(result, reference), float32_accumulation_bound(test.reduction_length + 1));
  }
}

TEST(Bf16Kernels, TheBoundRejectsAKernelThatAccumulatesInBf16) {
  // The instrument above can fail: the same dot products with every partial sum rounded to
  // bf16 (what libtorch 1.13's fallback kernels do on CPUs without AVX-512) miss the bound
  // many times over, while float32 accumulation of the same bf16 operands meets it.
  auto generator = at::detail::createCPUGenerator(12);
  const int64_t length = 1024;
  const auto a = rounded_to_bf16(positive({16, length}, generator));
  const auto b = rounded_to_bf16(positive({length}, generator));
  auto bf16_sum = torch::zeros({16});
  for (int64_t k = 0; k < length; ++k) bf16_sum = rounded_to_bf16(bf16_sum + a.select(1, k) * b[k]);
  const auto reference = torch::mv(a, b);
  const double bound = float32_accumulation_bound(length);
  EXPECT_GT(worst_relative_error(bf16_sum, reference), 4.0 * bound);
  EXPECT_LE(worst_relative_error(rounded_to_bf16(reference), reference), bound);
}

TEST(Bf16Kernels, TheReportSaysWhatLibtorchsOwnKernelsDoOnThisCpu) {
  // guidiff's start-up probe against the test's own measurement on other shapes, outside
  // autocast (libtorch's kernels as they are, which guidiff leaves untouched there).
  auto generator = at::detail::createCPUGenerator(13);
  const auto a = positive({4, 3000}, generator).to(torch::kBFloat16);
  const auto b = positive({3000, 3}, generator).to(torch::kBFloat16);
  // A kernel may throw: on an AVX-512 CPU with ONEDNN_MAX_CPU_ISA below it, libtorch still
  // sends bf16 convolutions to oneDNN, which refuses them. The report must say so.
  const auto measure = [](auto&& call, bool& fails) {
    try {
      return call();
    } catch (const std::exception&) {
      fails = true;
      return false;
    }
  };
  bool mm_fails = false, conv_fails = false;
  const bool mm_float32 = measure(
      [&] {
        return worst_relative_error(torch::mm(a, b), torch::mm(a.to(torch::kFloat32), b.to(torch::kFloat32))) <=
               float32_accumulation_bound(3000);
      },
      mm_fails);
  const auto x = positive({1, 300, 6, 6}, generator).to(torch::kBFloat16);
  const auto w = positive({2, 300, 3, 3}, generator).to(torch::kBFloat16);
  const bool conv_float32 = measure(
      [&] {
        return worst_relative_error(torch::conv2d(x, w), torch::conv2d(x.to(torch::kFloat32), w.to(torch::kFloat32))) <=
               float32_accumulation_bound(2700);
      },
      conv_fails);
  const auto& report = cpu_bf16_kernel_report();
  EXPECT_EQ(report.matrix_product_accumulates_in_float32, mm_float32);
  EXPECT_EQ(report.convolution_accumulates_in_float32, conv_float32);
  EXPECT_EQ(report.matrix_product_fails, mm_fails);
  EXPECT_EQ(report.convolution_fails, conv_fails);
}

// ---- The committed models under bf16 ---------------------------------------------------

// Relative error of the bf16 UNet's eps against float32, mean |difference| / mean |eps|, at
// times across the schedule.
// With Bf16Weights::stored the bf16 network is a second copy of the model (the conversion is
// in place), `unet` staying the float32 reference.
double bf16_eps_relative_error(const Model& unet,
                               Bf16Weights weights = Bf16Weights::cast_per_call) {
  torch::manual_seed(0);
  const auto lowered_copy =
      weights == Bf16Weights::stored ? load_model(models_dir + "cfg_unet") : unet;
  Bf16Denoiser lower(lowered_copy.denoiser, weights);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({8, 1, 28, 28});
  const auto t = torch::tensor({10, 100, 200, 400, 500, 700, 900, 999}, torch::kLong);
  const auto y = torch::arange(8, torch::kLong);
  const auto reference = unet.denoiser->predict(x, t, y).eps;
  const auto eps = lower.predict(x, t, y).eps;
  EXPECT_EQ(eps.scalar_type(), torch::kFloat32);
  return mean_abs(eps - reference) / mean_abs(reference);
}

TEST(Bf16, DenoiserGivesFloat32EpsWithinBf16sPrecisionOfTheFloat32Model) {
  const auto unet = load_model(models_dir + "cfg_unet");
  // Both weight modes: stored runs channels-last on the CPU (its own convolutions' order and
  // the GroupNorm kernels of norm_kernels.hpp).
  for (const auto weights : {Bf16Weights::cast_per_call, Bf16Weights::stored}) {
    SCOPED_TRACE(weights == Bf16Weights::stored ? "stored" : "cast per call");
    const double error = bf16_eps_relative_error(unet, weights);
    EXPECT_GT(error, 0.0);  // bf16 really ran
    // u sqrt(D) (support/precision_bounds.hpp): 3.1% for this UNet's 64 rounded layers. It is
    // an upper estimate (each layer's error carried at gain 1); measured 0.28% on an AVX2 CPU.
    // It cannot tell float32 from bf16 accumulation (1.6% here with libtorch 1.13's AVX2
    // kernels); Bf16Kernels.* above do, operation by operation.
    EXPECT_LT(error, bf16_network_relative_error(*unet.module));
  }
}

// The float32 denoiser with every eps multiplied by (1 + relative * xi), xi ~ N(0, 1) drawn
// once per output element and kept for every step: an error of a given size that, like
// bf16's rounding of the same network, repeats from step to step instead of averaging out.
class CoherentlyPerturbedDenoiser : public Denoiser {
 public:
  CoherentlyPerturbedDenoiser(std::shared_ptr<Denoiser> base, double relative) : base_(std::move(base)), relative_(relative) {}
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override {
    auto output = base_->predict(x_t, time, y);
    if (!xi_.defined()) {
      auto generator = at::detail::createCPUGenerator(7);
      xi_ = torch::randn(output.eps.sizes(), generator);
    }
    output.eps = output.eps * (1.0 + relative_ * xi_);
    return output;
  }
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }

 private:
  std::shared_ptr<Denoiser> base_;
  double relative_;
  torch::Tensor xi_;
};

TEST(Bf16, GuidedDdimSamplesLandWhereAnEpsErrorOfBf16sSizeWouldPutThem) {
  // The sampler and the guidance arithmetic stay float32 under --bf16, so the samples may
  // move only as far as the networks' bf16 error carries them: as far as the float32 model
  // with a coherent eps error of the same relative size (measured above) does. Measured on
  // an AVX2 CPU: 0.008 against 0.016 for that bound; 0.059 with bf16 accumulation.
  const auto unet = load_model(models_dir + "cfg_unet");
  GenerationConfig config;
  config.sampler = SamplerKind::ddim;
  config.steps = 10;
  config.cfg_scale = 3.0;
  config.clip_x0 = true;
  config.sample_shape = {1, 28, 28};
  config.num_samples = 8;
  const auto labels = torch::arange(8, torch::kLong);
  const auto reference = generate(unet.denoiser, nullptr, config, labels, {}).samples;
  const auto samples = generate(std::make_shared<Bf16Denoiser>(unet.denoiser), nullptr, config, labels, {}).samples;
  const double eps_error = bf16_eps_relative_error(unet);
  const auto perturbed =
      generate(std::make_shared<CoherentlyPerturbedDenoiser>(unet.denoiser, eps_error), nullptr, config, labels, {})
          .samples;
  const double distance = mean_abs(samples - reference);
  EXPECT_GT(distance, 0.0);
  EXPECT_LT(distance, mean_abs(perturbed - reference));
}

TEST(Bf16, ClassifierGradientStaysWithinBf16sPrecisionOfFloat32) {
  if (!std::filesystem::exists(std::string(kFashionMnistDirectory) + "/t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
  }
  torch::manual_seed(1);
  const auto model = load_model(models_dir + "classifier"),
             stored_model = load_model(models_dir + "classifier");
  Bf16Classifier lower(model.classifier);
  // Stored weights (a second copy: the conversion is in place) run channels-last on the CPU.
  Bf16Classifier stored(stored_model.classifier, Bf16Weights::stored);
  // The inputs guidance meets: test images noised to step t, each asked for its own class.
  const Dataset test_images = load_fashion_mnist("test");
  const auto x0 = test_images.images.slice(0, 0, 8);
  const auto y = test_images.labels.slice(0, 0, 8);
  const auto noise = torch::randn({8, 1, 28, 28});
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 1000);
  // grad log p(y | x) = grad f_y - sum_k p_k grad f_k over the logits f. Each logit's gradient
  // passes the D rounded layers twice, forward and backward (the backward's convolutions run in
  // bf16 too), so it carries an error of u sqrt(2 D) of its own norm: 3.2% for this
  // classifier's 33 layers. The difference carries at most that of |grad f_y| +
  // sum_k p_k |grad f_k|, which is far larger than the difference itself where the classifier
  // is sure (p_y near 1: the two terms nearly cancel; relative to the gradient itself the error
  // reached 7% at t = 50). Measured at most 0.4% of that scale with AVX-512, AVX2 and SSE4.1
  // kernels; bf16 accumulation once gave 14% of the gradient.
  const double bound = bf16_unit_roundoff * std::sqrt(2.0 * testing::bf16_rounded_layers(*model.module));
  const auto error_scale = [&](const torch::Tensor& x, const torch::Tensor& t) {
    std::vector<torch::Tensor> norms;
    torch::Tensor probabilities;
    for (int64_t k = 0; k < 10; ++k) {
      const torch::Tensor input = x.detach().clone().requires_grad_(true);
      const torch::Tensor logits = model.classifier->logits(input, t);
      if (k == 0) probabilities = torch::softmax(logits.detach(), 1);
      logits.select(1, k).sum().backward();
      norms.push_back(input.grad().flatten(1).norm(2, 1));
    }
    const torch::Tensor by_class = torch::stack(norms, 1);  // [8, 10]
    return by_class.gather(1, y.unsqueeze(1)).squeeze(1) + (probabilities * by_class).sum(1);
  };
  for (const int64_t step : {50, 300, 700}) {
    SCOPED_TRACE(step);
    const auto t = torch::full({8}, step, torch::kLong);
    const auto x = q_sample(schedule, x0, t, noise);
    const auto reference = class_log_prob_gradient(*model.classifier, x, t, y).flatten(1);
    for (Bf16Classifier* bf16 : {&lower, &stored}) {
      SCOPED_TRACE(bf16 == &stored ? "stored" : "cast per call");
      const auto gradient = class_log_prob_gradient(*bf16, x, t, y).flatten(1);
      EXPECT_EQ(gradient.scalar_type(), torch::kFloat32);
      EXPECT_FALSE(torch::equal(gradient, reference));
      const auto relative = (gradient - reference).norm(2, 1) / error_scale(x, t);
      EXPECT_LT(relative.max().item<double>(), bound) << relative;
    }
  }
}

// Bf16Weights::stored keeps the weights autocast lowers in bf16 instead of casting them at
// every call: autocast's very values, the 4-D ones channels-last on the CPU. (How close its
// eps and guidance gradients stay to float32's: DenoiserGives... and ClassifierGradient...
// above.) Two copies of each model: one kept float32, one stored.
TEST(Bf16, StoredBf16WeightsAreAutocastsValuesChannelsLast) {
  const auto per_call_unet = load_model(models_dir + "cfg_unet"),
             stored_unet = load_model(models_dir + "cfg_unet");
  const auto per_call_classifier = load_model(models_dir + "classifier"),
             stored_classifier = load_model(models_dir + "classifier");
  const auto parameters = [](const Model& model) {
    int64_t bf16 = 0, float32 = 0;
    for (const auto& parameter : model.module->parameters()) {
      (parameter.scalar_type() == torch::kBFloat16 ? bf16 : float32) += parameter.numel();
    }
    return std::make_pair(bf16, float32);
  };
  const auto float32_unet = parameters(stored_unet);
  Bf16Denoiser stored(stored_unet.denoiser, Bf16Weights::stored);
  Bf16Classifier stored_guide(stored_classifier.classifier, Bf16Weights::stored);
  // The convolutions' and linear layers' weights are bf16 now; GroupNorm's and the class
  // embedding's stay float32; nothing is lost or added.
  const auto kept = parameters(stored_unet);
  EXPECT_EQ(float32_unet.first, 0);
  EXPECT_GT(kept.first, 0);
  EXPECT_GT(kept.second, 0);
  EXPECT_EQ(kept.first + kept.second, float32_unet.second);
  EXPECT_EQ(parameters(per_call_unet).first, 0);  // cast_per_call leaves the network float32
  for (const auto& [float32_model, stored_model] :
       {std::make_pair(&per_call_unet, &stored_unet),
        std::make_pair(&per_call_classifier, &stored_classifier)}) {
    const auto originals = float32_model->module->named_parameters();
    int64_t channels_last = 0;
    for (const auto& item : stored_model->module->named_parameters()) {
      const auto& value = item.value();
      if (value.scalar_type() != torch::kBFloat16) continue;
      EXPECT_TRUE(torch::equal(value, originals[item.key()].to(torch::kBFloat16))) << item.key();
      if (value.dim() == 4) {
        EXPECT_TRUE(value.is_contiguous(torch::MemoryFormat::ChannelsLast)) << item.key();
        ++channels_last;
      }
    }
    EXPECT_GT(channels_last, 0);
  }

  torch::manual_seed(3);
  const auto x = torch::randn({4, 1, 28, 28});
  const auto t = torch::tensor({10, 300, 600, 999}, torch::kLong);
  const auto y = torch::tensor({0, 3, 7, 9}, torch::kLong);
  {
    torch::NoGradGuard no_grad;
    const auto eps = stored.predict(x, t, y).eps;
    EXPECT_EQ(eps.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(eps.is_contiguous());  // the sampler's layout, whatever the network ran in
  }
  const auto gradient = class_log_prob_gradient(stored_guide, x, t, y);
  EXPECT_GT(gradient.abs().max().item<double>(), 0.0);
  // The stored network is for bf16 autocast only: a float32 forward fails, never computes.
  torch::NoGradGuard no_grad;
  EXPECT_ANY_THROW(stored_unet.denoiser->predict(x, t, y));
  // A model with no libtorch network behind it cannot store its weights (TorchScript models
  // keep autocast's casts per call); asking is an error, not a silent float32 run.
  const auto no_network = std::make_shared<CoherentlyPerturbedDenoiser>(per_call_unet.denoiser, 0.0);
  EXPECT_EQ(no_network->network_module(), nullptr);
  EXPECT_THROW(Bf16Denoiser(no_network, Bf16Weights::stored), InputError);
  EXPECT_NO_THROW(Bf16Denoiser(no_network, Bf16Weights::cast_per_call));
}

}  // namespace
}  // namespace guidiff
