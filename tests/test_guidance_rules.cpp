// The guidance rules against hand-computed cases: CFG rescale (Lin et al. 2024), APG (Sadat
// et al. 2024), dynamic thresholding (Saharia et al. 2022), the guidance interval in sigma
// (Kynkaanniemi et al. 2024), per-sample strengths, autoguidance (Karras et al. 2024) and
// CFG++ (Chung et al. 2024), each through the wrapper that applies it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>

#include "guidiff/core/errors.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/guidance/guided_model.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "support/fixture_models.hpp"
#include "support/test_files.hpp"

namespace guidiff {
namespace {

using testing::LinearConditionalTwin;
using testing::LinearUnconditionalTwin;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

torch::Tensor rows(std::initializer_list<std::initializer_list<double>> values) {
  std::vector<torch::Tensor> out;
  for (const auto& row : values) out.push_back(torch::tensor(std::vector<double>(row), kF64));
  return torch::stack(out);
}

// Equal to float64 rounding of a few operations on numbers of order 10.
void expect_close(const torch::Tensor& actual, const torch::Tensor& expected, double tolerance = 1e-12) {
  EXPECT_TRUE(torch::allclose(actual.to(torch::kFloat64), expected.to(torch::kFloat64), tolerance, tolerance))
      << actual << "\nexpected\n" << expected;
}

const DiscreteSchedule& linear_schedule() {
  static const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 1000);
  return schedule;
}

// Six 4x4 images (the classifier twin takes 16 values) at six noise levels, for the linear
// twins (3 classes, null = 3).
struct Batch {
  torch::Tensor x = torch::linspace(-1.2, 1.3, 96, kF64).view({6, 1, 4, 4});
  torch::Tensor t = torch::tensor({20, 150, 400, 500, 800, 999}, torch::kInt64);
  torch::Tensor y = torch::tensor({0, 1, 2, 0, 1, 2}, torch::kInt64);
};

// [N, 1, 1, 1] float64 of sqrt(abar_t) and sqrt(1 - abar_t).
std::pair<torch::Tensor, torch::Tensor> signal_noise(const torch::Tensor& t) {
  const torch::Tensor abar = linear_schedule().alphas_cumprod.index_select(0, t).view({-1, 1, 1, 1});
  return {abar.sqrt(), (1.0 - abar).sqrt()};
}

// ---- CFG rescale -----------------------------------------------------------------------------

TEST(CfgRescale, ScalesByPhiTimesTheStdRatioPlusOneMinusPhi) {
  // guided = 4 positive - 4, so std(positive) / std(guided) = 1/4 exactly; at phi = 0.7 the
  // factor is 0.7 / 4 + 0.3 = 0.475. A constant guided row (std 0) is left alone.
  const torch::Tensor positive = rows({{1, 2, 3, 4}, {1, 2, 3, 4}});
  const torch::Tensor guided = rows({{0, 4, 8, 12}, {5, 5, 5, 5}});
  expect_close(rescale_guided_x0(guided, positive, 0.7), rows({{0, 1.9, 3.8, 5.7}, {5, 5, 5, 5}}));
  expect_close(rescale_guided_x0(guided, positive, 1.0), rows({{0, 1, 2, 3}, {5, 5, 5, 5}}));
  expect_close(rescale_guided_x0(guided, positive, 0.0), guided);
}

// ---- APG -------------------------------------------------------------------------------------

TEST(Apg, UpdateIsTheOrthogonalPartPlusEtaTimesTheParallelPart) {
  // x0_pos = (3, 4): unit (0.6, 0.8). delta = (3, 4) - (3, 2) = (0, 2): parallel 1.6 (0.6, 0.8)
  // = (0.96, 1.28), orthogonal (-0.96, 0.72).
  const torch::Tensor positive = rows({{3, 4}}), negative = rows({{3, 2}});
  ApgOptions options;
  options.momentum = 0.0;
  options.eta = 0.5;
  ApgMomentum none(0.0);
  expect_close(apg_update(positive, negative, options, none), rows({{-0.96 + 0.48, 0.72 + 0.64}}));
  // r = 1: delta scaled to (0, 1) first: parallel (0.48, 0.64), orthogonal (-0.48, 0.36).
  options.norm_threshold = 1.0;
  options.eta = 0.0;
  ApgMomentum fresh(0.0);
  expect_close(apg_update(positive, negative, options, fresh), rows({{-0.48, 0.36}}));
  // eta = 1, no threshold, no momentum: the whole difference, i.e. plain CFG.
  options = ApgOptions{1.0, 0.0, 0.0};
  ApgMomentum plain(0.0);
  expect_close(apg_update(positive, negative, options, plain), rows({{0, 2}}));
}

TEST(Apg, MomentumRunsOverTheCallsOfOneWrapper) {
  // beta = -0.5: running = (0, 2), then (2, 0) + (-0.5)(0, 2) = (2, -1); eta = 1 returns it.
  ApgOptions options{1.0, -0.5, 0.0};
  ApgMomentum momentum(options.momentum);
  expect_close(apg_update(rows({{3, 4}}), rows({{3, 2}}), options, momentum), rows({{0, 2}}));
  expect_close(apg_update(rows({{3, 4}}), rows({{1, 4}}), options, momentum), rows({{2, -1}}));
  EXPECT_THROW(momentum.update(rows({{1, 2}, {3, 4}})), ModelError);  // another batch
}

TEST(Apg, ThroughClassifierFreeGuidanceIsTheX0RuleMappedBackToEps) {
  // x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) for both branches, x0 = x0_c + w update, then
  // eps = (x - sqrt(abar) x0) / sqrt(1 - abar). The twin's eps are closed forms of (x, y, t).
  Batch batch;
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  CfgRules rules;
  rules.apg = ApgOptions{0.3, -0.5, 0.05};
  ClassifierFreeGuidance apg(twin, 2.0, {}, rules, NoiseLevelMap::discrete(linear_schedule()));
  const auto [a, s] = signal_noise(batch.t);
  const torch::Tensor eps_c = twin->predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor eps_u = twin->predict(batch.x, batch.t, torch::full({6}, 3, torch::kLong)).eps;
  ApgMomentum momentum(-0.5);
  for (int call = 0; call < 2; ++call) {  // the second call runs with momentum
    const torch::Tensor x0_c = (batch.x - s * eps_c) / a, x0_u = (batch.x - s * eps_u) / a;
    const torch::Tensor x0 = x0_c + 2.0 * apg_update(x0_c, x0_u, *rules.apg, momentum);
    expect_close(apg.predict(batch.x, batch.t, batch.y).eps, (batch.x - a * x0) / s, 1e-9);
  }
}

// ---- Dynamic thresholding -------------------------------------------------------------------

TEST(DynamicThreshold, ClampsToThePercentileOfAbsoluteValuesAndDivides) {
  // Row 0: |x0| sorted 0.5, 1, 2, 3; the 0.75 quantile sits at position 0.75 * 3 = 2.25, so
  // s = 2 + 0.25 (3 - 2) = 2.25: x0 -> clamp(x0, -2.25, 2.25) / 2.25. Row 1: quantile
  // 0.8125 < 1, so s = 1 and the row is unchanged (all within [-1, 1]).
  const torch::Tensor x0 = rows({{0.5, -2.0, 3.0, 1.0}, {0.5, -0.25, 0.75, 1.0}});
  expect_close(dynamic_threshold(x0, 0.75), rows({{0.5 / 2.25, -2.0 / 2.25, 1.0, 1.0 / 2.25}, {0.5, -0.25, 0.75, 1.0}}));
  // p = 1: s is the largest |x0|.
  expect_close(dynamic_threshold(x0, 1.0), rows({{0.5 / 3, -2.0 / 3, 1.0, 1.0 / 3}, {0.5, -0.25, 0.75, 1.0}}));
  EXPECT_THROW(dynamic_threshold(x0, 0.0), InputError);
  EXPECT_THROW(dynamic_threshold(x0, 1.5), InputError);
}

TEST(DynamicThreshold, AsAWrapperThresholdsTheModelsX0) {
  Batch batch;
  batch.x = batch.x * 30.0;  // x0 beyond [-1, 1] at small t, so the threshold bites
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  DynamicThresholding thresholded(twin, NoiseLevelMap::discrete(linear_schedule()), 0.9);
  const auto [a, s] = signal_noise(batch.t);
  const torch::Tensor x0 = (batch.x - s * twin->predict(batch.x, batch.t, batch.y).eps) / a;
  const torch::Tensor eps = thresholded.predict(batch.x, batch.t, batch.y).eps;
  // x / sqrt(1 - abar) reaches 30 / 0.01: float64 rounding ~1e-16 * 3e3 per operation.
  expect_close((batch.x - s * eps) / a, dynamic_threshold(x0, 0.9), 1e-10);
  EXPECT_GT((dynamic_threshold(x0, 0.9) - x0).abs().max().item<double>(), 0.1);
}

// ---- The interval in sigma --------------------------------------------------------------------

TEST(GuidanceInterval, InSigmaUsesTheEdmNoiseLevelOfTheModelsTime) {
  GuidanceInterval interval{0.3, 2.0, GuidanceInterval::Unit::sigma};
  // log-SNR: sigma = exp(-lambda / 2) = e^2, 1, e^-1 (0.37), e^-3 (0.05).
  const NoiseLevelMap log_snr = NoiseLevelMap::log_snr();
  EXPECT_TRUE(torch::equal(interval.contains(torch::tensor({-4.0f, 0.0f, 2.0f, 6.0f}), &log_snr),
                           torch::tensor({false, true, true, false})));
  // Discrete: sigma_t = sqrt((1 - abar_t) / abar_t) from the table.
  const NoiseLevelMap discrete = NoiseLevelMap::discrete(linear_schedule());
  const torch::Tensor t = torch::tensor({20, 150, 400, 500, 800, 999}, torch::kInt64);
  const torch::Tensor abar = linear_schedule().alphas_cumprod.index_select(0, t);
  const torch::Tensor sigma = ((1.0 - abar) / abar).sqrt();
  EXPECT_TRUE(torch::equal(interval.contains(t, &discrete), sigma.ge(0.3).logical_and(sigma.le(2.0))));
  EXPECT_THROW(interval.contains(t), InputError);  // sigma needs the levels
}

TEST(GuidanceInterval, InSigmaGuidesClassifierFreeAndClassifierGuidanceAlike) {
  Batch batch;
  const NoiseLevelMap levels = NoiseLevelMap::discrete(linear_schedule());
  const GuidanceInterval interval{0.5, 3.0, GuidanceInterval::Unit::sigma};
  const torch::Tensor inside = interval.contains(batch.t, &levels);
  ASSERT_TRUE(inside.any().item<bool>() && !inside.all().item<bool>());
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  ClassifierFreeGuidance everywhere(twin, 1.5), masked(twin, 1.5, interval, {}, levels);
  auto classifier = std::make_shared<testing::LinearClassifierTwin>(TimeKind::discrete_timestep);
  ClassifierGuidedDenoiser cg_everywhere(twin, classifier, levels, 2.0), cg_masked(twin, classifier, levels, 2.0, interval);
  const torch::Tensor base = twin->predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor cfg_all = everywhere.predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor cfg_some = masked.predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor cg_all = cg_everywhere.predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor cg_some = cg_masked.predict(batch.x, batch.t, batch.y).eps;
  for (int64_t n = 0; n < 6; ++n) {
    const bool in = inside[n].item<bool>();
    EXPECT_TRUE(torch::equal(cfg_some[n], in ? cfg_all[n] : base[n])) << n;
    EXPECT_TRUE(torch::equal(cg_some[n], in ? cg_all[n] : base[n])) << n;
  }
  EXPECT_THROW(ClassifierFreeGuidance(twin, 1.5, interval), ModelError);  // no levels to measure sigma
}

// ---- Per-sample strengths ---------------------------------------------------------------------

TEST(PerSampleScales, EachRowIsGuidedWithItsOwnValue) {
  Batch batch;
  const NoiseLevelMap levels = NoiseLevelMap::discrete(linear_schedule());
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  auto classifier = std::make_shared<testing::LinearClassifierTwin>(TimeKind::discrete_timestep);
  const std::vector<double> values = {0.0, 1.0, 2.5, 0.0, 1.0, 2.5};
  const GuidanceScale per_sample = GuidanceScale::per_sample(torch::tensor(values, kF64));
  ClassifierFreeGuidance cfg(twin, per_sample);
  ClassifierGuidedDenoiser cg(twin, classifier, levels, per_sample);
  ClassifierMeanShift shift(classifier, per_sample);
  const torch::Tensor variance = torch::full({6, 1, 1, 1}, 0.02, kF64);
  const torch::Tensor cfg_eps = cfg.predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor cg_eps = cg.predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor shifts = shift.shift(batch.x, batch.t, batch.y, variance);
  for (int64_t n = 0; n < 6; ++n) {
    ClassifierFreeGuidance one_cfg(twin, values[n]);
    ClassifierGuidedDenoiser one_cg(twin, classifier, levels, values[n]);
    ClassifierMeanShift one_shift(classifier, values[n]);
    EXPECT_TRUE(torch::equal(cfg_eps[n], one_cfg.predict(batch.x, batch.t, batch.y).eps[n])) << n;
    EXPECT_TRUE(torch::equal(cg_eps[n], one_cg.predict(batch.x, batch.t, batch.y).eps[n])) << n;
    expect_close(shifts[n], one_shift.shift(batch.x, batch.t, batch.y, variance)[n]);
  }
  // w = 0 rows are the conditional model bit for bit.
  const torch::Tensor conditional = twin->predict(batch.x, batch.t, batch.y).eps;
  EXPECT_TRUE(torch::equal(cfg_eps[0], conditional[0]));
  EXPECT_THROW(GuidanceScale::per_sample(torch::tensor({1.0, std::nan("")})), InputError);
  EXPECT_THROW(GuidanceScale::per_sample(torch::ones({2, 2})), InputError);
  EXPECT_THROW(GuidanceScale::per_sample(torch::ones({4})).over(batch.x), InputError);  // 4 values, 6 rows
}

// ---- Autoguidance -----------------------------------------------------------------------------

TEST(Autoguidance, IsOnePlusWTimesTheModelMinusWTimesTheGuide) {
  // Twins: eps = 0.1 x + 0.01 y + 1e-4 t (conditional), eps = 0.2 x + 1e-4 t (unconditional).
  Batch batch;
  const double w = 1.5;
  auto conditional = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  auto unconditional = std::make_shared<LinearUnconditionalTwin>(TimeKind::discrete_timestep);
  const torch::Tensor y = batch.y.to(torch::kFloat64).view({6, 1, 1, 1});
  const torch::Tensor t = batch.t.to(torch::kFloat64).view({6, 1, 1, 1});
  Autoguidance guided(conditional, unconditional, w);
  const torch::Tensor model = 0.1 * batch.x + 0.01 * y + 1e-4 * t;
  const torch::Tensor guide = 0.2 * batch.x + 1e-4 * t;
  expect_close(guided.predict(batch.x, batch.t, batch.y).eps, (1 + w) * model - w * guide);
  // An unconditional model guided by a conditional guide: the guide gets the null class 3.
  Autoguidance reverse(unconditional, conditional, w);
  expect_close(reverse.predict(batch.x, batch.t, {}).eps,
               (1 + w) * guide - w * (0.1 * batch.x + 0.01 * 3.0 + 1e-4 * t));
  // A guide identical to the model changes nothing.
  Autoguidance itself(conditional, conditional, w);
  expect_close(itself.predict(batch.x, batch.t, batch.y).eps, model);
  EXPECT_THROW(Autoguidance(conditional, nullptr, w), ModelError);
  EXPECT_THROW(Autoguidance(conditional, std::make_shared<LinearUnconditionalTwin>(TimeKind::log_snr), w), ModelError);
}

// ---- CFG++ ------------------------------------------------------------------------------------

TEST(CfgPlusPlus, GuidesX0AndCarriesTheUnconditionalEpsForRenoising) {
  Batch batch;
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  CfgRules rules;
  rules.cfg_pp = true;
  const torch::Tensor eps_c = twin->predict(batch.x, batch.t, batch.y).eps;
  const torch::Tensor eps_u = twin->predict(batch.x, batch.t, torch::full({6}, 3, torch::kLong)).eps;
  for (const double lambda : {0.4, 1.0}) {  // lambda = 1 (w = 0) still needs eps_u to re-noise
    ClassifierFreeGuidance cfg_pp(twin, lambda - 1.0, {}, rules);
    const DenoiserOutput out = cfg_pp.predict(batch.x, batch.t, batch.y);
    expect_close(out.eps, eps_u + lambda * (eps_c - eps_u));
    ASSERT_TRUE(out.renoise_eps.defined());
    EXPECT_TRUE(torch::equal(out.renoise_eps, eps_u));
  }
  // Outside the interval: plain conditional, re-noised with its own eps.
  ClassifierFreeGuidance masked(twin, -0.6, GuidanceInterval{0, 300}, rules);
  const DenoiserOutput out = masked.predict(batch.x, batch.t, batch.y);
  for (int64_t n = 0; n < 6; ++n) {
    const bool inside = batch.t[n].item<int64_t>() <= 300;
    EXPECT_TRUE(torch::equal(out.renoise_eps[n], inside ? eps_u[n] : eps_c[n])) << n;
  }
  // Without CFG++ nothing asks for a different re-noising.
  ClassifierFreeGuidance plain(twin, 2.0);
  EXPECT_FALSE(plain.predict(batch.x, batch.t, batch.y).renoise_eps.defined());
}

// ---- Assembly --------------------------------------------------------------------------------

TEST(GuidedModel, StacksGuidanceAsRequestedAndNothingForZeroStrengths) {
  Batch batch;
  const NoiseLevelMap levels = NoiseLevelMap::discrete(linear_schedule());
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  auto classifier = std::make_shared<testing::LinearClassifierTwin>(TimeKind::discrete_timestep);
  GuidanceRequest request;
  EXPECT_EQ(make_guided_model(twin, classifier, nullptr, levels, request).denoiser, twin);
  request.cfg_scale = 2.0;
  request.classifier_scale = 1.0;
  request.dynamic_threshold = 0.95;
  const GuidedModel guided = make_guided_model(twin, classifier, nullptr, levels, request);
  // Thresholding of (classifier guidance of (CFG)).
  auto cfg = std::make_shared<ClassifierFreeGuidance>(twin, 2.0);
  auto both = std::make_shared<ClassifierGuidedDenoiser>(cfg, classifier, levels, 1.0);
  DynamicThresholding expected(both, levels, 0.95);
  EXPECT_TRUE(torch::equal(guided.denoiser->predict(batch.x, batch.t, batch.y).eps,
                           expected.predict(batch.x, batch.t, batch.y).eps));
  request.classifier_as_mean_shift = true;
  EXPECT_TRUE(make_guided_model(twin, classifier, nullptr, levels, request).mean_shift.has_value());
}

TEST(CfgRules, RejectValuesOutsideTheirRange) {
  auto twin = std::make_shared<LinearConditionalTwin>(TimeKind::discrete_timestep);
  const NoiseLevelMap levels = NoiseLevelMap::discrete(linear_schedule());
  CfgRules rules;
  rules.rescale_phi = 1.2;
  testing::expect_error<InputError>([&] { ClassifierFreeGuidance(twin, 1.0, {}, rules, levels); }, {"--cfg-rescale"});
  rules.rescale_phi = 0.5;
  testing::expect_error<ModelError>([&] { ClassifierFreeGuidance(twin, 1.0, {}, rules); }, {"noise levels"});
  rules = CfgRules{};
  rules.apg = ApgOptions{0.0, -0.5, -1.0};
  testing::expect_error<InputError>([&] { ClassifierFreeGuidance(twin, 1.0, {}, rules, levels); }, {"--apg-threshold"});
}

}  // namespace
}  // namespace guidiff
