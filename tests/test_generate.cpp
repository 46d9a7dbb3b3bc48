// generate(): per-sample noise independent of batching and sharding, the schedule and
// guidance wiring (checked against the samplers called by hand), progress and trajectory
// bookkeeping, every rejected request, and the --class parser.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <unistd.h>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/sampling/generate.hpp"

namespace guidiff {
namespace {

constexpr int64_t kT = 1000;

const DiscreteSchedule& linear_schedule() {
  static const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, kT);
  return schedule;
}

std::shared_ptr<Denoiser> discrete_model(bool conditional) {
  return std::make_shared<MixtureDenoiser>(GaussianMixture::demo(), NoiseLevelMap::discrete(linear_schedule()),
                                           conditional);
}
std::shared_ptr<Denoiser> continuous_model(bool conditional) {
  return std::make_shared<MixtureDenoiser>(GaussianMixture::demo(), NoiseLevelMap::log_snr(), conditional);
}
std::shared_ptr<Classifier> discrete_classifier() {
  return std::make_shared<MixtureClassifier>(GaussianMixture::demo(), NoiseLevelMap::discrete(linear_schedule()));
}

GenerationConfig small_config(SamplerKind sampler, int64_t num_samples, int64_t steps) {
  GenerationConfig config;
  config.sampler = sampler;
  config.sample_shape = {2};
  config.num_samples = num_samples;
  config.steps = steps;
  config.seed = 1234;
  return config;
}

torch::Tensor cycled_labels(int64_t n) { return torch::arange(n, torch::kLong).remainder(4); }

// x_T as generate draws it: stream initial_stream of each global sample index.
torch::Tensor seed_noise(const GenerationConfig& config) {
  const auto indices = torch::arange(config.first_sample_index,
                                     config.first_sample_index + config.num_samples, torch::kLong);
  return SampleNoise(config.seed).normal(indices, SampleNoise::initial_stream, config.sample_shape);
}

SampleBatch whole_batch(const GenerationConfig& config, const torch::Tensor& labels) {
  SampleBatch batch;
  batch.sample_indices = torch::arange(config.first_sample_index,
                                       config.first_sample_index + config.num_samples, torch::kLong);
  batch.x_T = seed_noise(config);
  batch.labels = labels;
  return batch;
}

DiscreteSchedule respaced(const std::string& spec) {
  return respace(linear_schedule(), parse_respacing(spec, kT));
}

// Runs `call`, expecting an exception of type E whose message contains `fragment`.
template <typename E>
void expect_error(const std::function<void()>& call, const std::string& fragment) {
  try {
    call();
    ADD_FAILURE() << "expected an error mentioning '" << fragment << "'";
  } catch (const E& error) {
    EXPECT_NE(std::string(error.what()).find(fragment), std::string::npos)
        << "message '" << error.what() << "' does not mention '" << fragment << "'";
  } catch (const std::exception& error) {
    ADD_FAILURE() << "wrong exception type: " << error.what();
  }
}

// ---- Names ----------------------------------------------------------------------------

TEST(ParseSampler, RoundTripsEveryNameAndRejectsOthers) {
  ASSERT_EQ(all_samplers().size(), 11u);
  for (const SamplerKind kind : all_samplers()) EXPECT_EQ(parse_sampler(to_string(kind)), kind);
  EXPECT_EQ(to_string(SamplerKind::cfg_continuous), "cfg-continuous");
  EXPECT_EQ(to_string(SamplerKind::euler_ancestral), "euler-a");
  EXPECT_EQ(to_string(SamplerKind::dpmpp_2m_sde), "dpmpp-2m-sde");
  expect_error<InputError>([] { parse_sampler("lms"); }, "dpmpp-2m");
}

// ---- Reproducibility across batching and sharding -------------------------------------

TEST(Generate, SameSeedGivesTheSameSamplesForAnyBatchSize) {
  // DDPM, so every step's noise matters; 70 samples = one batch of 64 plus a partial one.
  GenerationConfig config = small_config(SamplerKind::ddpm, 70, 20);
  std::vector<torch::Tensor> results;
  for (const int64_t batch_size : {1, 7, 64}) {
    config.batch_size = batch_size;
    results.push_back(generate(discrete_model(false), nullptr, config, {}, {}).samples);
  }
  EXPECT_EQ(results[0].sizes(), torch::IntArrayRef({70, 2}));
  // Exact by design: the mixture model and the sampler work row by row (elementwise ops, and
  // reductions within a row, which ATen's vectorised maps do alike for full and partial
  // vectors), and each row's noise depends only on its index. No BLAS or conv is involved.
  EXPECT_TRUE(torch::equal(results[0], results[1]));
  EXPECT_TRUE(torch::equal(results[0], results[2]));
  config.seed = 4321;
  EXPECT_FALSE(torch::equal(results[0], generate(discrete_model(false), nullptr, config, {}, {}).samples));
}

TEST(Generate, AShardReproducesTheRowsOfTheFullRun) {
  GenerationConfig config = small_config(SamplerKind::ddpm, 30, 20);
  config.batch_size = 8;
  const auto labels = cycled_labels(30);
  const torch::Tensor full = generate(discrete_model(true), nullptr, config, labels, {}).samples;
  config.first_sample_index = 12;
  config.num_samples = 18;
  config.batch_size = 5;
  const torch::Tensor shard =
      generate(discrete_model(true), nullptr, config, labels.slice(0, 12, 30), {}).samples;
  EXPECT_TRUE(torch::equal(shard, full.slice(0, 12, 30)));  // row by row, as above: exact
}

TEST(Generate, GivenInitialNoiseReplacesTheSeedsDraw) {
  GenerationConfig config = small_config(SamplerKind::ddim, 16, 10);
  const torch::Tensor drawn = generate(discrete_model(false), nullptr, config, {}, {}).samples;
  EXPECT_TRUE(torch::equal(drawn, generate(discrete_model(false), nullptr, config, {}, seed_noise(config)).samples));
  EXPECT_FALSE(torch::equal(drawn, generate(discrete_model(false), nullptr, config, {},
                                            seed_noise(config) * 0.5).samples));
}

// ---- Schedule and guidance wiring ------------------------------------------------------

// The wiring tests below compare generate() with the sampler it should call on the same
// batch: the same operations on the same inputs, so bitwise equal.
TEST(Generate, StepsRespaceAsGuidedDiffusionDoes) {
  const auto model = discrete_model(false);
  // DDIM with --steps 50: "ddim50" (stride 20 from 0).
  GenerationConfig config = small_config(SamplerKind::ddim, 16, 50);
  const SampleBatch batch = whole_batch(config, {});
  EXPECT_TRUE(torch::equal(generate(model, nullptr, config, {}, {}).samples,
                           sample_ddim(*model, respaced("ddim50"), batch, SampleNoise(config.seed), DdimOptions{}).samples));
  // DDIM with --steps 300: no integer stride gives 300 steps, so the section rule "300".
  config.steps = 300;
  EXPECT_TRUE(torch::equal(generate(model, nullptr, config, {}, {}).samples,
                           sample_ddim(*model, respaced("300"), batch, SampleNoise(config.seed), DdimOptions{}).samples));
  // DDPM with --steps 50: the section rule; an explicit respacing string is used as given.
  config = small_config(SamplerKind::ddpm, 16, 50);
  EXPECT_TRUE(torch::equal(generate(model, nullptr, config, {}, {}).samples,
                           sample_ddpm(*model, respaced("50"), batch, SampleNoise(config.seed), DdpmOptions{}).samples));
  config.steps = 0;
  config.respacing = "10,20";
  config.fixed_variance = VarianceKind::fixed_large;
  DdpmOptions large;
  large.fixed_variance = VarianceKind::fixed_large;
  EXPECT_TRUE(torch::equal(generate(model, nullptr, config, {}, {}).samples,
                           sample_ddpm(*model, respaced("10,20"), batch, SampleNoise(config.seed), large).samples));
}

TEST(Generate, ClassifierScaleUsesAlgorithm1ForDdpm) {
  GenerationConfig config = small_config(SamplerKind::ddpm, 16, 25);
  config.classifier_scale = 3.0;
  const auto labels = cycled_labels(16);
  const auto model = discrete_model(false);
  const auto classifier = discrete_classifier();
  const ClassifierMeanShift shift(classifier, 3.0);
  DdpmOptions options;
  options.mean_shift = &shift;
  EXPECT_TRUE(torch::equal(
      generate(model, classifier, config, labels, {}).samples,
      sample_ddpm(*model, respaced("25"), whole_batch(config, labels), SampleNoise(config.seed), options).samples));
}

TEST(Generate, ClassifierScaleOneWithTheExactClassifierEqualsTheConditionalModel) {
  // Algorithm 2 at s = 1 turns the unconditional eps into the conditional one, provided the
  // classifier's noise level is read from the unrespaced schedule (50 respaced steps here).
  const auto labels = cycled_labels(64);
  GenerationConfig guided = small_config(SamplerKind::ddim, 64, 50);
  guided.classifier_scale = 1.0;
  const torch::Tensor a = generate(discrete_model(false), discrete_classifier(), guided, labels, {}).samples;
  const torch::Tensor b = generate(discrete_model(true), nullptr, small_config(SamplerKind::ddim, 64, 50), labels, {}).samples;
  // Only float32 rounding separates the guided eps from the conditional one: its extra
  // subtraction and the classifier's float32 logits and log_softmax (kernel-dependent), ~1e-7
  // per step. DDIM carries that through 50 steps (<= ~5e-6) and the flow expands it near the
  // boundaries between the demo's lobes (~5 sd apart, p_T / p_0 up to ~50): <= ~3e-4.
  EXPECT_TRUE(torch::allclose(a, b, 1e-3, 1e-3)) << (a - b).abs().max();

  GenerationConfig continuous = small_config(SamplerKind::cfg_continuous, 64, 32);
  continuous.classifier_scale = 1.0;
  const auto log_snr_classifier = std::make_shared<MixtureClassifier>(GaussianMixture::demo(), NoiseLevelMap::log_snr());
  const torch::Tensor c = generate(continuous_model(false), log_snr_classifier, continuous, labels, {}).samples;
  const torch::Tensor d = generate(continuous_model(true), nullptr, small_config(SamplerKind::cfg_continuous, 64, 32), labels, {}).samples;
  // Here the first step, at lambda = -20, multiplies the eps difference (~1.5 ulp of |eps|
  // < 4, 3.6e-7) by alpha' / alpha = 8430 (see test_samplers' CfgContinuous step test): 3e-3
  // in z; the later steps map z to x through the posterior mean, whose slope alpha' Var[x0 |
  // z] / sigma'^2 <= 0.38 * 0.4 / 0.85 = 0.18 shrinks it to <= ~5e-4.
  EXPECT_TRUE(torch::allclose(c, d, 1e-3, 1e-3)) << (c - d).abs().max();
}

TEST(Generate, CfgScaleWrapsTheModelInClassifierFreeGuidance) {
  GenerationConfig config = small_config(SamplerKind::cfg_continuous, 16, 20);
  config.cfg_scale = 2.0;
  config.variance_exponent = 0.5;
  const auto labels = cycled_labels(16);
  const auto model = continuous_model(true);
  ClassifierFreeGuidance guided(model, 2.0);
  CfgContinuousOptions options;
  options.steps = 20;
  options.variance_exponent = 0.5;
  EXPECT_TRUE(torch::equal(generate(model, nullptr, config, labels, {}).samples,
                           sample_cfg_continuous(guided, whole_batch(config, labels), SampleNoise(config.seed), options).samples));
}

TEST(Generate, ConditionalModelWithoutLabelsSamplesTheNullClass) {
  const GenerationConfig config = small_config(SamplerKind::ddpm, 16, 20);
  const GenerationResult conditional = generate(discrete_model(true), nullptr, config, {}, {});
  EXPECT_FALSE(conditional.labels.defined());
  // The null class masks nothing, so the conditional model runs the unconditional model's
  // float64 operations: bitwise equal (1e-6 is slack).
  EXPECT_TRUE(torch::allclose(conditional.samples,
                              generate(discrete_model(false), nullptr, config, {}, {}).samples, 1e-6, 1e-6));
}

// ---- Progress and trajectory -----------------------------------------------------------

TEST(Generate, ProgressCountsEveryStepOfEveryBatch) {
  GenerationConfig config = small_config(SamplerKind::ddim, 10, 8);
  config.batch_size = 4;  // batches of 4, 4, 2
  std::vector<std::pair<int64_t, int64_t>> calls;
  generate(discrete_model(false), nullptr, config, {}, {},
           [&calls](int64_t done, int64_t total) { calls.emplace_back(done, total); });
  ASSERT_EQ(calls.size(), 24u);
  for (size_t k = 0; k < calls.size(); ++k) {
    EXPECT_EQ(calls[k].first, int64_t(k) + 1);
    EXPECT_EQ(calls[k].second, 24);
  }
}

TEST(Generate, TrajectoryStartsAtXTAndEndsAtTheSamples) {
  GenerationConfig config = small_config(SamplerKind::ddpm, 10, 6);
  config.batch_size = 3;
  config.keep_trajectory = true;
  const GenerationResult result = generate(discrete_model(false), nullptr, config, {}, {});
  ASSERT_EQ(result.trajectory.size(), 7u);
  for (const auto& x : result.trajectory) EXPECT_EQ(x.sizes(), torch::IntArrayRef({10, 2}));
  EXPECT_TRUE(torch::equal(result.trajectory.front(), seed_noise(config)));
  EXPECT_TRUE(torch::equal(result.trajectory.back(), result.samples));
  config.keep_trajectory = false;
  EXPECT_TRUE(generate(discrete_model(false), nullptr, config, {}, {}).trajectory.empty());
}

// ---- Rejected requests -------------------------------------------------------------------

TEST(Generate, RejectsInconsistentRequests) {
  const auto uncond = discrete_model(false);
  const auto cond = discrete_model(true);
  const auto classifier = discrete_classifier();
  const auto labels = cycled_labels(8);
  const GenerationConfig base = small_config(SamplerKind::ddim, 8, 10);
  auto with = [&base](const std::function<void(GenerationConfig&)>& change) {
    GenerationConfig config = base;
    change(config);
    return config;
  };

  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.steps = 1001; }), {}, {}); }, "--steps");
  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.steps = -3; }), {}, {}); }, "--steps");
  expect_error<InputError>([&] {
    generate(uncond, nullptr, with([](auto& c) { c.steps = 0; c.respacing = "2000"; }), {}, {});
  }, "respacing");
  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.respacing = "ddim25"; }), {}, {}); },
                           "--respacing");
  expect_error<InputError>([&] { generate(cond, nullptr, base, torch::full({8}, 4, torch::kLong), {}); }, "class 4");
  expect_error<InputError>([&] { generate(cond, nullptr, base, torch::full({8}, -1, torch::kLong), {}); }, "class -1");
  expect_error<InputError>([&] { generate(cond, nullptr, base, torch::zeros({5}, torch::kLong), {}); }, "labels");
  expect_error<ModelError>([&] { generate(uncond, nullptr, with([](auto& c) { c.cfg_scale = 1.5; }), labels, {}); },
                           "--cfg-scale");
  expect_error<InputError>([&] { generate(cond, nullptr, with([](auto& c) { c.cfg_scale = 1.5; }), {}, {}); },
                           "--cfg-scale");
  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.classifier_scale = 2; }), labels, {}); },
                           "classifier");
  expect_error<InputError>([&] { generate(uncond, classifier, with([](auto& c) { c.classifier_scale = 2; }), {}, {}); },
                           "--classifier-scale");
  expect_error<InputError>([&] { generate(uncond, nullptr, base, labels, {}); }, "unconditional");
  expect_error<ModelError>([&] { generate(continuous_model(false), nullptr, base, {}, {}); }, "log-SNR");
  expect_error<ModelError>([&] {
    generate(uncond, nullptr, with([](auto& c) { c.sampler = SamplerKind::cfg_continuous; }), {}, {});
  }, "discrete");
  expect_error<ModelError>([&] {
    auto other = std::make_shared<MixtureClassifier>(
        GaussianMixture::demo(), NoiseLevelMap::log_snr());
    generate(uncond, other, with([](auto& c) { c.classifier_scale = 1; }), labels, {});
  }, "classifier");
  expect_error<InputError>([&] { generate(uncond, nullptr, base, {}, torch::zeros({8, 3})); }, "x_T");
  expect_error<InputError>([&] { generate(uncond, nullptr, base, {}, torch::zeros({7, 2})); }, "x_T");
  expect_error<NumericError>([&] {
    auto noise = torch::zeros({8, 2});
    noise[3][1] = std::numeric_limits<float>::infinity();
    generate(uncond, nullptr, base, {}, noise);
  }, "x_T");
  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.batch_size = 0; }), {}, {}); },
                           "--batch-size");
  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.num_samples = 0; }), {}, {}); },
                           "--num-samples");
  expect_error<InputError>([&] { generate(uncond, nullptr, with([](auto& c) { c.sample_shape = {}; }), {}, {}); },
                           "sample shape");
  expect_error<InputError>([&] {
    generate(uncond, nullptr, with([](auto& c) { c.sampler = SamplerKind::ddpm; c.eta = 1.0; }), {}, {});
  }, "--eta");
  expect_error<InputError>([&] {
    generate(continuous_model(false), nullptr,
             with([](auto& c) { c.sampler = SamplerKind::cfg_continuous; c.steps = 0; c.respacing = "10"; }), {}, {});
  }, "--respacing");
  expect_error<InputError>([&] {
    generate(continuous_model(false), nullptr,
             with([](auto& c) { c.sampler = SamplerKind::cfg_continuous; c.variance_exponent = -0.1; }), {}, {});
  }, "variance exponent");
  expect_error<InputError>([&] {  // checked even where the sampler does not use it
    generate(uncond, nullptr, with([](auto& c) { c.variance_exponent = 2.0; }), {}, {});
  }, "variance exponent");
  expect_error<InputError>([&] { generate(nullptr, nullptr, base, {}, {}); }, "model");
}

// ---- --class -------------------------------------------------------------------------------

TEST(LabelsFromSpec, ParsesAnIndexOrACycledList) {
  EXPECT_FALSE(labels_from_spec("", 5, 4).defined());
  EXPECT_TRUE(torch::equal(labels_from_spec("2", 3, 4), torch::full({3}, 2, torch::kLong)));
  EXPECT_TRUE(torch::equal(labels_from_spec("0, 3,1", 7, 4), torch::tensor({0, 3, 1, 0, 3, 1, 0}, torch::kLong)));
  expect_error<InputError>([] { labels_from_spec("4", 3, 4); }, "class 4");
  expect_error<InputError>([] { labels_from_spec("1,-1", 3, 4); }, "class -1");
  expect_error<InputError>([] { labels_from_spec("cat", 3, 4); }, "cat");
  expect_error<InputError>([] { labels_from_spec("1,,2", 3, 4); }, "--class");
  expect_error<InputError>([] { labels_from_spec("1.5", 3, 4); }, "1.5");
  expect_error<InputError>([] { labels_from_spec("1", 3, 0); }, "no classes");
}

TEST(LabelsFromSpec, ReadsPerSampleLabelsFromNpy) {
  const std::string path = ::testing::TempDir() + "guidiff_labels_" + std::to_string(::getpid()) + ".npy";
  write_npy(path, torch::tensor({3, 0, 2}, torch::kInt));
  EXPECT_TRUE(torch::equal(labels_from_spec(path, 3, 4), torch::tensor({3, 0, 2}, torch::kLong)));
  expect_error<InputError>([&] { labels_from_spec(path, 4, 4); }, path);   // wrong length
  expect_error<InputError>([&] { labels_from_spec(path, 3, 3); }, "class 3");
  write_npy(path, torch::tensor({1.0, 2.0, 0.0}, torch::kFloat));
  expect_error<InputError>([&] { labels_from_spec(path, 3, 4); }, path);   // not integer
  std::remove(path.c_str());
  expect_error<FileError>([&] { labels_from_spec(path, 3, 4); }, path);    // missing
}

}  // namespace
}  // namespace guidiff
