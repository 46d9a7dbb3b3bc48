// The few-step samplers against exact answers of the Gaussian-mixture oracle: every sampler
// at its usual budget reproduces the exact class proportions (unguided, classifier guidance
// s = 1, CFG w = 0) for discrete-time and log-SNR models; the deterministic solvers converge
// at their published order to a fine reference solution of the probability-flow ODE; every
// sampler is deterministic for a seed at any batch size; Euler and Euler ancestral on the
// timesteps spacing are DDIM at eta = 0 and 1; CFG++ runs in DDIM and Euler only.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/sampling/sigma_samplers.hpp"
#include "support/mixture_fixtures.hpp"
#include "support/test_files.hpp"

namespace guidiff {
namespace {

using testing::diagonal_covariances;
using testing::make_batch;
using testing::make_mixture;

constexpr int64_t kT = 1000;

const DiscreteSchedule& linear_schedule() {
  static const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, kT);
  return schedule;
}

NoiseLevelMap levels_for(TimeKind kind) {
  return kind == TimeKind::discrete_timestep ? NoiseLevelMap::discrete(linear_schedule()) : NoiseLevelMap::log_snr();
}

std::string kind_name(TimeKind kind) { return kind == TimeKind::discrete_timestep ? "discrete" : "log-SNR"; }

// Three classes, one Gaussian each (standard deviation 0.25), centres 0.65-0.8 apart: about
// 10-20% of each class lies nearer another class, so the Bayes class proportions are far
// from 0 and 1 and a sampler that drifts between classes shows.
GaussianMixture overlapping_classes() {
  return make_mixture({0.5, 0.3, 0.2}, {{-0.4, -0.1}, {0.4, -0.1}, {0.0, 0.55}},
                      diagonal_covariances({{0.0625, 0.0625}, {0.0625, 0.0625}, {0.0625, 0.0625}}), {0, 1, 2}, 3);
}

// Each sampler at a budget where its own discretisation bias in these class proportions is
// small against the test's standard errors. The bias is real and measured (guidiff sample on
// this mixture, 10000 samples per class, Bayes class fractions against exact draws): at the
// budgets below every sampler is within 9.7 standard errors of n = 10000 (ddim 50; the others
// within 7.8), i.e. within 2.5 of the n = 667 per class used here; at the common 15 steps
// dpmpp-2m and unipc are 11 (a 3% shift).
struct Budget {
  SamplerKind sampler;
  int64_t steps;
};
const std::vector<Budget>& usual_budgets() {
  static const std::vector<Budget> budgets = {
      {SamplerKind::ddpm, 250},        {SamplerKind::ddim, 50},    {SamplerKind::cfg_continuous, 256},
      {SamplerKind::euler, 50},        {SamplerKind::euler_ancestral, 100}, {SamplerKind::heun, 25},
      {SamplerKind::dpm_2s, 20},       {SamplerKind::dpmpp_2m, 25}, {SamplerKind::dpmpp_3m, 25},
      {SamplerKind::dpmpp_2m_sde, 50}, {SamplerKind::unipc, 25}};
  return budgets;
}

// The time inputs a sampler runs with: the sigma-space ones with both.
std::vector<TimeKind> time_kinds_of(SamplerKind sampler) {
  if (sampler == SamplerKind::cfg_continuous) return {TimeKind::log_snr};
  if (!is_sigma_sampler(sampler)) return {TimeKind::discrete_timestep};
  return {TimeKind::discrete_timestep, TimeKind::log_snr};
}

GenerationConfig config_for(SamplerKind sampler, int64_t steps, int64_t n, uint64_t seed) {
  GenerationConfig config;
  config.sampler = sampler;
  config.steps = steps;
  config.sample_shape = {2};
  config.num_samples = n;
  config.batch_size = n;
  config.seed = seed;
  return config;
}

// ---- Class proportions ---------------------------------------------------------------------

// Fraction of samples of each Bayes class (the argmax of p(y | x) of the clean mixture).
torch::Tensor bayes_class_fractions(const GaussianMixture& mixture, const torch::Tensor& samples) {
  const torch::Tensor x = samples.to(torch::kFloat64).reshape({samples.size(0), mixture.dim()});
  const torch::Tensor classes =
      mixture.class_log_posterior(x, torch::ones({x.size(0)}, torch::kFloat64)).argmax(1);
  return torch::bincount(classes, {}, mixture.num_classes).to(torch::kFloat64) / double(x.size(0));
}

// The statistical bound. A sample's Bayes class is a categorical draw, so a fraction p_hat of n
// samples has standard error sqrt(p (1 - p) / n); against a reference fraction of n_ref exact
// draws the difference has sqrt(p (1 - p) (1/n + 1/n_ref)). Five of them: with the budgets'
// bias (<= 2.5 of them, above) a correct sampler still has 2.5 standard errors to spare, a
// chance failure below 1% for the worst comparison (n = 2000 unguided: 0.056 at p = 0.5;
// n = 667 per class: 0.071 at p = 0.84, 0.046 at p = 0.94). The seeds are fixed, so a run
// that passes keeps passing.
constexpr double kZ = 5.0;
constexpr int64_t kReferenceDraws = 200000;

// Returns the largest difference in standard errors.
double expect_fractions(const torch::Tensor& fractions, int64_t n, const torch::Tensor& exact, const std::string& what) {
  double largest = 0.0;
  for (int64_t k = 0; k < exact.size(0); ++k) {
    const double p = exact[k].item<double>();
    const double se = std::sqrt(std::max(p * (1 - p), 1e-4) * (1.0 / double(n) + 1.0 / double(kReferenceDraws)));
    EXPECT_LE(std::abs(fractions[k].item<double>() - p), kZ * se)
        << what << ": Bayes class " << k << " fraction " << fractions[k].item<double>() << ", exact " << p;
    largest = std::max(largest, std::abs(fractions[k].item<double>() - p) / se);
  }
  return largest;
}

enum class Mode { unguided, classifier_s1, cfg_w0 };

// Runs the samplers (both time inputs where they have them) in `mode` and compares the Bayes
// class fractions -- overall, or per requested class -- with exact draws.
void check_class_proportions(Mode mode, const std::vector<Budget>& budgets, int64_t n) {
  const GaussianMixture mixture = overlapping_classes();
  const torch::Tensor labels = torch::arange(n, torch::kLong).remainder(3);
  std::vector<torch::Tensor> exact;  // per requested class (or one, unguided)
  if (mode == Mode::unguided) {
    exact.push_back(bayes_class_fractions(mixture, mixture.sample(kReferenceDraws, 7).first));
  } else {
    for (int64_t c = 0; c < 3; ++c) {
      exact.push_back(bayes_class_fractions(mixture, mixture.restricted_to_class(c).sample(kReferenceDraws, 8 + c).first));
    }
  }
  for (const Budget& budget : budgets) {
    for (const TimeKind kind : time_kinds_of(budget.sampler)) {
      double largest = 0.0;
      const std::string what =
          to_string(budget.sampler) + " " + std::to_string(budget.steps) + " steps, " + kind_name(kind);
      SCOPED_TRACE(what);
      GenerationConfig config = config_for(budget.sampler, budget.steps, n, 300);
      const bool conditional = mode == Mode::cfg_w0;
      auto model = std::make_shared<MixtureDenoiser>(mixture, levels_for(kind), conditional);
      std::shared_ptr<Classifier> classifier;
      if (mode == Mode::classifier_s1) {
        classifier = std::make_shared<MixtureClassifier>(mixture, levels_for(kind));
        config.classifier_scale = 1.0;
      }
      const GenerationResult result =
          generate(model, classifier, config, mode == Mode::unguided ? torch::Tensor() : labels, {});
      if (mode == Mode::unguided) {
        largest = expect_fractions(bayes_class_fractions(mixture, result.samples), n, exact[0], what);
      } else {
        for (int64_t c = 0; c < 3; ++c) {
          const torch::Tensor rows = labels.eq(c).nonzero().flatten();
          largest = std::max(largest, expect_fractions(bayes_class_fractions(mixture, result.samples.index_select(0, rows)),
                                                       rows.numel(), exact[c], what + ", class " + std::to_string(c)));
        }
      }
      std::cout << what << ": largest difference " << largest << " standard errors (limit " << kZ << ")\n";
    }
  }
}

TEST(SigmaSamplers, EverySamplerReproducesTheClassProportionsUnguided) {
  check_class_proportions(Mode::unguided, usual_budgets(), 2000);
}

TEST(SigmaSamplers, EverySamplerReproducesTheClassProportionsWithCfgAtZero) {
  check_class_proportions(Mode::cfg_w0, usual_budgets(), 2000);
}

TEST(SigmaSamplers, ClassifierGuidanceAtOneIsTheConditionalModelInEverySampler) {
  // p(x) p(y | x) = p(x, y): at s = 1 with the exact classifier, Algorithm 2's eps equals the
  // conditional model's at every call, so every eps-based sampler draws -- sample by sample,
  // from the same x_T and noise -- what it draws with CFG at w = 0, whose class proportions
  // the test above checks. The two eps differ by rounding only (the classifier's gradient is
  // float32, ~1e-7 relative); the flows here amplify that by well under 1e3 over <= 100 steps.
  const GaussianMixture mixture = overlapping_classes();
  const int64_t n = 300;
  const torch::Tensor labels = torch::arange(n, torch::kLong).remainder(3);
  for (const Budget& budget : usual_budgets()) {
    if (budget.sampler == SamplerKind::ddpm) continue;  // Algorithm 1: below
    for (const TimeKind kind : time_kinds_of(budget.sampler)) {
      SCOPED_TRACE(to_string(budget.sampler) + ", " + kind_name(kind));
      GenerationConfig config = config_for(budget.sampler, budget.steps, n, 301);
      auto unconditional = std::make_shared<MixtureDenoiser>(mixture, levels_for(kind), false);
      auto conditional = std::make_shared<MixtureDenoiser>(mixture, levels_for(kind), true);
      const torch::Tensor expected = generate(conditional, nullptr, config, labels, {}).samples;
      config.classifier_scale = 1.0;
      const torch::Tensor guided =
          generate(unconditional, std::make_shared<MixtureClassifier>(mixture, levels_for(kind)), config, labels, {})
              .samples;
      const double difference = (guided - expected).abs().max().item<double>();
      EXPECT_LT(difference, 1e-4);
      std::cout << to_string(budget.sampler) << ", " << kind_name(kind) << ": classifier s = 1 against conditional, max |difference| "
                << difference << "\n";
    }
  }
}

TEST(SigmaSamplers, DdpmWithAlgorithm1AtOneReproducesTheClassProportions) {
  // Algorithm 1's mean shift is a first-order expansion of log p(y | x) about x_t, exact only
  // as the steps shrink: at 250 steps it puts 0.77 of class 2 where 0.84 belongs (7 of this
  // test's standard errors at n = 1333 per class), so it runs at the DDPM paper's 1000 steps,
  // where 500 samples per class were within 1.7 standard errors. n = 900 keeps the classifier's
  // 1000 gradients cheap: 5 standard errors are 0.11 at p = 0.84 (300 per class).
  check_class_proportions(Mode::classifier_s1, {{SamplerKind::ddpm, 1000}}, 900);
}

// ---- Convergence order ----------------------------------------------------------------------

// A smooth two-component mixture (standard deviations 0.4-0.55) and a log-SNR model over
// lambda in [-8, 8], i.e. sigma from e^4 down to e^-4: continuous time, so the steps can be
// refined without limit.
GaussianMixture smooth_mixture() {
  return make_mixture({0.4, 0.6}, {{-0.3, 0.1}, {0.3, -0.1}}, diagonal_covariances({{0.25, 0.16}, {0.2, 0.3}}), {0, 1},
                      2);
}

LogSnrSchedule convergence_range() {
  LogSnrSchedule range;
  range.lambda_min = -8.0;
  range.lambda_max = 8.0;
  return range;
}

// D(x; sigma) of the log-SNR mixture model in float64, written out from the view's formula.
torch::Tensor denoised(MixtureDenoiser& model, const torch::Tensor& x, double sigma) {
  const torch::Tensor lambda = torch::full({x.size(0)}, -2.0 * std::log(sigma), torch::kFloat64);
  return x - sigma * model.predict(x / std::sqrt(1.0 + sigma * sigma), lambda, {}).eps;
}

// The probability-flow ODE in l = -log sigma, dx/dl = D(x; e^-l) - x, by classical RK4 over
// `steps` equal steps from sigma_max to sigma_min, then D at sigma_min (the last step of every
// sampler). RK4's error, ~(8/steps)^4 ~ 2e-11 at 4000 steps, is far below the solvers' errors.
torch::Tensor reference_solution(MixtureDenoiser& model, const torch::Tensor& x_T, const LogSnrSchedule& range,
                                 int64_t steps) {
  const double l_start = 0.5 * range.lambda_min, l_end = 0.5 * range.lambda_max;  // l = lambda / 2
  const double h = (l_end - l_start) / double(steps);
  const auto f = [&](double l, const torch::Tensor& x) { return denoised(model, x, std::exp(-l)) - x; };
  torch::Tensor x = x_T * std::sqrt(1.0 + std::exp(-2.0 * l_start));
  for (int64_t i = 0; i < steps; ++i) {
    const double l = l_start + h * double(i);
    const torch::Tensor k1 = f(l, x);
    const torch::Tensor k2 = f(l + h / 2, x + (h / 2) * k1);
    const torch::Tensor k3 = f(l + h / 2, x + (h / 2) * k2);
    const torch::Tensor k4 = f(l + h, x + h * k3);
    x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4);
  }
  return denoised(model, x, std::exp(-l_end));
}

using SigmaSampler = std::function<SamplingResult(Denoiser&, const SigmaSchedule&, const SampleBatch&,
                                                  const SampleNoise&)>;

struct Solver {
  std::string name;
  double order;  // the published global order
  SigmaSampler run;
};

std::vector<Solver> deterministic_solvers() {
  const SamplerCommon common;
  return {
      {"euler", 1, [](auto& m, auto& s, auto& b, auto& n) { return sample_euler(m, s, b, n, EulerOptions{}); }},
      {"heun", 2, [](auto& m, auto& s, auto& b, auto& n) { return sample_heun(m, s, b, n, EulerOptions{}); }},
      {"dpm-2s", 2, [common](auto& m, auto& s, auto& b, auto& n) { return sample_dpm_solver_2s(m, s, b, n, common); }},
      {"dpmpp-2m", 2, [common](auto& m, auto& s, auto& b, auto& n) { return sample_dpmpp_2m(m, s, b, n, common); }},
      {"dpmpp-3m", 3, [common](auto& m, auto& s, auto& b, auto& n) { return sample_dpmpp_3m(m, s, b, n, common); }},
      // UniPC-p with its corrector is of order p + 1 (Zhao et al. 2023, Sec. 3.3).
      {"unipc", 3, [](auto& m, auto& s, auto& b, auto& n) { return sample_unipc(m, s, b, n, UniPcOptions{}); }},
  };
}

TEST(SigmaSamplers, DeterministicSolversConvergeAtTheirPublishedOrder) {
  const GaussianMixture mixture = smooth_mixture();
  const LogSnrSchedule range = convergence_range();
  auto model = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), false);
  const SampleBatch batch = make_batch(64, 2, 401, {}, torch::kFloat64);
  const torch::Tensor reference = reference_solution(*model, batch.x_T, range, 4000);
  const ModelSigmas levels = ModelSigmas::log_snr(range);
  const std::vector<int64_t> steps = {32, 64, 128, 256};
  for (const Solver& solver : deterministic_solvers()) {
    std::vector<double> errors;
    for (const int64_t n : steps) {
      const SigmaSchedule schedule{levels, make_sigmas(SigmaSpacing::log_snr, levels, n)};
      const torch::Tensor x = solver.run(*model, schedule, batch, SampleNoise(401)).samples;
      errors.push_back((x - reference).square().mean().sqrt().item<double>());  // RMS over samples and coordinates
    }
    std::cout << solver.name << ": RMS error at 32..256 steps";
    for (const double e : errors) std::cout << " " << e;
    std::cout << "; observed orders";
    for (size_t k = 0; k + 1 < errors.size(); ++k) std::cout << " " << std::log2(errors[k] / errors[k + 1]);
    std::cout << "\n";
    // The error expands as C h^p (1 + c h + O(h^2)) in the step h = 8/(N - 1) in l, so the
    // order observed between N and 2N steps is p + log2((1 + c h)/(1 + c h / 2)) ~ p + c h / (2 ln 2).
    // At the finest pair (h = 0.031) that is within 0.3 of p for |c| <= 13 -- a correction
    // scale of 1/13 in l, far finer than anything in this smooth mixture, whose densities change
    // over ~1 in l (Heun's and DPM-Solver-2's deviations halve per doubling as this predicts,
    // with c ~ 0.5) -- while a method of the next order up or down is off by a full 1. Two
    // further terms stay inside: 3M's first two steps run at order 1 and 2 (as in k-diffusion),
    // an O(h^2) error damped by ~sigma_data / sigma_max before it reaches x0, and float64
    // rounding, 1e-13 against errors >= 1e-8.
    const double finest = std::log2(errors[errors.size() - 2] / errors.back());
    EXPECT_NEAR(finest, solver.order, 0.3) << solver.name;
    // Well above float64 rounding (~1e-13 here): the slope measures the method, not noise.
    EXPECT_GT(errors.back(), 1e-10) << solver.name;
  }
}

// ---- Determinism --------------------------------------------------------------------------

TEST(SigmaSamplers, EverySamplerIsDeterministicForASeedAtAnyBatchSize) {
  // Both guidance methods at once, so the wrappers run too; euler and heun with churn.
  const GaussianMixture mixture = GaussianMixture::demo();
  for (const Budget& budget : usual_budgets()) {
    for (const TimeKind kind : time_kinds_of(budget.sampler)) {
      SCOPED_TRACE(to_string(budget.sampler) + ", " + kind_name(kind));
      auto model = std::make_shared<MixtureDenoiser>(mixture, levels_for(kind), true);
      auto classifier = std::make_shared<MixtureClassifier>(mixture, levels_for(kind));
      GenerationConfig config = config_for(budget.sampler, 8, 13, 77);
      config.cfg_scale = 1.0;
      config.classifier_scale = 0.5;
      if (budget.sampler == SamplerKind::euler || budget.sampler == SamplerKind::heun) config.churn.s_churn = 2.0;
      const torch::Tensor labels = torch::arange(13, torch::kLong).remainder(4);
      config.batch_size = 13;
      const torch::Tensor whole = generate(model, classifier, config, labels, {}).samples;
      for (const int64_t batch_size : {1, 5}) {
        config.batch_size = batch_size;
        EXPECT_TRUE(torch::equal(generate(model, classifier, config, labels, {}).samples, whole)) << batch_size;
      }
      config.seed = 78;  // and the seed matters
      EXPECT_FALSE(torch::equal(generate(model, classifier, config, labels, {}).samples, whole));
    }
  }
}

// ---- Ties to DDIM -------------------------------------------------------------------------

// The timesteps spacing of N steps and the respacing "N" that DDIM runs over.
SigmaSchedule timestep_sigmas(int64_t steps) {
  const ModelSigmas levels = ModelSigmas::discrete(linear_schedule());
  return {levels, make_sigmas(SigmaSpacing::timesteps, levels, steps)};
}

TEST(SigmaSamplers, EulerAndEulerAncestralOnTheTimestepsSpacingAreDdim) {
  // Euler in sigma is DDIM's eq. 12 at eta = 0 (x/sqrt(abar) = D + sigma eps); the ancestral
  // split sigma_up^2 = sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2 is eq. 16 at eta = 1
  // divided by abar_{t-1}, and both draw step i's noise from stream i. In float64 the two differ
  // by rounding only: 20 steps of ~1e-16 relative on values up to sigma_max = 157.
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::discrete(linear_schedule()), false);
  const SampleBatch batch = make_batch(32, 2, 501, {}, torch::kFloat64);
  const SampleNoise noise(501);
  const DiscreteSchedule respaced = respace(linear_schedule(), parse_respacing("20", kT));
  const SigmaSchedule sigmas = timestep_sigmas(20);
  ASSERT_EQ(sigmas.num_steps(), 20);
  DdimOptions ddim;
  const torch::Tensor euler = sample_euler(*model, sigmas, batch, noise, EulerOptions{}).samples;
  EXPECT_TRUE(torch::allclose(euler, sample_ddim(*model, respaced, batch, noise, ddim).samples, 1e-9, 1e-9));
  ddim.eta = 1.0;
  const torch::Tensor ancestral = sample_euler_ancestral(*model, sigmas, batch, noise, SamplerCommon{}).samples;
  EXPECT_TRUE(torch::allclose(ancestral, sample_ddim(*model, respaced, batch, noise, ddim).samples, 1e-9, 1e-9));
}

TEST(SigmaSamplers, TrajectoryIsInTheVpScaleFromXTToTheSamples) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::discrete(linear_schedule()), false);
  const SampleBatch batch = make_batch(8, 2, 502);
  UniPcOptions options;
  options.keep_trajectory = true;
  std::vector<int64_t> reported;
  options.on_step = [&reported](int64_t done, int64_t total) { reported.push_back(done * 100 + total); };
  const SamplingResult result = sample_unipc(*model, timestep_sigmas(6), batch, SampleNoise(502), options);
  ASSERT_EQ(result.trajectory.size(), 7u);
  EXPECT_TRUE(torch::equal(result.trajectory.front(), batch.x_T));
  EXPECT_TRUE(torch::equal(result.trajectory.back(), result.samples));
  EXPECT_EQ(reported, (std::vector<int64_t>{106, 206, 306, 406, 506, 606}));
}

// ---- CFG++ --------------------------------------------------------------------------------

TEST(SigmaSamplers, CfgPlusPlusEulerStepIsDenoisedPlusSigmaTimesTheUnconditionalEps) {
  // Chung et al. 2024, Euler form: x_{i+1} = D_lambda(x_i) + sigma_{i+1} eps_u(x_i), with
  // eps_lambda = eps_u + lambda (eps_c - eps_u); lambda = 0.6 is w = -0.4 of eq. 6.
  const GaussianMixture mixture = GaussianMixture::demo();
  auto conditional = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), true);
  CfgRules rules;
  rules.cfg_pp = true;
  ClassifierFreeGuidance cfg_pp(conditional, -0.4, {}, rules);
  const torch::Tensor labels = torch::arange(16, torch::kLong).remainder(4);
  const SampleBatch batch = make_batch(16, 2, 503, labels, torch::kFloat64);
  const ModelSigmas levels = ModelSigmas::log_snr(LogSnrSchedule{});
  const SigmaSchedule schedule{levels, {5.0, 1.5, 0.0}};
  EulerOptions options;
  options.keep_trajectory = true;
  const SamplingResult result = sample_euler(cfg_pp, schedule, batch, SampleNoise(503), options);
  // By hand, step 0 from x = x_T sqrt(1 + 25) at sigma = 5.
  const double sigma = 5.0, next = 1.5;
  const torch::Tensor x = batch.x_T * std::sqrt(1.0 + sigma * sigma);
  const torch::Tensor vp = x / std::sqrt(1.0 + sigma * sigma);
  const torch::Tensor lambda = torch::full({16}, -2.0 * std::log(sigma), torch::kFloat64);
  const torch::Tensor eps_c = conditional->predict(vp, lambda, labels).eps;
  const torch::Tensor eps_u = conditional->predict(vp, lambda, torch::full({16}, 4, torch::kLong)).eps;
  const torch::Tensor d_lambda = x - sigma * (eps_u + 0.6 * (eps_c - eps_u));
  const torch::Tensor expected = (d_lambda + next * eps_u) / std::sqrt(1.0 + next * next);  // recorded in VP scale
  EXPECT_TRUE(torch::allclose(result.trajectory[1], expected, 1e-10, 1e-10));
}

TEST(SigmaSamplers, CfgPlusPlusEulerOnTheTimestepsSpacingIsCfgPlusPlusDdim) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto conditional = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::discrete(linear_schedule()), true);
  CfgRules rules;
  rules.cfg_pp = true;
  ClassifierFreeGuidance cfg_pp(conditional, -0.2, {}, rules);
  const SampleBatch batch = make_batch(16, 2, 504, torch::arange(16, torch::kLong).remainder(4), torch::kFloat64);
  const torch::Tensor euler = sample_euler(cfg_pp, timestep_sigmas(12), batch, SampleNoise(504), EulerOptions{}).samples;
  const torch::Tensor ddim =
      sample_ddim(cfg_pp, respace(linear_schedule(), parse_respacing("12", kT)), batch, SampleNoise(504), DdimOptions{})
          .samples;
  EXPECT_TRUE(torch::allclose(euler, ddim, 1e-9, 1e-9));
  // Every other sampler refuses it by name.
  testing::expect_error<InputError>(
      [&] { sample_heun(cfg_pp, timestep_sigmas(4), batch, SampleNoise(1), EulerOptions{}); }, {"heun", "CFG++"});
  testing::expect_error<InputError>(
      [&] { sample_dpmpp_2m(cfg_pp, timestep_sigmas(4), batch, SampleNoise(1), SamplerCommon{}); }, {"dpmpp-2m"});
  DdpmOptions ddpm;
  testing::expect_error<InputError>(
      [&] { sample_ddpm(cfg_pp, respace(linear_schedule(), parse_respacing("4", kT)), batch, SampleNoise(1), ddpm); },
      {"ddpm"});
}

// ---- Requests that make no sense ------------------------------------------------------------

TEST(SigmaSamplers, GenerateRefusesCombinationsThatMakeNoSense) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto conditional = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::discrete(linear_schedule()), true);
  const torch::Tensor labels = torch::arange(8, torch::kLong).remainder(4);
  const auto refuse = [&](const std::function<void(GenerationConfig&)>& change, const std::string& fragment) {
    GenerationConfig config = config_for(SamplerKind::dpmpp_2m, 5, 8, 1);
    change(config);
    testing::expect_error<InputError>([&] { generate(conditional, nullptr, config, labels, {}); }, {fragment});
  };
  refuse([](auto& c) { c.cfg_rules.cfg_pp = true; }, "--cfg-pp");
  refuse([](auto& c) { c.sampler = SamplerKind::ddim; c.eta = 0.5; c.cfg_rules.cfg_pp = true; }, "--eta 0");
  refuse([](auto& c) { c.churn.s_churn = 1.0; }, "--s-churn");
  refuse([](auto& c) { c.churn.s_noise = -1.0; c.sampler = SamplerKind::euler; }, "--s-noise");
  refuse([](auto& c) { c.eta = 1.0; }, "--eta");
  refuse([](auto& c) { c.steps = 0; c.respacing = "10"; }, "--sigmas timesteps");
  refuse([](auto& c) { c.cfg_rules.rescale_phi = 0.7; }, "--cfg-scale");
  refuse([](auto& c) { c.cfg_rules.apg = ApgOptions{}; }, "--cfg-scale");
  refuse([](auto& c) { c.cfg_scale = 2; c.cfg_rules.rescale_phi = 1.5; }, "--cfg-rescale");
  refuse([](auto& c) { c.dynamic_threshold = 1.5; }, "--dynamic-threshold");
  refuse([](auto& c) { c.cfg_scales = torch::ones({3}, torch::kFloat64); }, "--cfg-scale");
  testing::expect_error<InputError>(
      [&] {
        generate(GenerationModels{conditional, nullptr, conditional}, config_for(SamplerKind::euler, 5, 8, 1), labels, {});
      },
      {"--guide-model"});
}

}  // namespace
}  // namespace guidiff
