// Micro-benchmarks (Google Benchmark) of the work that dominates sampling: one UNet forward
// in GFLOP/s next to the machine's measured peak, the cost of a guided step against an
// unguided one, images/s against batch size and image size, and each sampler's own work per
// step beyond the model call (to set against unet_forward at batch 64).
//
//   build/bench/micro_benchmarks [--threads T] [--device cpu|cuda] [Google Benchmark flags]
//
// bench/side_by_side.py runs it with --benchmark_format=json and turns the counters into
// docs/performance.md. Counters: "flops" is the FLOPs of one iteration (counted once, outside
// the timed loop, by guidiff::FlopCounter), "GFLOP/s" the achieved rate, "images/s" the
// throughput. Every benchmark uses real (wall-clock) time, since the work is multi-threaded.
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "guidiff/core/allocator.hpp"
#include "guidiff/core/autocast.hpp"
#include "guidiff/core/flop_counter.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/models/attention.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/models/unet_blocks.hpp"
#include "guidiff/models/winograd_conv.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"

namespace {

using guidiff::AutocastScope;
using guidiff::FlopCounter;

torch::Device bench_device = torch::kCPU;
const std::string models_dir = std::string(GUIDIFF_SOURCE_DIR) + "/models/fashion-mnist/";

void synchronize() {
  if (bench_device.is_cuda()) torch::cuda::synchronize();
}

// Numerical precision / layout variants of the same work.
enum class Variant { fp32, bf16_autocast, fp32_channels_last };
const char* variant_name(Variant variant) {
  switch (variant) {
    case Variant::fp32: return "fp32";
    case Variant::bf16_autocast: return "bf16";
    case Variant::fp32_channels_last: return "fp32_channels_last";
  }
  return "?";
}

// FLOPs of one call of `work`, counted in a run of its own (the counter's hooks cost time).
template <typename Work>
int64_t flops_of(Work&& work) {
  FlopCounter counter;
  work();
  synchronize();
  return counter.flops();
}

// `flops` comes from flops_of(work), whose call is also the warm-up: oneDNN's primitives and
// the heap are set up before the timed loop.
template <typename Work>
void time_loop(benchmark::State& state, int64_t flops, int64_t images, Work&& work) {
  for (auto _ : state) {
    work();
    synchronize();
  }
  state.counters["flops"] = static_cast<double>(flops);
  state.counters["GFLOP/s"] =
      benchmark::Counter(static_cast<double>(flops) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (images > 0) {
    state.counters["images/s"] = benchmark::Counter(static_cast<double>(images), benchmark::Counter::kIsIterationInvariantRate);
  }
}

// ---- the machine's peak: a large matrix product and a large 3x3 convolution -------------

void BM_PeakMatmul(benchmark::State& state, torch::Dtype dtype) {
  c10::InferenceMode inference;
  const int64_t n = state.range(0);
  const auto options = torch::dtype(dtype).device(bench_device);
  const auto a = torch::randn({n, n}, options), b = torch::randn({n, n}, options);
  const auto work = [&] { benchmark::DoNotOptimize(torch::mm(a, b)); };
  time_loop(state, flops_of(work), 0, work);
}

void BM_PeakConv3x3(benchmark::State& state, torch::Dtype dtype) {
  c10::InferenceMode inference;
  const int64_t batch = state.range(0), channels = state.range(1), size = state.range(2);
  const auto options = torch::dtype(dtype).device(bench_device);
  const auto x = torch::randn({batch, channels, size, size}, options);
  const auto weight = torch::randn({channels, channels, 3, 3}, options) * 0.05;
  const auto work = [&] { benchmark::DoNotOptimize(torch::conv2d(x, weight, {}, 1, 1)); };
  time_loop(state, flops_of(work), 0, work);
}

// ---- one 3x3 convolution, direct (libtorch) against Winograd F(4x4, 3x3) ----------------

// The layers of guided-diffusion's 64x64 (batch 4) and 256x256 (batch 1) models, and of the
// default Fashion-MNIST UNet (batch 64). "GFLOP/s" counts the direct convolution's FLOPs for
// both, so it compares speeds (Winograd runs 4x fewer multiplications in its products).
// "winograd" runs its matrix products where guidiff does by default (oneDNN's sgemm where
// libtorch exports it), "winograd_blas" on libtorch's BLAS (torch::bmm), "direct_bf16" is the
// direct convolution of bf16 input and filter (what --bf16's autocast runs).
enum class ConvPath { Direct, Winograd, WinogradBlas, DirectBf16 };
void BM_Conv3x3(benchmark::State& state, ConvPath path) {
  c10::InferenceMode inference;
  const auto backend = guidiff::winograd_products_backend();
  if (path == ConvPath::WinogradBlas) guidiff::set_winograd_products_backend(guidiff::WinogradProducts::Blas);
  const int64_t batch = state.range(0), in = state.range(1), out = state.range(2), size = state.range(3);
  const auto x = torch::randn({batch, in, size, size}), bias = torch::randn({out});
  const auto weight = torch::randn({out, in, 3, 3}) / std::sqrt(9.0 * static_cast<double>(in));
  const auto x_bf16 = x.to(torch::kBFloat16), weight_bf16 = weight.to(torch::kBFloat16), bias_bf16 = bias.to(torch::kBFloat16);
  const auto work = [&] {
    switch (path) {
      case ConvPath::Direct: benchmark::DoNotOptimize(torch::conv2d(x, weight, bias, 1, 1)); break;
      case ConvPath::Winograd:
      case ConvPath::WinogradBlas: benchmark::DoNotOptimize(guidiff::winograd_conv3x3(x, weight, bias)); break;
      case ConvPath::DirectBf16: benchmark::DoNotOptimize(torch::conv2d(x_bf16, weight_bf16, bias_bf16, 1, 1)); break;
    }
  };
  work();  // warm-up: oneDNN's primitive and the heap
  time_loop(state, 2 * batch * size * size * in * out * 9, 0, work);
  guidiff::set_winograd_products_backend(backend);
}

// ---- softmax attention, in one piece against blocks of query rows -------------------------

// The 64x64 model's attention at 32x32 (batch 4, 6 heads of 64 channels, 1024 tokens) and the
// 256x256 model's at 32x32 (batch 1, 8 heads), forward and, with "backward", the input
// gradients too (the classifier guidance gradient's pass). "GFLOP/s" counts the two products' FLOPs (and their
// four gradient products).
void BM_Attention(benchmark::State& state, bool blocked, bool backward) {
  const int64_t heads = state.range(0), channels = state.range(1), tokens = state.range(2);
  std::vector<torch::Tensor> qkv;
  for (int i = 0; i < 3; ++i) qkv.push_back(torch::randn({heads, channels, tokens}).requires_grad_(backward));
  const int64_t saved = guidiff::attention_block_bytes();
  guidiff::set_attention_block_bytes(blocked ? saved : int64_t{1} << 40);
  const auto work = [&] {
    if (!backward) {
      torch::NoGradGuard no_grad;
      benchmark::DoNotOptimize(guidiff::attention(qkv[0], qkv[1], qkv[2]));
      return;
    }
    const auto out = guidiff::attention(qkv[0], qkv[1], qkv[2]);
    benchmark::DoNotOptimize(torch::autograd::grad({out.sum()}, qkv));
  };
  work();
  time_loop(state, (backward ? 6 : 2) * 2 * heads * channels * tokens * tokens, 0, work);
  guidiff::set_attention_block_bytes(saved);
}

// ---- a ResBlock's GroupNorm, scale-shift and SiLU: one pass against separate operations -----

// silu(GroupNorm(x) * (1 + scale) + shift) at the ADM models' activation sizes (batch,
// channels, image; 32 groups), in float32 and in bf16 (what --bf16 hands the norm: bf16
// activations next to float32 norm weights). "separate" runs the operations one by one, as
// guidiff did before stop 38; "one_pass" is Float32GroupNormImpl::forward_silu. For float32
// forward_silu keeps the separate operations, so its two float32 rows time the same work: their
// gap is the run's noise. "norm_silu_gradient" rows take the forward with gradients recorded and
// the input's gradient, as the classifier's guidance gradient does (for channels-last bf16,
// forward_silu's own backward since stop 40).
void BM_NormSilu(benchmark::State& state, bool one_pass, torch::Dtype dtype,
                 torch::MemoryFormat format, bool gradient) {
  std::optional<c10::InferenceMode> inference;
  if (!gradient) inference.emplace();
  const int64_t batch = state.range(0), channels = state.range(1), size = state.range(2);
  auto norm = guidiff::make_group_norm(32, channels);
  const auto x = (torch::randn({batch, channels, size, size}) * 2 + 1)
                     .to(dtype)
                     .contiguous(format)
                     .requires_grad_(gradient);
  const auto scale = torch::randn({batch, channels, 1, 1}).to(dtype),
             shift = torch::randn({batch, channels, 1, 1}).to(dtype);
  const auto output_gradient = torch::randn(x.sizes()).to(dtype).contiguous(format);
  const auto work = [&] {
    const auto out = one_pass ? norm->forward_silu(x, scale, shift)
                              : torch::silu(norm(x) * (1 + scale) + shift);
    if (gradient) {
      benchmark::DoNotOptimize(torch::autograd::grad({out}, {x}, {output_gradient}));
    } else {
      benchmark::DoNotOptimize(out);
    }
  };
  work();
  time_loop(state, 0, 0, work);
  // The gradient reads x and its gradient and writes the input's gradient too.
  state.counters["GB/s in+out"] = benchmark::Counter(
      static_cast<double>((gradient ? 5 : 2) * x.numel() * x.element_size()) * 1e-9,
      benchmark::Counter::kIsIterationInvariantRate);
}

// ---- the default UNet --------------------------------------------------------------------

// The committed Fashion-MNIST UNet at 28x28; other sizes build the same config with the
// attention kept at a quarter of the image size (random weights: the cost does not depend on them).
guidiff::Model unet_model(int64_t image_size) {
  guidiff::Model model;
  if (image_size == 28) {
    model = guidiff::load_model(models_dir + "cfg_unet", bench_device);
  } else {
    auto config = guidiff::load_model(models_dir + "cfg_unet").config;
    config["image_size"] = image_size;
    config["attention_resolutions"] = std::vector<int64_t>{image_size / 4};
    model = guidiff::build_model(config);
    model.module->to(bench_device);
    model.module->eval();
  }
  return model;
}

void to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) {
    if (parameter.dim() == 4) parameter.set_data(parameter.contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

void BM_UNetForward(benchmark::State& state, Variant variant) {
  const int64_t batch = state.range(0), image_size = state.range(1);
  auto model = unet_model(image_size);
  if (variant == Variant::fp32_channels_last) to_channels_last(*model.module);
  c10::InferenceMode inference;
  auto x = torch::randn({batch, 1, image_size, image_size}, torch::device(bench_device));
  if (variant == Variant::fp32_channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  const auto time = torch::full({batch}, 500, torch::dtype(torch::kLong).device(bench_device));
  const auto null_class = torch::full({batch}, model.denoiser->num_classes(), time.options());
  const auto work = [&] {
    AutocastScope autocast(variant == Variant::bf16_autocast, bench_device);
    benchmark::DoNotOptimize(model.denoiser->predict(x, time, null_class).eps);
  };
  time_loop(state, flops_of(work), batch, work);
}

// ---- one sampling step with and without guidance (the model calls of a DDIM step) --------

enum class Step { unguided, cfg, classifier, classifier_gradient };

void BM_GuidedStep(benchmark::State& state, Step step, Variant variant) {
  const int64_t batch = state.range(0);
  const auto unet = guidiff::load_model(models_dir + "cfg_unet", bench_device);
  const auto unconditional = std::make_shared<guidiff::NullClassDenoiser>(unet.denoiser);
  std::shared_ptr<guidiff::Classifier> classifier;
  if (step == Step::classifier || step == Step::classifier_gradient) {
    classifier = guidiff::load_model(models_dir + "classifier", bench_device).classifier;
  }
  // The default models' training schedule: linear betas, T = 1000 (recipes/, GenerationConfig).
  const auto levels = guidiff::NoiseLevelMap::discrete(guidiff::make_schedule(guidiff::BetaScheduleKind::linear, 1000));
  std::shared_ptr<guidiff::Denoiser> denoiser;
  switch (step) {
    case Step::unguided: denoiser = unconditional; break;
    case Step::cfg: denoiser = std::make_shared<guidiff::ClassifierFreeGuidance>(unet.denoiser, 3.0); break;
    case Step::classifier:
      denoiser = std::make_shared<guidiff::ClassifierGuidedDenoiser>(unconditional, classifier, levels, 1.0);
      break;
    case Step::classifier_gradient: break;  // the gradient alone, below
  }
  c10::InferenceMode inference;  // as the samplers run; the classifier gradient turns autograd back on
  const auto x = torch::randn({batch, 1, 28, 28}, torch::device(bench_device));
  const auto time = torch::full({batch}, 500, torch::dtype(torch::kLong).device(bench_device));
  const auto labels = torch::arange(batch, time.options()) % 10;
  const auto work = [&] {
    AutocastScope autocast(variant == Variant::bf16_autocast, bench_device);
    if (step == Step::classifier_gradient) {
      benchmark::DoNotOptimize(guidiff::class_log_prob_gradient(*classifier, x, time, labels));
    } else {
      benchmark::DoNotOptimize(denoiser->predict(x, time, labels).eps);
    }
  };
  time_loop(state, flops_of(work), batch, work);
}

// ---- each sampler's per-step overhead (everything but the model) -----------------------

// A model that costs (almost) nothing: eps = 0. Timing a run with it times the sampler.
class ZeroDenoiser : public guidiff::Denoiser {
 public:
  guidiff::DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor&, const torch::Tensor&) override {
    return {torch::zeros_like(x_t), torch::Tensor(), torch::Tensor()};
  }
  guidiff::TimeKind time_kind() const override { return kind; }
  int64_t num_classes() const override { return 0; }
  guidiff::TimeKind kind = guidiff::TimeKind::discrete_timestep;
};

// One generate() of 64 images 1x28x28 over `steps` steps (DDIM's and the sigma samplers'
// float64 state, clipping, noise streams, trajectory bookkeeping off). "per_step" is the
// time per step, including a 1/steps share of drawing x_T.
void BM_SamplerOverhead(benchmark::State& state, guidiff::SamplerKind sampler) {
  const int64_t steps = state.range(0), batch = 64;
  auto model = std::make_shared<ZeroDenoiser>();
  if (sampler == guidiff::SamplerKind::cfg_continuous) model->kind = guidiff::TimeKind::log_snr;
  guidiff::GenerationConfig config;
  config.sampler = sampler;
  config.steps = steps;
  config.sample_shape = {1, 28, 28};
  config.num_samples = batch;
  config.batch_size = batch;
  config.clip_x0 = true;
  const auto work = [&] { benchmark::DoNotOptimize(guidiff::generate(model, nullptr, config, {}, {}).samples); };
  work();  // warm-up: the heap
  for (auto _ : state) work();
  state.counters["per_step"] = benchmark::Counter(static_cast<double>(steps),
                                                  benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

void register_benchmarks() {
  const auto configure = [](benchmark::internal::Benchmark* b) {
    b->UseRealTime()->Unit(benchmark::kMillisecond);
  };
  for (const auto& [name, dtype] : std::vector<std::pair<const char*, torch::Dtype>>{{"fp32", torch::kFloat32},
                                                                                      {"bf16", torch::kBFloat16}}) {
    configure(benchmark::RegisterBenchmark((std::string("peak/matmul/") + name).c_str(), BM_PeakMatmul, dtype)
                  ->ArgNames({"n"})
                  ->Arg(2048));
    configure(benchmark::RegisterBenchmark((std::string("peak/conv3x3/") + name).c_str(), BM_PeakConv3x3, dtype)
                  ->ArgNames({"batch", "channels", "size"})
                  ->Args({32, 128, 28}));
  }
  for (const auto& [name, path] : std::vector<std::pair<const char*, ConvPath>>{
           {"conv3x3/direct", ConvPath::Direct}, {"conv3x3/winograd", ConvPath::Winograd}, {"conv3x3/winograd_blas", ConvPath::WinogradBlas},
           {"conv3x3/direct_bf16", ConvPath::DirectBf16}}) {
    auto* b = benchmark::RegisterBenchmark(name, BM_Conv3x3, path)
                  ->ArgNames({"batch", "in", "out", "size"});
    for (const std::vector<int64_t>& layer : std::vector<std::vector<int64_t>>{
             {4, 192, 192, 64}, {4, 384, 384, 32}, {1, 576, 576, 16}, {4, 576, 576, 16}, {4, 768, 768, 8}, {1, 256, 256, 256}, {1, 512, 512, 64},
             {1, 1536, 512, 32}, {1, 1024, 1024, 16}, {64, 64, 64, 28}, {64, 128, 128, 14}}) {
      b->Args(layer);
    }
    configure(b);
  }
  for (const auto& [name, dtype] : std::vector<std::pair<const char*, torch::Dtype>>{
           {"fp32", torch::kFloat32}, {"bf16", torch::kBFloat16}}) {
    // channels-last: the layout of bf16 sampling (store_lowered_weights_in_bf16)
    for (const auto& [layout, format] : std::vector<std::pair<const char*, torch::MemoryFormat>>{
             {"", torch::MemoryFormat::Contiguous},
             {"/channels_last", torch::MemoryFormat::ChannelsLast}}) {
      for (const bool one_pass : {false, true}) {
        auto* b =
            benchmark::RegisterBenchmark(
                (std::string("norm_silu/") + (one_pass ? "one_pass/" : "separate/") + name + layout)
                    .c_str(),
                BM_NormSilu, one_pass, dtype, format, /*gradient=*/false)
                ->ArgNames({"batch", "channels", "size"});
        for (const std::vector<int64_t>& layer : std::vector<std::vector<int64_t>>{{1, 256, 256},
                                                                                   {1, 512, 256},
                                                                                   {1, 256, 128},
                                                                                   {1, 512, 64},
                                                                                   {1, 512, 32},
                                                                                   {4, 192, 64},
                                                                                   {4, 384, 32},
                                                                                   {1, 1024, 16},
                                                                                   {4, 768, 8}}) {
          b->Args(layer);
        }
        configure(b);
      }
    }
  }
  // The classifier's guidance gradient under --bf16 (the 64x64 classifier's activations at
  // batch 4, and the 256x256 one's at batch 1).
  for (const bool one_pass : {false, true}) {
    auto* b = benchmark::RegisterBenchmark(
                  (std::string("norm_silu_gradient/") + (one_pass ? "one_pass" : "separate") +
                   "/bf16/channels_last")
                      .c_str(),
                  BM_NormSilu, one_pass, torch::kBFloat16, torch::MemoryFormat::ChannelsLast,
                  /*gradient=*/true)
                  ->ArgNames({"batch", "channels", "size"});
    for (const std::vector<int64_t>& layer : std::vector<std::vector<int64_t>>{
             {4, 128, 64}, {4, 256, 32}, {4, 512, 8}, {1, 256, 128}, {1, 512, 64}}) {
      b->Args(layer);
    }
    configure(b);
  }
  for (const bool backward : {false, true}) {
    for (const bool blocked : {false, true}) {
      const std::string name = std::string("attention/") + (blocked ? "blocked" : "one_piece") + (backward ? "/backward" : "");
      auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_Attention, blocked, backward)
                    ->ArgNames({"heads", "channels", "tokens"});
      b->Args({24, 64, 1024});
      b->Args({8, 64, 1024});
      configure(b);
    }
  }
  for (const Variant variant : {Variant::fp32, Variant::bf16_autocast, Variant::fp32_channels_last}) {
    auto* b = benchmark::RegisterBenchmark((std::string("unet_forward/") + variant_name(variant)).c_str(),
                                           BM_UNetForward, variant)
                  ->ArgNames({"batch", "size"});
    if (variant == Variant::fp32) {
      for (const int64_t batch : {1, 4, 16, 64, 128, 256}) b->Args({batch, 28});
      for (const int64_t size : {32, 64}) b->Args({64, size});
    } else {
      b->Args({64, 28});
    }
    configure(b);
  }
  const std::vector<std::pair<const char*, Step>> steps = {{"unguided", Step::unguided},
                                                           {"cfg_w3", Step::cfg},
                                                           {"classifier_s1", Step::classifier},
                                                           {"classifier_gradient", Step::classifier_gradient}};
  for (const auto& [name, step] : steps) {
    configure(benchmark::RegisterBenchmark((std::string("step/") + name + "/fp32").c_str(), BM_GuidedStep, step,
                                           Variant::fp32)
                  ->ArgNames({"batch"})
                  ->Arg(64));
  }
  for (const guidiff::SamplerKind sampler : guidiff::all_samplers()) {
    configure(benchmark::RegisterBenchmark(("sampler_overhead/" + guidiff::to_string(sampler)).c_str(),
                                           BM_SamplerOverhead, sampler)
                  ->ArgNames({"steps"})
                  ->Arg(50));
  }
  for (const auto& [name, step] : {steps[2], steps[3]}) {
    configure(benchmark::RegisterBenchmark((std::string("step/") + name + "/bf16").c_str(), BM_GuidedStep, step,
                                           Variant::bf16_autocast)
                  ->ArgNames({"batch"})
                  ->Arg(64));
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Our flags first; the rest go to Google Benchmark.
  int threads = 0;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (std::strcmp(argv[i], "--device") == 0 && i + 1 < argc) {
      bench_device = torch::Device(argv[++i]);
    } else {
      rest.push_back(argv[i]);
    }
  }
  try {
    if (bench_device.is_cuda() && !torch::cuda::is_available()) {
      std::fprintf(stderr, "micro_benchmarks: --device cuda but this libtorch sees no CUDA device\n");
      return 2;
    }
    guidiff::configure_allocator();
    const int in_effect = guidiff::configure_threads(threads);
    benchmark::AddCustomContext("guidiff_threads", std::to_string(in_effect));
    benchmark::AddCustomContext("guidiff_device", bench_device.str());
    int rest_count = static_cast<int>(rest.size());
    benchmark::Initialize(&rest_count, rest.data());
    if (benchmark::ReportUnrecognizedArguments(rest_count, rest.data())) return 2;
    register_benchmarks();
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "micro_benchmarks: %s\n", error.what());
    return 1;
  }
  return 0;
}
