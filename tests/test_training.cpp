// Training: the loss formulas against closed forms, small networks that must learn, exact
// resumption, and the failures a run must survive (NaN, Ctrl-C, bad resume files).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/global_generators.hpp"
#include "guidiff/data/mixture_dataset.hpp"
#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/training/checkpoint.hpp"
#include "guidiff/training/losses.hpp"
#include "guidiff/training/trainer.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;

namespace {

class TrainingTest : public guidiff::testing::TempDirTest {
 protected:
};

// A freshly initialised network: initial weights come from the global generator, seeded
// here so that every run in a test starts from the same weights.
Model fresh_model(const nlohmann::json& config) {
  torch::manual_seed(0);
  return build_model(config);
}

nlohmann::json mlp_denoiser_config() {
  return {{"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", 64}, {"num_blocks", 2}};
}

nlohmann::json mlp_classifier_config() {
  return {{"kind", "mlp_classifier"}, {"data_dim", 2}, {"hidden_channels", 64}, {"num_blocks", 2}, {"num_classes", 4}};
}

TrainingOptions quick_options(const std::string& out_dir, int64_t steps) {
  TrainingOptions options;
  options.out_dir = out_dir;
  options.steps = steps;
  options.batch_size = 32;
  options.lr = 1e-3;
  options.ema_rate = 0.9;
  options.log_every = 5;
  options.save_every = 0;
  options.seed = 3;
  options.timesteps = 100;
  return options;
}

double mean(const std::vector<double>& values, size_t begin, size_t end) {
  double sum = 0.0;
  for (size_t i = begin; i < end; ++i) sum += values[i];
  return sum / static_cast<double>(end - begin);
}

bool same_weights(const Model& a, const Model& b) {
  const NamedTensors left = model_state(*a.module);
  const NamedTensors right = model_state(*b.module);
  if (left.size() != right.size()) return false;
  for (size_t i = 0; i < left.size(); ++i) {
    if (left[i].first != right[i].first || !torch::equal(left[i].second, right[i].second)) return false;
  }
  return true;
}

std::string file_bytes(const std::string& file) { return read_file_bytes(file); }

}  // namespace

TEST(GlobalGenerators, SeedTheCpuGeneratorAsTorchManualSeedDoes) {
  // The CPU stream after seed_global_generators(s) is the one after torch::manual_seed(s), so
  // the initial weights and dropout of earlier runs are unchanged; another seed gives another.
  torch::manual_seed(11);
  const torch::Tensor expected = torch::rand({64});
  torch::manual_seed(99);  // move away first
  (void)torch::rand({3});
  seed_global_generators(11, torch::kCPU);
  EXPECT_TRUE(torch::equal(torch::rand({64}), expected));
  seed_global_generators(12, torch::kCPU);
  EXPECT_FALSE(torch::equal(torch::rand({64}), expected));
}

TEST(Losses, NormalKlIsTheClosedForm) {
  // KL(N(0, 1) || N(1, 4)) = 0.5 (log 4 - 1 + 1/4 + 1/4).
  const torch::Tensor kl = normal_kl(torch::zeros({1}), torch::zeros({1}), torch::ones({1}),
                                     torch::full({1}, std::log(4.0)));
  // float32: log 4 rounded (6e-8), two exps of -1.39 (an ulp of 0.25 each) and four adds of
  // values <= 1.4: ~1.5e-7 after the halving; 1e-6.
  EXPECT_NEAR(kl.item<double>(), 0.5 * (std::log(4.0) - 0.5), 1e-6);
  // Identical Gaussians: zero (-1 + L - L + exp(0) + 0 is exact in float32).
  EXPECT_NEAR(normal_kl(torch::full({1}, 0.3), torch::full({1}, -1.0), torch::full({1}, 0.3), torch::full({1}, -1.0))
                  .item<double>(),
              0.0, 1e-7);
}

TEST(Losses, DiscretisedLikelihoodSumsToOneOverTheLevels) {
  // The 256 bins of the decoder partition the real line, so their probabilities sum to 1.
  const torch::Tensor levels = torch::linspace(-1.0, 1.0, 256, torch::kFloat64);
  const torch::Tensor log_p = discretized_gaussian_log_likelihood(levels, torch::full({256}, 0.1, torch::kFloat64),
                                                                  torch::full({256}, std::log(0.3), torch::kFloat64));
  // float64: each bin is a difference of two erfs (an ulp, 1.1e-16, each) and adjacent edges
  // x_i + 1/255, x_{i+1} - 1/255 differ by an ulp of linspace times a density <= 1.4: 256 bins
  // sum to 1 within ~1e-13. (Every bin here is >= 1e-6, far above the 1e-12 floor.)
  EXPECT_NEAR(log_p.exp().sum().item<double>(), 1.0, 1e-12);
}

TEST(Losses, LabelDropoutReplacesAtTheRequestedRate) {
  const torch::Tensor labels = torch::randint(0, 10, {20000}, torch::kInt64);
  const torch::Tensor uniform = draw_step(1, 0, torch::arange(20000, torch::kInt64), {1}).dropout;
  const torch::Tensor dropped = drop_labels(labels, 0.3, 10, uniform);
  const torch::Tensor is_null = dropped.eq(10);
  // Statistical: 20000 coins, standard error sqrt(0.3 * 0.7 / 20000) = 0.0032; 0.015 is 4.6.
  EXPECT_NEAR(is_null.to(torch::kFloat64).mean().item<double>(), 0.3, 0.015);
  // The labels that were kept are unchanged.
  EXPECT_TRUE(torch::equal(dropped.masked_select(is_null.logical_not()), labels.masked_select(is_null.logical_not())));
  EXPECT_TRUE(torch::equal(drop_labels(labels, 0.0, 10, uniform), labels));
  EXPECT_TRUE(drop_labels(labels, 1.0, 10, uniform).eq(10).all().item<bool>());
  EXPECT_THROW(drop_labels(labels, 1.5, 10, uniform), InputError);
  EXPECT_THROW(drop_labels(labels, 0.3, 10, uniform.slice(0, 0, 5)), InputError);
}

TEST(Losses, StepDrawsDependOnSeedStepAndSlotOnly) {
  // The draws of slots 0..7 are those of slots 0..3 and 4..7 drawn apart: a global batch
  // split across processes draws exactly what one process draws.
  const StepDraws whole = draw_step(3, 5, torch::arange(8, torch::kInt64), {1, 2, 2});
  const StepDraws low = draw_step(3, 5, torch::arange(4, torch::kInt64), {1, 2, 2});
  const StepDraws high = draw_step(3, 5, torch::arange(4, 8, torch::kInt64), {1, 2, 2});
  EXPECT_TRUE(torch::equal(whole.noise, torch::cat({low.noise, high.noise})));
  EXPECT_TRUE(torch::equal(whole.time, torch::cat({low.time, high.time})));
  EXPECT_TRUE(torch::equal(whole.dropout, torch::cat({low.dropout, high.dropout})));
  EXPECT_EQ(whole.noise.sizes(), torch::IntArrayRef({8, 1, 2, 2}));
  // Another step or seed draws anew.
  EXPECT_FALSE(torch::equal(whole.noise, draw_step(3, 6, torch::arange(8, torch::kInt64), {1, 2, 2}).noise));
  EXPECT_FALSE(torch::equal(whole.time, draw_step(4, 5, torch::arange(8, torch::kInt64), {1, 2, 2}).time));
  // t = floor(u T) is uniform on {0, ..., T - 1}: 40000 draws over T = 4, each count
  // Binomial(40000, 1/4) with standard deviation 87; 500 is 5.8 of them.
  const torch::Tensor t =
      timesteps_from_uniform(draw_step(0, 0, torch::arange(40000, torch::kInt64), {1}).time, 4);
  EXPECT_EQ(t.min().item<int64_t>(), 0);
  EXPECT_EQ(t.max().item<int64_t>(), 3);
  for (int64_t k = 0; k < 4; ++k) EXPECT_NEAR(t.eq(k).sum().item<double>(), 10000.0, 500.0) << "t = " << k;
  EXPECT_TRUE(torch::equal(timesteps_from_uniform(torch::tensor({0.0, 0.2499, 0.25, 0.99999}, torch::kFloat64), 4),
                           torch::tensor({0, 0, 1, 3}, torch::kInt64)));
}

TEST(Losses, TimestepPowerSkewsTowardsSmallTAsItsCdfSays) {
  // t = floor(u^p T) has P(t < k) = (k / T)^(1/p). With p = 2, T = 100 and 40000 draws, the
  // fraction below 10 is sqrt(0.1) = 0.316 (standard deviation 0.0023), three times the
  // uniform 0.1, and below 70 it is sqrt(0.7) = 0.837 (0.0018); 0.012 is over 5 of them.
  const torch::Tensor u = draw_step(0, 0, torch::arange(40000, torch::kInt64), {1}).time;
  const torch::Tensor t = timesteps_from_uniform(u, 100, 2.0);
  EXPECT_GE(t.min().item<int64_t>(), 0);
  EXPECT_LE(t.max().item<int64_t>(), 99);
  EXPECT_NEAR(t.lt(10).to(torch::kFloat64).mean().item<double>(), std::sqrt(0.1), 0.012);
  EXPECT_NEAR(t.lt(70).to(torch::kFloat64).mean().item<double>(), std::sqrt(0.7), 0.012);
  // Each draw exactly: floor(100 u^2).
  EXPECT_TRUE(torch::equal(timesteps_from_uniform(torch::tensor({0.0, 0.35, 0.5, 0.99999}, torch::kFloat64), 100, 2.0),
                           torch::tensor({0, 12, 25, 99}, torch::kInt64)));
  // p = 1 is the uniform draw itself.
  EXPECT_TRUE(torch::equal(timesteps_from_uniform(u, 100, 1.0), timesteps_from_uniform(u, 100)));
}

TEST(Losses, EpsLossIsTheMseOfTheModelAtTheDrawnNoise) {
  // A model that predicts zero has loss E[eps^2] = 1 whatever t is.
  const Model model = fresh_model(mlp_denoiser_config());  // zero-initialised output layer
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 100);
  const StepDraws draws = draw_step(0, 0, torch::arange(4096, torch::kInt64), {2});
  const torch::Tensor x0 = torch::randn({4096, 2});
  const DiffusionLoss loss = discrete_diffusion_loss(*model.denoiser, schedule, DiffusionObjective::eps, x0,
                                                     torch::zeros({4096}, torch::kInt64), 0.0, 0.0, draws);
  // Statistical: the mean of 8192 eps^2 (variance 2) has standard error 0.016; 0.05 is 3.2 of
  // them (fixed seeds). The eps objective's loss is the mse tensor itself: equal.
  EXPECT_NEAR(loss.loss.item<double>(), 1.0, 0.05);
  EXPECT_NEAR(loss.mse.item<double>(), loss.loss.item<double>(), 1e-7);
}

TEST_F(TrainingTest, TinyDenoiserOverfitsAFixedBatch) {
  // 32 points, every step the same batch: the eps loss must fall to under half its start.
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 32, 5);
  Model model = fresh_model(mlp_denoiser_config());
  TrainingOptions options = quick_options(path("run"), 400);
  options.lr = 3e-3;
  const TrainingResult result = train(model, data, options);
  ASSERT_EQ(result.losses.size(), 400u);
  const double start = mean(result.losses, 0, 20);
  const double end = mean(result.losses, 380, 400);
  EXPECT_LT(end, 0.5 * start) << "start " << start << " end " << end;
  // The run left loadable EMA weights.
  const Model loaded = load_model(path("run"));
  EXPECT_TRUE(same_weights(loaded, result.ema));
}

TEST_F(TrainingTest, Bf16AutocastTrainsAUNetWithFiniteLossesAndFloat32Weights) {
  // GroupNorm refused bf16 activations next to float32 weights: --bf16 failed on every UNet.
  Dataset data;
  data.name = "blobs";
  torch::manual_seed(1);
  data.images = torch::rand({16, 1, 8, 8}) * 2.0 - 1.0;
  data.labels = torch::arange(16, torch::kLong) % 2;
  data.num_classes = 2;
  Model model = fresh_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                             {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", {4}},
                             {"norm_groups", 4}, {"num_classes", 2}});
  TrainingOptions options = quick_options(path("run"), 3);
  options.batch_size = 8;
  options.bf16 = true;
  const TrainingResult result = train(model, data, options);
  ASSERT_EQ(result.losses.size(), 3u);
  for (const double loss : result.losses) EXPECT_TRUE(std::isfinite(loss)) << loss;
  for (const auto& parameter : result.ema.module->parameters()) EXPECT_EQ(parameter.scalar_type(), torch::kFloat32);
}

TEST_F(TrainingTest, ClassifierLearnsTheNoisyMixture) {
  const GaussianMixture mixture = GaussianMixture::demo();
  const Dataset data = mixture_dataset(mixture, 8000, 1);
  Model model = fresh_model(mlp_classifier_config());
  TrainingOptions options = quick_options(path("run"), 500);
  options.task = TrainingTask::classifier;
  options.batch_size = 128;
  options.lr = 2e-3;
  options.ema_rate = 0.95;
  train(model, data, options);

  const Model trained = load_model(path("run"));
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 100);
  const Dataset held_out = mixture_dataset(mixture, 4000, 99);
  const auto accuracy_at = [&](int64_t t) {
    torch::NoGradGuard no_grad;
    const torch::Tensor steps = torch::full({held_out.size()}, t, torch::kInt64);
    const torch::Tensor x_t = q_sample(schedule, held_out.images, steps, torch::randn_like(held_out.images));
    const torch::Tensor predicted = trained.classifier->logits(x_t, steps).argmax(1);
    return predicted.eq(held_out.labels).to(torch::kFloat64).mean().item<double>();
  };
  // Nearly clean points are separable; at t = T - 1 (abar ~ 4e-5) nothing of x0 is left,
  // so the best is the largest class prior.
  const double largest_prior = torch::bincount(held_out.labels).max().item<double>() / held_out.size();
  // 4000 held-out points: accuracy's standard error is <= sqrt(0.25 / 4000) = 0.008, so
  // 0.05 above the prior is 6 of them; the demo's classes overlap ~1e-6 when clean.
  EXPECT_GT(accuracy_at(1), 0.95);
  EXPECT_LT(accuracy_at(99), largest_prior + 0.05);
}

TEST_F(TrainingTest, ResumedRunEqualsTheUninterruptedOne) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 200, 2);
  Model straight = fresh_model(mlp_denoiser_config());
  const TrainingResult whole = train(straight, data, quick_options(path("whole"), 30));

  Model first = fresh_model(mlp_denoiser_config());
  const TrainingResult part1 = train(first, data, quick_options(path("split"), 12));
  Model second = fresh_model(mlp_denoiser_config());
  TrainingOptions resume = quick_options(path("split"), 30);
  resume.resume = true;
  const TrainingResult part2 = train(second, data, resume);

  EXPECT_EQ(part2.first_step, 12);
  std::vector<double> joined = part1.losses;
  joined.insert(joined.end(), part2.losses.begin(), part2.losses.end());
  ASSERT_EQ(joined.size(), whole.losses.size());
  for (size_t i = 0; i < joined.size(); ++i) EXPECT_EQ(joined[i], whole.losses[i]) << "step " << i + 1;
  EXPECT_TRUE(same_weights(second, straight));
  EXPECT_TRUE(same_weights(part2.ema, whole.ema));
  // The log of the resumed run is the uninterrupted run's log (timing fields aside).
  const auto log_losses = [](const std::string& file) {
    std::vector<std::pair<int64_t, double>> lines;
    std::istringstream log(read_file_bytes(file));
    for (std::string line; std::getline(log, line);) {
      const nlohmann::json record = nlohmann::json::parse(line);
      lines.emplace_back(record.at("step").get<int64_t>(), record.at("loss").get<double>());
    }
    return lines;
  };
  const auto whole_log = log_losses(run_files(path("whole")).log);
  EXPECT_EQ(whole_log.size(), 6u);  // every 5 of 30 steps
  EXPECT_EQ(log_losses(run_files(path("split")).log), whole_log);
}

TEST_F(TrainingTest, StopRequestSavesACheckpointThatResumes) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 200, 2);
  Model model = fresh_model(mlp_denoiser_config());
  TrainingHooks hooks;
  int polls = 0;
  hooks.should_stop = [&]() { return ++polls > 7; };  // Ctrl-C during step 8
  const TrainingResult stopped = train(model, data, quick_options(path("run"), 20), hooks);
  EXPECT_TRUE(stopped.interrupted);
  EXPECT_EQ(stopped.last_step, 7);

  Model resumed_model = fresh_model(mlp_denoiser_config());
  TrainingOptions resume = quick_options(path("run"), 20);
  resume.resume = true;
  const TrainingResult resumed = train(resumed_model, data, resume);
  EXPECT_EQ(resumed.first_step, 7);
  EXPECT_EQ(resumed.last_step, 20);

  Model straight = fresh_model(mlp_denoiser_config());
  train(straight, data, quick_options(path("straight"), 20));
  EXPECT_TRUE(same_weights(resumed_model, straight));
}

TEST_F(TrainingTest, NonFiniteLossStopsAndKeepsTheLastCheckpoint) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 200, 2);
  Model model = fresh_model(mlp_denoiser_config());
  TrainingOptions options = quick_options(path("run"), 5);
  train(model, data, options);
  const std::string saved = file_bytes(run_files(path("run")).ema_prefix + ".safetensors");

  // Resume with a learning rate that blows the weights up: the step with a non-finite loss
  // must be named, and the step-5 checkpoint left as it was.
  Model again = fresh_model(mlp_denoiser_config());
  TrainingOptions explode = quick_options(path("run"), 200);
  explode.resume = true;
  explode.save_every = 1000;
  explode.grad_clip = 0.0;
  explode.lr = 1e30;
  try {
    train(again, data, explode);
    FAIL() << "expected a NumericError";
  } catch (const NumericError& error) {
    EXPECT_NE(std::string(error.what()).find("step"), std::string::npos) << error.what();
  } catch (const FileError& error) {
    // The learning rate is part of the trajectory, so the resume may refuse it first; then
    // run from scratch to reach the numeric failure.
    EXPECT_NE(std::string(error.what()).find("lr"), std::string::npos) << error.what();
    explode.resume = false;
    explode.out_dir = path("fresh");
    Model fresh = fresh_model(mlp_denoiser_config());
    EXPECT_THROW(train(fresh, data, explode), NumericError);
  }
  EXPECT_EQ(file_bytes(run_files(path("run")).ema_prefix + ".safetensors"), saved);
}

TEST_F(TrainingTest, ExistingRunNeedsResumeAndResumeNeedsTheSameTrajectory) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 200, 2);
  Model model = fresh_model(mlp_denoiser_config());
  train(model, data, quick_options(path("run"), 4));

  Model again = fresh_model(mlp_denoiser_config());
  try {
    train(again, data, quick_options(path("run"), 8));
    FAIL() << "expected an error: the directory holds a run";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("--resume"), std::string::npos) << error.what();
  }
  TrainingOptions other_seed = quick_options(path("run"), 8);
  other_seed.resume = true;
  other_seed.seed = 4;
  try {
    train(again, data, other_seed);
    FAIL() << "expected a FileError naming the seed";
  } catch (const FileError& error) {
    EXPECT_NE(std::string(error.what()).find("seed"), std::string::npos) << error.what();
  }
}

TEST_F(TrainingTest, CorruptOrMismatchedResumeFilesAreNamed) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 200, 2);
  Model model = fresh_model(mlp_denoiser_config());
  train(model, data, quick_options(path("run"), 4));
  const std::string resume_file = run_files(path("run")).resume;

  // A resume file of a differently shaped network names the tensor.
  nlohmann::json wider = mlp_denoiser_config();
  wider["hidden_channels"] = 32;
  Model other = fresh_model(wider);
  TrainingOptions resume = quick_options(path("run"), 8);
  resume.resume = true;
  try {
    train(other, data, resume);
    FAIL() << "expected a FileError";
  } catch (const FileError& error) {
    EXPECT_NE(std::string(error.what()).find(resume_file), std::string::npos) << error.what();
  }

  // A truncated resume file is named too, and nothing is trained.
  const std::string bytes = file_bytes(resume_file);
  {
    std::ofstream out(resume_file, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  Model same = fresh_model(mlp_denoiser_config());
  try {
    train(same, data, resume);
    FAIL() << "expected a FileError";
  } catch (const FileError& error) {
    EXPECT_NE(std::string(error.what()).find(resume_file), std::string::npos) << error.what();
  }
}

TEST(TrainingOptions, InvalidValuesNameTheFlag) {
  TrainingOptions options;
  options.out_dir = "x";
  options.batch_size = 0;
  try {
    options.validate();
    FAIL();
  } catch (const InputError& error) {
    EXPECT_NE(std::string(error.what()).find("--batch-size"), std::string::npos);
  }
  options.batch_size = 1;
  options.p_uncond = 1.5;
  EXPECT_THROW(options.validate(), InputError);
  options.p_uncond = 0.1;
  for (const double power : {0.0, 5.0, std::nan("")}) {
    options.t_power = power;
    try {
      options.validate();
      FAIL() << power;
    } catch (const InputError& error) {
      EXPECT_NE(std::string(error.what()).find("--t-power"), std::string::npos) << error.what();
    }
  }
  options.t_power = 2.0;
  EXPECT_NO_THROW(options.validate());
  EXPECT_EQ(TrainingOptions::from_json(options.to_json()).t_power, 2.0);
  options.warmup_steps = 10;
  options.lr = 1.0;
  // lr (step + 1) / warmup: one or two float64 roundings, within DOUBLE_EQ's 4 ulps.
  EXPECT_DOUBLE_EQ(options.learning_rate(0), 0.1);
  EXPECT_DOUBLE_EQ(options.learning_rate(9), 1.0);
  EXPECT_DOUBLE_EQ(options.learning_rate(50), 1.0);
}

// nlohmann casts a float to an integer field unchecked (undefined for 4e36; a fuzz finding under
// UBSan): integer fields take integers within their range, and the error quotes the value.
TEST(TrainingOptions, IntegerFieldsRefuseFloatsAndValuesOutOfRange) {
  TrainingOptions defaults;
  EXPECT_EQ(TrainingOptions::from_json(nlohmann::json{{"steps", 12}}).steps, 12);
  EXPECT_EQ(TrainingOptions::from_json(nlohmann::json::object()).steps, defaults.steps);
  for (const auto& value : {nlohmann::json(4.44444e36), nlohmann::json(12.0), nlohmann::json(18446744073709551615ull)}) {
    expect_error<InputError>([&] { TrainingOptions::from_json(nlohmann::json{{"steps", value}}); },
                             {"\"steps\" has the wrong type", value.dump()});
  }
}

TEST(TrainingOptions, CosineScheduleDecaysFromTheEndOfWarmUpToZeroAtTheLastStep) {
  TrainingOptions options;
  options.lr = 2.0;
  options.warmup_steps = 10;
  options.steps = 110;
  options.lr_schedule = LrSchedule::cosine;
  EXPECT_DOUBLE_EQ(options.learning_rate(0), 0.2);  // warm-up as before: 2 * 1/10
  EXPECT_DOUBLE_EQ(options.learning_rate(10), 2.0);  // p = 0
  // p = 50/100: (1 + cos(pi/2)) / 2 = 1/2; p = 1: 0. cos's rounding is ~1e-16.
  EXPECT_NEAR(options.learning_rate(60), 1.0, 1e-12);
  EXPECT_NEAR(options.learning_rate(35), 2.0 * 0.5 * (1.0 + std::cos(M_PI * 0.25)), 1e-12);
  EXPECT_NEAR(options.learning_rate(110), 0.0, 1e-12);
  for (int64_t step = 11; step < 110; ++step) EXPECT_LT(options.learning_rate(step), options.learning_rate(step - 1));
  EXPECT_EQ(TrainingOptions::from_json(options.to_json()).lr_schedule, LrSchedule::cosine);
  EXPECT_THROW(parse_lr_schedule("linear"), InputError);
}

TEST_F(TrainingTest, CosineRunResumesExactlyAndRefusesAnotherStepCount) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 200, 2);
  const auto cosine = [&](const std::string& dir, int64_t steps) {
    TrainingOptions options = quick_options(path(dir), steps);
    options.lr_schedule = LrSchedule::cosine;
    options.warmup_steps = 3;
    return options;
  };
  Model straight = fresh_model(mlp_denoiser_config());
  TrainingOptions whole_options = cosine("whole", 20);
  const TrainingResult whole = train(straight, data, whole_options);

  // A run stopped after 8 of its 20 steps resumes to the same weights.
  Model first = fresh_model(mlp_denoiser_config());
  TrainingHooks hooks;
  int polls = 0;
  hooks.should_stop = [&]() { return ++polls > 8; };
  train(first, data, cosine("split", 20), hooks);
  Model second = fresh_model(mlp_denoiser_config());
  TrainingOptions resume = cosine("split", 20);
  resume.resume = true;
  const TrainingResult resumed = train(second, data, resume);
  EXPECT_EQ(resumed.first_step, 8);
  EXPECT_TRUE(same_weights(second, straight));
  EXPECT_TRUE(same_weights(resumed.ema, whole.ema));

  // Under cosine decay --steps sets every learning rate, so a longer resume is refused.
  Model longer = fresh_model(mlp_denoiser_config());
  TrainingOptions more = cosine("split", 30);
  more.resume = true;
  expect_error<FileError>([&] { train(longer, data, more); }, {"'steps'", "20", "30"});
}
