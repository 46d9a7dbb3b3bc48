// Samplers against the exact Gaussian-mixture oracle: each step against an independently
// written reference formula, whole runs against exact draws from the (restricted) mixture,
// guidance against its defining identities (s = 0 and w = 0 change nothing; Alg. 2 at s = 1
// with the exact classifier is the conditional model), DDIM determinism and inversion.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/sampling/sample_noise.hpp"
#include "guidiff/sampling/samplers.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"
#include "support/mixture_fixtures.hpp"

namespace guidiff {
namespace {

using testing::diagonal_covariances;
using testing::make_batch;
using testing::make_mixture;

constexpr int64_t kT = 1000;
constexpr int64_t kStatisticalSamples = 4000;
// Five standard errors: a correct sampler fails a comparison with probability ~6e-7.
constexpr double kZ = 5.0;

// The cosine schedule: with a few hundred steps its discretisation bias on the covariance of
// a Gaussian component of variance >= 0.04 stays under ~6% (for a single Gaussian N(m, v)
// the samplers are linear and that bias is computable: DDPM 250 steps 0.934 v at v = 0.04,
// 0.954 v at v = 0.09; DDIM 250 steps 0.974 v and 0.982 v), well inside 5 standard errors
// (~20% for the covariance of a component with ~1300 samples). The linear schedule, and
// tighter components (the demo's variances 0.004-0.01), are biased 10-30% at 250 steps
// (largely the final step's x0 = E[x0 | x_1] shrinkage), so moments are tested on wide ones.
const DiscreteSchedule& full_schedule() {
  static const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::cosine, kT);
  return schedule;
}

DiscreteSchedule respaced(const std::string& spec) {
  return respace(full_schedule(), parse_respacing(spec, kT));
}

// Two classes; class 0 has two unequal lobes (within-class weights 0.4, 0.6), one with a
// correlated covariance. Standard deviations 0.2-0.3, lobes >= 6 of them apart, so
// nearest_component assigns samples almost without error.
GaussianMixture lobed_mixture() {
  auto covariances = torch::zeros({3, 2, 2}, torch::kFloat64);
  covariances[0] = torch::tensor({0.06, 0.02, 0.02, 0.05}, torch::kFloat64).reshape({2, 2});
  covariances[1] = torch::tensor({0.08, 0.0, 0.0, 0.04}, torch::kFloat64).reshape({2, 2});
  covariances[2] = torch::tensor({0.05, 0.0, 0.0, 0.07}, torch::kFloat64).reshape({2, 2});
  return make_mixture({0.2, 0.3, 0.5}, {{-0.9, 0.8}, {0.0, -0.8}, {0.9, 0.6}}, covariances,
                      {0, 0, 1}, 2);
}

// Two heavily overlapping classes: the Bayes class posterior is far from 0/1.
GaussianMixture overlapping_mixture() {
  return make_mixture({0.5, 0.5}, {{-0.25, 0.0}, {0.25, 0.0}},
                      diagonal_covariances({{0.09, 0.09}, {0.09, 0.09}}), {0, 1}, 2);
}

// Two wide components: a smooth p_t, so the DDIM ODE is accurately discretised.
GaussianMixture wide_mixture() {
  return make_mixture({0.4, 0.6}, {{-0.3, 0.1}, {0.3, -0.1}},
                      diagonal_covariances({{0.25, 0.16}, {0.2, 0.3}}), {0, 1}, 2);
}

std::shared_ptr<MixtureDenoiser> discrete_denoiser(const GaussianMixture& mixture, bool conditional) {
  return std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::discrete(full_schedule()), conditional);
}

std::shared_ptr<MixtureClassifier> discrete_classifier(const GaussianMixture& mixture) {
  return std::make_shared<MixtureClassifier>(mixture, NoiseLevelMap::discrete(full_schedule()));
}

torch::Tensor constant_labels(int64_t n, int64_t label) { return torch::full({n}, label, torch::kLong); }
torch::Tensor cycled_labels(int64_t n, int64_t num_classes) {
  return torch::arange(n, torch::kLong).remainder(num_classes);
}

// ---- Statistics: two-sample comparisons with exact mixture draws --------------------------

struct Moments {
  int64_t count = 0;
  torch::Tensor mean;             // [D]
  torch::Tensor mean_se2;         // [D] squared standard errors of the mean
  torch::Tensor covariance;       // [D, D]
  torch::Tensor covariance_se2;   // [D, D] squared standard errors of each entry
};

Moments moments_of(const torch::Tensor& x) {
  Moments m;
  m.count = x.size(0);
  const double n = static_cast<double>(m.count);
  m.mean = x.mean(0);
  const torch::Tensor centred = x - m.mean;
  m.mean_se2 = centred.square().mean(0) / n;
  const torch::Tensor products = centred.unsqueeze(2) * centred.unsqueeze(1);  // [n, D, D]
  m.covariance = products.mean(0);
  m.covariance_se2 = products.var(0, /*unbiased=*/true) / n;
  return m;
}

// The differences of means and covariance entries, each in standard errors of the
// difference; returns the largest.
double expect_same_moments(const torch::Tensor& a, const torch::Tensor& b, const std::string& what) {
  const Moments ma = moments_of(a);
  const Moments mb = moments_of(b);
  const auto mean_z = (ma.mean - mb.mean).abs() / (ma.mean_se2 + mb.mean_se2).sqrt();
  const auto cov_z = (ma.covariance - mb.covariance).abs() / (ma.covariance_se2 + mb.covariance_se2).sqrt();
  EXPECT_LE(mean_z.max().item<double>(), kZ)
      << what << ": means differ\n" << ma.mean << "\nvs\n" << mb.mean;
  EXPECT_LE(cov_z.max().item<double>(), kZ)
      << what << ": covariances differ\n" << ma.covariance << "\nvs\n" << mb.covariance;
  return std::max(mean_z.max().item<double>(), cov_z.max().item<double>());
}

// samples (any float [N, D]) against exact draws from `mixture`: overall moments, and per
// component (assigned by nearest_component for both, so the assignment's truncation
// affects both alike) the weight, mean and covariance, each within kZ standard errors.
void expect_matches_mixture(const torch::Tensor& samples, const GaussianMixture& mixture,
                            uint64_t reference_seed, const std::string& what) {
  const torch::Tensor x = samples.to(torch::kFloat64).reshape({samples.size(0), mixture.dim()});
  ASSERT_TRUE(torch::isfinite(x).all().item<bool>()) << what;
  const torch::Tensor reference = mixture.sample(50000, reference_seed).first;
  double largest_z = expect_same_moments(x, reference, what + " (all samples)");
  const torch::Tensor component = mixture.nearest_component(x);
  const torch::Tensor reference_component = mixture.nearest_component(reference);
  for (int64_t k = 0; k < mixture.num_components(); ++k) {
    const torch::Tensor rows = component.eq(k).nonzero().flatten();
    const torch::Tensor reference_rows = reference_component.eq(k).nonzero().flatten();
    const double p = double(rows.numel()) / double(x.size(0));
    const double q = double(reference_rows.numel()) / double(reference.size(0));
    const double se = std::sqrt(q * (1 - q) / double(x.size(0)) + q * (1 - q) / double(reference.size(0)));
    EXPECT_LE(std::abs(p - q), kZ * se)
        << what << ": weight of component " << k << " is " << p << ", exact " << q;
    largest_z = std::max(largest_z, std::abs(p - q) / se);
    ASSERT_GE(rows.numel(), 30) << what << ": component " << k << " almost empty";
    largest_z = std::max(largest_z, expect_same_moments(x.index_select(0, rows), reference.index_select(0, reference_rows),
                                                        what + " (component " + std::to_string(k) + ")"));
  }
  std::cout << what << ": largest difference " << largest_z << " standard errors (limit " << kZ << ")\n";
}

// Fraction of samples whose nearest component belongs to their label.
double fraction_in_class(const GaussianMixture& mixture, const torch::Tensor& samples,
                         const torch::Tensor& labels) {
  const torch::Tensor x = samples.to(torch::kFloat64).reshape({samples.size(0), mixture.dim()});
  const torch::Tensor classes = mixture.component_class.index_select(0, mixture.nearest_component(x));
  return classes.eq(labels).to(torch::kDouble).mean().item<double>();
}

// Mean Bayes posterior p_0(y_n | x_n) of each sample's label: a smooth class purity.
double mean_label_posterior(const GaussianMixture& mixture, const torch::Tensor& samples,
                            const torch::Tensor& labels) {
  const torch::Tensor x = samples.to(torch::kFloat64).reshape({samples.size(0), mixture.dim()});
  const torch::Tensor log_posterior = mixture.class_log_posterior(x, torch::ones({x.size(0)}, torch::kFloat64));
  return log_posterior.gather(1, labels.unsqueeze(1)).exp().mean().item<double>();
}

// ---- One step against the paper's formula, written out independently ----------------------

// The exact eps of the mixture at abar, float64 (the score view, DDPM eq. 4).
torch::Tensor exact_eps(const GaussianMixture& mixture, const torch::Tensor& x, double abar) {
  const torch::Tensor a = torch::full({x.size(0)}, abar, torch::kFloat64);
  return -std::sqrt(1.0 - abar) * mixture.score(x.to(torch::kFloat64), a);
}

TEST(Ddpm, EachStepIsAlgorithm2WithStepStreamNoise) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = std::make_shared<MixtureDenoiser>(
      mixture, NoiseLevelMap::discrete(make_schedule(BetaScheduleKind::linear, kT)), false);
  // Linear schedule, timesteps 0, 500, 999. (Algorithm 2's 1/sqrt(alpha) form is badly
  // conditioned at the cosine schedule's last step, where the respaced beta is ~1: the
  // float64 reference and the float32 sampler would differ by rounding alone.)
  const DiscreteSchedule schedule = respace(make_schedule(BetaScheduleKind::linear, kT), parse_respacing("3", kT));
  const SampleNoise noise(11);
  const SampleBatch batch = make_batch(16, 2, 11);
  DdpmOptions options;
  options.keep_trajectory = true;
  const SamplingResult result = sample_ddpm(*model, schedule, batch, noise, options);
  ASSERT_EQ(result.trajectory.size(), 4u);
  EXPECT_TRUE(torch::equal(result.trajectory.front(), batch.x_T));
  EXPECT_TRUE(torch::equal(result.trajectory.back(), result.samples));

  // Reference: x_{i-1} = 1/sqrt(alpha_i) (x_i - beta_i/sqrt(1 - abar_i) eps) + sigma_i z
  // (Ho et al. Algorithm 2) with sigma_i^2 = beta~_i, z from stream i, none at i = 0.
  torch::Tensor x = batch.x_T.to(torch::kFloat64);
  for (int64_t i = 2; i >= 0; --i) {
    const double abar = schedule.alphas_cumprod[i].item<double>();
    const double abar_prev = i > 0 ? schedule.alphas_cumprod[i - 1].item<double>() : 1.0;
    const double beta = 1.0 - abar / abar_prev;
    const double beta_tilde = (1.0 - abar_prev) / (1.0 - abar) * beta;
    const torch::Tensor eps = exact_eps(mixture, x, abar);
    x = (x - beta / std::sqrt(1.0 - abar) * eps) / std::sqrt(1.0 - beta);
    if (i > 0) x = x + std::sqrt(beta_tilde) * noise.normal(batch.sample_indices, i, {2}).to(torch::kFloat64);
    // float32 sampler vs float64 reference: the model's eps is rounded to float32 (2^-24 |eps|,
    // |eps| <= 6.8, Box-Muller's largest |x_T|) and t = 999 scales it by 1/sqrt(alpha) ~ 44:
    // < 2e-5, plus a few float32 roundings of |x|. 1e-4 + 1e-4 |x| leaves 5x.
    EXPECT_TRUE(torch::allclose(result.trajectory[3 - i].to(torch::kFloat64), x, 1e-4, 1e-4))
        << "step " << i;
    x = result.trajectory[3 - i].to(torch::kFloat64);  // compare each step from the same start
  }
}

TEST(Ddim, EachStepIsEquation12WithSigmaOfEquation16) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = discrete_denoiser(mixture, false);
  const DiscreteSchedule schedule = respaced("ddim4");
  const SampleNoise noise(5);
  const SampleBatch batch = make_batch(16, 2, 5);
  DdimOptions options;
  options.eta = 0.7;
  options.keep_trajectory = true;
  const SamplingResult result = sample_ddim(*model, schedule, batch, noise, options);
  ASSERT_EQ(result.trajectory.size(), 5u);
  torch::Tensor x = batch.x_T.to(torch::kFloat64);
  for (int64_t i = 3; i >= 0; --i) {
    const double abar = schedule.alphas_cumprod[i].item<double>();
    const double abar_prev = i > 0 ? schedule.alphas_cumprod[i - 1].item<double>() : 1.0;
    const torch::Tensor eps = exact_eps(mixture, x, abar);
    const torch::Tensor x0 = (x - std::sqrt(1.0 - abar) * eps) / std::sqrt(abar);
    const double sigma = 0.7 * std::sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev));
    x = std::sqrt(abar_prev) * x0 + std::sqrt(1.0 - abar_prev - sigma * sigma) * eps;
    if (i > 0) x = x + sigma * noise.normal(batch.sample_indices, i, {2}).to(torch::kFloat64);
    // float32 sampler vs float64 reference: x0 and eps are rounded to float32 (2^-24 relative)
    // and scaled by at most 1/sqrt(abar) = 2.6 (t = 750): ~1e-6 against 1e-4 + 1e-4 |x|.
    EXPECT_TRUE(torch::allclose(result.trajectory[4 - i].to(torch::kFloat64), x, 1e-4, 1e-4))
        << "step " << i;
    x = result.trajectory[4 - i].to(torch::kFloat64);
  }
}

TEST(CfgContinuous, EachStepIsHoSalimansAlgorithm2) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), true);
  const SampleNoise noise(3);
  const SampleBatch batch = make_batch(16, 2, 3, cycled_labels(16, 4));
  CfgContinuousOptions options;
  options.steps = 4;
  options.variance_exponent = 0.3;
  options.keep_trajectory = true;
  const SamplingResult result = sample_cfg_continuous(*model, batch, noise, options);
  ASSERT_EQ(result.trajectory.size(), 5u);
  const double v = 0.3;
  torch::Tensor z = batch.x_T.to(torch::kFloat64);
  for (int64_t i = 0; i < 4; ++i) {
    const auto lambda_at = [&](int64_t k) {
      return options.schedule.lambda_of_u(torch::tensor({1.0 - double(k) / 4.0}, torch::kFloat64)).item<double>();
    };
    const double l = lambda_at(i);
    const double alpha = std::sqrt(1.0 / (1.0 + std::exp(-l)));
    const double sigma = std::sqrt(1.0 / (1.0 + std::exp(l)));
    const torch::Tensor a = torch::full({16}, alpha * alpha, torch::kFloat64);
    const torch::Tensor eps = -sigma * mixture.score(z, a, batch.labels);
    const torch::Tensor x_pred = (z - sigma * eps) / alpha;
    if (i == 3) {
      z = x_pred;
    } else {
      const double l_next = lambda_at(i + 1);
      const double alpha_next = std::sqrt(1.0 / (1.0 + std::exp(-l_next)));
      const double sigma2_next = 1.0 / (1.0 + std::exp(l_next));
      const double r = std::exp(l - l_next);
      const double variance = std::pow((1 - r) * sigma2_next, 1 - v) * std::pow((1 - r) * sigma * sigma, v);
      z = r * (alpha_next / alpha) * z + (1 - r) * alpha_next * x_pred +
          std::sqrt(variance) * noise.normal(batch.sample_indices, i, {2}).to(torch::kFloat64);
    }
    // The first step divides the float32 eps's rounding (2^-24 |eps|) by alpha = 4.54e-5
    // (lambda_min = -20) and multiplies it back by alpha' = 0.383 (u = 0.75): 5.0e-4 |eps|,
    // with |eps| ~ |x_T| <= 6.8 (Box-Muller's largest): 3.4e-3. Later steps: ~1e-6.
    EXPECT_TRUE(torch::allclose(result.trajectory[i + 1].to(torch::kFloat64), z, 4e-3, 4e-3))
        << "step " << i << "\n" << result.trajectory[i + 1] << "\n" << z;
    z = result.trajectory[i + 1].to(torch::kFloat64);
  }
}

// ---- Whole runs reproduce the data distribution -----------------------------------------

TEST(Ddpm, UnguidedSamplesReproduceTheMixture) {
  const GaussianMixture mixture = lobed_mixture();
  auto model = discrete_denoiser(mixture, false);
  const SampleBatch batch = make_batch(kStatisticalSamples, 2, 101);
  const SamplingResult result = sample_ddpm(*model, respaced("250"), batch, SampleNoise(101), DdpmOptions{});
  expect_matches_mixture(result.samples, mixture, 1, "DDPM 250 steps");
}

TEST(Ddim, DeterministicSamplesReproduceTheMixture) {
  const GaussianMixture mixture = lobed_mixture();
  auto model = discrete_denoiser(mixture, false);
  // (Seed 102 drew an x_T whose deterministic image has a 4.2-standard-error low variance in
  // one component -- also at 1000 steps, so a property of that draw, not of the sampler;
  // seeds 100-111 otherwise give |z| < 3 and 40000 samples show no bias.)
  const SampleBatch batch = make_batch(kStatisticalSamples, 2, 103);
  const SamplingResult result = sample_ddim(*model, respaced("ddim250"), batch, SampleNoise(103), DdimOptions{});
  expect_matches_mixture(result.samples, mixture, 2, "DDIM eta=0 250 steps");
}

TEST(CfgContinuous, ConditionalSamplesReproduceTheClassMixture) {
  // w = 0 through the CFG wrapper (only the conditional forward runs), v = 0.3, 256 steps.
  const GaussianMixture mixture = lobed_mixture();
  auto base = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), true);
  ClassifierFreeGuidance model(base, 0.0);
  const SampleBatch batch = make_batch(kStatisticalSamples, 2, 103, constant_labels(kStatisticalSamples, 0));
  CfgContinuousOptions options;
  options.steps = 256;
  options.variance_exponent = 0.3;
  const SamplingResult result = sample_cfg_continuous(model, batch, SampleNoise(103), options);
  expect_matches_mixture(result.samples, mixture.restricted_to_class(0), 3, "cfg-continuous v=0.3 class 0");
}

// ---- Guidance ---------------------------------------------------------------------------

TEST(ClassifierGuidance, ScaleOneLandsInTheClassAlgorithm1Ddpm) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = discrete_denoiser(mixture, false);
  const ClassifierMeanShift shift(discrete_classifier(mixture), 1.0);
  const torch::Tensor labels = cycled_labels(2000, 4);
  DdpmOptions options;
  options.mean_shift = &shift;
  const SamplingResult result =
      sample_ddpm(*model, respaced("100"), make_batch(2000, 2, 104, labels), SampleNoise(104), options);
  std::cout << "in-class fraction, DDPM Alg. 1 s=1: " << fraction_in_class(mixture, result.samples, labels) << "\n";
  // Statistical: the demo's classes overlap ~1e-6 per draw, so 0.98 of 2000 leaves 40 draws
  // for the 100-step discretisation (a 1% rate has standard error 0.2% here).
  EXPECT_GE(fraction_in_class(mixture, result.samples, labels), 0.98);
}

TEST(ClassifierGuidance, ScaleOneLandsInTheClassAlgorithm2Ddim) {
  const GaussianMixture mixture = GaussianMixture::demo();
  ClassifierGuidedDenoiser model(discrete_denoiser(mixture, false), discrete_classifier(mixture),
                                 NoiseLevelMap::discrete(full_schedule()), 1.0);
  const torch::Tensor labels = cycled_labels(2000, 4);
  const SamplingResult result =
      sample_ddim(model, respaced("ddim100"), make_batch(2000, 2, 105, labels), SampleNoise(105), DdimOptions{});
  std::cout << "in-class fraction, DDIM Alg. 2 s=1: " << fraction_in_class(mixture, result.samples, labels) << "\n";
  // Statistical, as for Algorithm 1 above.
  EXPECT_GE(fraction_in_class(mixture, result.samples, labels), 0.98);
}

TEST(ClassifierGuidance, ScaleZeroIsBitIdenticalToUnguided) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto base = discrete_denoiser(mixture, false);
  auto classifier = discrete_classifier(mixture);
  const DiscreteSchedule schedule = respaced("50");
  const SampleBatch batch = make_batch(64, 2, 106, cycled_labels(64, 4));
  const SampleNoise noise(106);

  const ClassifierMeanShift zero_shift(classifier, 0.0);
  DdpmOptions guided_options;
  guided_options.mean_shift = &zero_shift;
  EXPECT_TRUE(torch::equal(sample_ddpm(*base, schedule, batch, noise, guided_options).samples,
                           sample_ddpm(*base, schedule, batch, noise, DdpmOptions{}).samples));

  ClassifierGuidedDenoiser zero_guided(base, classifier, NoiseLevelMap::discrete(full_schedule()), 0.0);
  DdimOptions ddim;
  ddim.eta = 1.0;
  EXPECT_TRUE(torch::equal(sample_ddim(zero_guided, schedule, batch, noise, ddim).samples,
                           sample_ddim(*base, schedule, batch, noise, ddim).samples));
}

TEST(ClassifierGuidance, PurityIncreasesWithScale) {
  const GaussianMixture mixture = overlapping_mixture();
  auto base = discrete_denoiser(mixture, false);
  auto classifier = discrete_classifier(mixture);
  const int64_t n = 1000;
  const torch::Tensor labels = cycled_labels(n, 2);
  const SampleBatch batch = make_batch(n, 2, 107, labels);
  const DiscreteSchedule schedule = respaced("50");
  std::vector<double> ddpm_purity, ddim_purity;
  for (const double s : {0.0, 0.5, 1.0, 2.0, 4.0}) {
    const ClassifierMeanShift shift(classifier, s);
    DdpmOptions ddpm;
    ddpm.mean_shift = &shift;
    ddpm_purity.push_back(mean_label_posterior(
        mixture, sample_ddpm(*base, schedule, batch, SampleNoise(107), ddpm).samples, labels));
    ClassifierGuidedDenoiser guided(base, classifier, NoiseLevelMap::discrete(full_schedule()), s);
    ddim_purity.push_back(mean_label_posterior(
        mixture, sample_ddim(guided, schedule, batch, SampleNoise(107), DdimOptions{}).samples, labels));
  }
  // Unguided, labels carry no information: purity ~ 1/2 (within 5 standard errors; a
  // posterior in [0, 1] has standard deviation <= 1/2).
  EXPECT_NEAR(ddpm_purity[0], 0.5, 5 * 0.5 / std::sqrt(double(n)));
  EXPECT_NEAR(ddim_purity[0], 0.5, 5 * 0.5 / std::sqrt(double(n)));
  std::cout << "purity (mean p(y | x)) at s = 0, 0.5, 1, 2, 4: DDPM";
  for (const double p : ddpm_purity) std::cout << " " << p;
  std::cout << "; DDIM";
  for (const double p : ddim_purity) std::cout << " " << p;
  std::cout << "\n";
  // Every scale reuses x_T and the noise (common random numbers), so differences between
  // scales carry little sampling noise; 0.01 asks for a visible increase at each step.
  for (size_t k = 1; k < ddpm_purity.size(); ++k) {
    EXPECT_GT(ddpm_purity[k], ddpm_purity[k - 1] + 0.01) << "DDPM scale index " << k;
    EXPECT_GT(ddim_purity[k], ddim_purity[k - 1] + 0.01) << "DDIM scale index " << k;
  }
  // s = 4 samples p(x) p(y | x)^4: strongly class-pure; 1000 draws, standard error <= 0.016.
  EXPECT_GT(ddpm_purity.back(), 0.9);
  EXPECT_GT(ddim_purity.back(), 0.9);
}

TEST(ClassifierGuidance, ScaleOneWithTheExactClassifierSamplesTheClassConditional) {
  // p(x | y) = p(x) p(y | x) / p(y): at s = 1 with the exact classifier, guided samples
  // follow the class's restricted mixture, as the conditional model's (CFG w = 0) do.
  const GaussianMixture mixture = lobed_mixture();
  const GaussianMixture class0 = mixture.restricted_to_class(0);
  const int64_t n = kStatisticalSamples;
  const torch::Tensor labels = constant_labels(n, 0);
  const DiscreteSchedule schedule = respaced("250");

  const ClassifierMeanShift shift(discrete_classifier(mixture), 1.0);
  DdpmOptions guided_options;
  guided_options.mean_shift = &shift;
  const torch::Tensor guided = sample_ddpm(*discrete_denoiser(mixture, false), schedule,
                                           make_batch(n, 2, 108, labels), SampleNoise(108), guided_options)
                                   .samples;
  expect_matches_mixture(guided, class0, 4, "DDPM classifier guidance s=1 class 0");

  ClassifierFreeGuidance conditional(discrete_denoiser(mixture, true), 0.0);
  const torch::Tensor cfg = sample_ddpm(conditional, schedule, make_batch(n, 2, 109, labels),
                                        SampleNoise(109), DdpmOptions{})
                                .samples;
  expect_matches_mixture(cfg, class0, 5, "DDPM CFG w=0 class 0");
  expect_same_moments(guided.to(torch::kFloat64), cfg.to(torch::kFloat64), "guided s=1 vs CFG w=0");
}

TEST(ClassifierGuidance, Algorithm2AtScaleOneEqualsTheConditionalModel) {
  // eps - sqrt(1 - abar) grad log p_t(y | x) = -sqrt(1 - abar) grad log p_t(x | y): the same
  // eps up to rounding, so the deterministic DDIM paths agree.
  const GaussianMixture mixture = lobed_mixture();
  ClassifierGuidedDenoiser guided(discrete_denoiser(mixture, false), discrete_classifier(mixture),
                                  NoiseLevelMap::discrete(full_schedule()), 1.0);
  auto conditional = discrete_denoiser(mixture, true);
  const SampleBatch batch = make_batch(500, 2, 110, cycled_labels(500, 2));
  const DiscreteSchedule schedule = respaced("ddim50");
  const torch::Tensor a = sample_ddim(guided, schedule, batch, SampleNoise(110), DdimOptions{}).samples;
  const torch::Tensor b = sample_ddim(*conditional, schedule, batch, SampleNoise(110), DdimOptions{}).samples;
  // Only float32 rounding separates the two eps: the guided one goes through float32 logits
  // and log_softmax (kernel-dependent, ~4u of each class probability) and one more float32
  // subtraction, ~1e-6 per step; 50 steps add up to <= 5e-5, and samples near a lobe boundary
  // see the flow expand by up to p_T / p_0 ~ 20 (lobes 6 sd apart): <= 1e-3 absolute.
  EXPECT_TRUE(torch::allclose(a, b, 1e-3, 1e-3)) << (a - b).abs().max();
}

TEST(ClassifierFreeGuidance, WeightZeroIsBitIdenticalToTheConditionalSampler) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto conditional = discrete_denoiser(mixture, true);
  ClassifierFreeGuidance cfg(conditional, 0.0);
  const SampleBatch batch = make_batch(64, 2, 111, cycled_labels(64, 4));
  const DiscreteSchedule schedule = respaced("50");
  EXPECT_TRUE(torch::equal(sample_ddpm(cfg, schedule, batch, SampleNoise(111), DdpmOptions{}).samples,
                           sample_ddpm(*conditional, schedule, batch, SampleNoise(111), DdpmOptions{}).samples));
  auto continuous = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), true);
  ClassifierFreeGuidance continuous_cfg(continuous, 0.0);
  CfgContinuousOptions options;
  options.steps = 32;
  EXPECT_TRUE(torch::equal(sample_cfg_continuous(continuous_cfg, batch, SampleNoise(111), options).samples,
                           sample_cfg_continuous(*continuous, batch, SampleNoise(111), options).samples));
}

// ---- DDIM determinism and inversion ------------------------------------------------------

TEST(Ddim, EtaZeroIsDeterministicAndInvertible) {
  const GaussianMixture mixture = wide_mixture();
  auto model = discrete_denoiser(mixture, false);
  const DiscreteSchedule& schedule = full_schedule();  // 1000 steps: a fine ODE discretisation
  const SampleBatch batch = make_batch(256, 2, 112);
  // eta = 0 uses no noise: a different noise seed must not matter.
  const torch::Tensor first = sample_ddim(*model, schedule, batch, SampleNoise(112), DdimOptions{}).samples;
  const torch::Tensor second = sample_ddim(*model, schedule, batch, SampleNoise(999), DdimOptions{}).samples;
  // The same operations on the same inputs (no noise is drawn): bitwise.
  EXPECT_TRUE(torch::equal(first, second));

  const torch::Tensor recovered = ddim_invert(*model, schedule, first, {}, SamplerCommon{});
  ASSERT_EQ(recovered.sizes(), batch.x_T.sizes());
  // The inversion treats the data as x at step 0 (as guided-diffusion does), a first-order
  // error of order sqrt(1 - abar_0) (0.006 for this schedule) carried through the flow; the
  // rest is the O(1/T) discretisation of the ODE.
  const double max_error = (recovered - batch.x_T).abs().max().item<double>();
  std::cout << "DDIM inversion error: max " << max_error << ", mean "
            << (recovered - batch.x_T).abs().mean().item<double>() << "\n";
  // Measured: max 0.0103, mean 0.0026 (x_T ~ N(0, I)); the bounds leave a factor ~2.5.
  // Not a rounding bound: float32 rounding adds ~1e-6 here, so the method's error, and these
  // bounds on it, are the same on every CPU.
  EXPECT_LT(max_error, 0.025) << "max |x_T - invert(sample(x_T))|";
  EXPECT_LT((recovered - batch.x_T).abs().mean().item<double>(), 0.006);
}

// ---- Input validation --------------------------------------------------------------------

TEST(Samplers, RejectNonFiniteStartNamingXT) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = discrete_denoiser(mixture, false);
  SampleBatch batch = make_batch(4, 2, 1);
  batch.x_T[1][0] = std::nan("");
  try {
    sample_ddpm(*model, respaced("10"), batch, SampleNoise(1), DdpmOptions{});
    FAIL() << "expected NumericError";
  } catch (const NumericError& error) {
    EXPECT_NE(std::string(error.what()).find("x_T"), std::string::npos) << error.what();
  }
  EXPECT_THROW(sample_ddim(*model, respaced("10"), batch, SampleNoise(1), DdimOptions{}), NumericError);
}

TEST(Samplers, RejectAModelOfTheWrongTimeKind) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto discrete = discrete_denoiser(mixture, false);
  auto continuous = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), false);
  const SampleBatch batch = make_batch(4, 2, 1);
  EXPECT_THROW(sample_ddpm(*continuous, respaced("10"), batch, SampleNoise(1), DdpmOptions{}), ModelError);
  EXPECT_THROW(sample_ddim(*continuous, respaced("10"), batch, SampleNoise(1), DdimOptions{}), ModelError);
  EXPECT_THROW(ddim_invert(*continuous, respaced("10"), batch.x_T, {}, SamplerCommon{}), ModelError);
  EXPECT_THROW(sample_cfg_continuous(*discrete, batch, SampleNoise(1), CfgContinuousOptions{}), ModelError);
}

TEST(Samplers, RejectMalformedBatches) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = discrete_denoiser(mixture, false);
  SampleBatch batch = make_batch(4, 2, 1);
  batch.labels = torch::zeros({3}, torch::kLong);  // wrong length
  EXPECT_THROW(sample_ddpm(*model, respaced("10"), batch, SampleNoise(1), DdpmOptions{}), InputError);
  batch = make_batch(4, 2, 1);
  batch.sample_indices = torch::Tensor();  // DDPM needs the noise streams
  EXPECT_THROW(sample_ddpm(*model, respaced("10"), batch, SampleNoise(1), DdpmOptions{}), InputError);
  batch = make_batch(4, 2, 1);
  DdimOptions negative_eta;
  negative_eta.eta = -0.5;
  EXPECT_THROW(sample_ddim(*model, respaced("10"), batch, SampleNoise(1), negative_eta), InputError);
  auto continuous = std::make_shared<MixtureDenoiser>(mixture, NoiseLevelMap::log_snr(), false);
  CfgContinuousOptions bad_v;
  bad_v.variance_exponent = 1.5;
  EXPECT_THROW(sample_cfg_continuous(*continuous, batch, SampleNoise(1), bad_v), InputError);
}

TEST(Samplers, ReportEveryStep) {
  const GaussianMixture mixture = GaussianMixture::demo();
  auto model = discrete_denoiser(mixture, false);
  std::vector<std::pair<int64_t, int64_t>> calls;
  DdimOptions options;
  options.on_step = [&calls](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  sample_ddim(*model, respaced("ddim20"), make_batch(4, 2, 1), SampleNoise(1), options);
  ASSERT_EQ(calls.size(), 20u);
  for (size_t k = 0; k < calls.size(); ++k) {
    EXPECT_EQ(calls[k].first, int64_t(k) + 1);
    EXPECT_EQ(calls[k].second, 20);
  }
}

}  // namespace
}  // namespace guidiff
