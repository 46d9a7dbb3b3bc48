// Tests of the Gaussian-mixture oracle: its density against an explicit 2x2 formula, its
// score against finite differences, its eps in the pure-noise limit, its class posterior
// and gradient, exact sampling, restriction to a class, validation and the JSON reader.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/noise_level.hpp"

using namespace guidiff;

namespace {

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

// Three full-covariance (rotated) components, two classes: exercises the non-diagonal path.
GaussianMixture full_covariance_mixture() {
  GaussianMixture m;
  m.num_classes = 2;
  m.weights = torch::tensor({0.5, 0.3, 0.2}, kF64);
  m.means = torch::tensor({0.5, -0.2, -0.4, 0.3, 0.1, 0.6}, kF64).view({3, 2});
  m.covariances =
      torch::tensor({0.09, 0.03, 0.03, 0.05, 0.04, -0.01, -0.01, 0.06, 0.02, 0.0, 0.0, 0.08}, kF64)
          .view({3, 2, 2});
  m.component_class = torch::tensor({0, 1, 1}, torch::kInt64);
  return m;
}

template <class E, class F>
void expect_error_naming(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an exception naming '" << needle << "'";
  } catch (const E& error) {
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

// log(w_k N(x; sqrt(abar) m_k, abar S_k + (1 - abar) I)) written out for 2-D with the
// hand-made 2x2 inverse and determinant.
double explicit_log_joint(const GaussianMixture& m, int64_t k, double x0, double x1, double abar) {
  const auto mean = m.means[k];
  const auto cov = m.covariances[k];
  const double a = abar * cov[0][0].item<double>() + (1.0 - abar);
  const double b = abar * cov[0][1].item<double>();
  const double d = abar * cov[1][1].item<double>() + (1.0 - abar);
  const double det = a * d - b * b;
  const double r0 = x0 - std::sqrt(abar) * mean[0].item<double>();
  const double r1 = x1 - std::sqrt(abar) * mean[1].item<double>();
  const double mahalanobis = (d * r0 * r0 - 2.0 * b * r0 * r1 + a * r1 * r1) / det;
  return std::log(m.weights[k].item<double>()) - std::log(2.0 * M_PI) - 0.5 * std::log(det) -
         0.5 * mahalanobis;
}

// Central differences of f: [N, D] -> [N] (each row a function of its own point only).
torch::Tensor finite_difference_gradient(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                         const torch::Tensor& x, double h) {
  auto gradient = torch::zeros_like(x);
  for (int64_t j = 0; j < x.size(1); ++j) {
    auto step = torch::zeros_like(x);
    step.select(1, j).fill_(h);
    gradient.select(1, j).copy_((f(x + step) - f(x - step)) / (2.0 * h));
  }
  return gradient;
}

std::filesystem::path fresh_temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() /
             ("guidiff_test_mixture_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

}  // namespace

TEST(GaussianMixture, LogJointMatchesExplicitTwoByTwoDensity) {
  for (const auto& mixture : {full_covariance_mixture(), GaussianMixture::demo(2)}) {
    const auto x = torch::tensor({0.3, -0.1, -0.8, 0.9, 1.5, 0.2}, kF64).view({3, 2});
    const auto abar = torch::tensor({1.0, 0.6, 0.05}, kF64);
    const auto lj = mixture.log_joint(x, abar);
    ASSERT_EQ(lj.sizes(), (std::vector<int64_t>{3, mixture.num_components()}));
    ASSERT_EQ(lj.scalar_type(), torch::kFloat64);
    for (int64_t n = 0; n < 3; ++n) {
      for (int64_t k = 0; k < mixture.num_components(); ++k) {
        const double expected = explicit_log_joint(mixture, k, x[n][0].item<double>(),
                                                   x[n][1].item<double>(), abar[n].item<double>());
        // float64 both ways (eigh vs a 2x2 inverse): a few ulps times the covariances'
        // condition (< 5), ~1e-14 relative; 1e-10 admits any LAPACK's backward-stable eigh.
        EXPECT_NEAR(lj[n][k].item<double>(), expected, 1e-10 * (1.0 + std::abs(expected)))
            << "n=" << n << " k=" << k;
      }
    }
  }
}

TEST(GaussianMixture, ScoreMatchesFiniteDifferencesOfLogDensity) {
  torch::manual_seed(11);
  for (const auto& mixture : {full_covariance_mixture(), GaussianMixture::demo(3)}) {
    const auto x = torch::randn({6, mixture.dim()}, kF64) * 0.7;
    const auto abar = torch::tensor({1.0, 0.9, 0.5, 0.2, 0.01, 0.7}, kF64);
    auto log_density = [&](const torch::Tensor& p) {
      return torch::logsumexp(mixture.log_joint(p, abar), 1);
    };
    // float64 central differences, h = 1e-6: rounding ~ few u |f| / h < 1e-7 for |f| < 300,
    // truncation h^2 |f'''| / 6 < 3e-6 for |f'''| < 2e7 (slope 250 of the responsibilities
    // cubed at a 0.004 variance). 1e-5 + 1e-5 |score| covers both; a wrong score is O(1) off.
    const auto expected = finite_difference_gradient(log_density, x, 1e-6);
    const auto score = mixture.score(x, abar);
    EXPECT_TRUE(torch::allclose(score, expected, 1e-5, 1e-5)) << score << expected;

    // Conditional score: the density restricted to y's components; y == C is the marginal.
    const auto y = torch::tensor({int64_t{0}, int64_t{1}, int64_t{1}, int64_t{0}, int64_t{1}, mixture.num_classes}, torch::kInt64);
    const auto conditional = mixture.score(x, abar, y);
    for (int64_t n = 0; n < x.size(0); ++n) {
      const int64_t c = y[n].item<int64_t>();
      const auto row = x.slice(0, n, n + 1);
      const auto row_abar = abar.slice(0, n, n + 1);
      if (c == mixture.num_classes) {  // masks nothing: the same float64 ops on the same row
        EXPECT_TRUE(torch::equal(conditional[n], score[n]));
        continue;
      }
      const auto restricted = mixture.restricted_to_class(c);
      auto class_log_density = [&](const torch::Tensor& p) {
        return torch::logsumexp(restricted.log_joint(p, row_abar), 1);
      };
      const auto fd = finite_difference_gradient(class_log_density, row, 1e-6)[0];
      EXPECT_TRUE(torch::allclose(conditional[n], fd, 1e-5, 1e-5)) << conditional[n] << fd;
    }
  }
}

TEST(GaussianMixture, ScoreRejectsLabelsOutOfRange) {
  const auto mixture = full_covariance_mixture();
  const auto x = torch::zeros({2, 2}, kF64);
  const auto abar = torch::full({2}, 0.5, kF64);
  EXPECT_THROW(mixture.score(x, abar, torch::tensor({0, 3}, torch::kInt64)), InputError);
  EXPECT_THROW(mixture.score(x, abar, torch::tensor({-1, 0}, torch::kInt64)), InputError);
  EXPECT_THROW(mixture.score(x, torch::full({2}, 1.5, kF64)), InputError);
  EXPECT_THROW(mixture.score(torch::zeros({2, 3}, kF64), abar), InputError);
}

TEST(MixtureDenoiser, EpsIsScaledScoreAndBecomesTheNoiseWhenAbarVanishes) {
  torch::manual_seed(11);
  const auto mixture = GaussianMixture::demo(2);
  // Log-SNR time: lambda = -20 gives abar = sigmoid(-20) ~ 2e-9, p_t ~ N(0, I), eps ~ x_t.
  MixtureDenoiser noisy(mixture, NoiseLevelMap::log_snr(), /*class_conditional=*/false);
  const auto x_t = torch::randn({8, 2});
  const auto far = noisy.predict(x_t, torch::full({8}, -20.0f), {});
  // Not rounding but the model: eps - x_t ~ sqrt(abar) |mean| <= 4.5e-5 (|mean| <= 1), plus
  // abar |x| ~ 1e-8 and float32 rounding ~2e-7; 1e-4 holds it, eps = score would not.
  ASSERT_EQ(far.eps.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(far.variance_output.defined());
  EXPECT_TRUE(torch::allclose(far.eps, x_t, 1e-4, 1e-4)) << far.eps - x_t;

  // Discrete time: eps = -sqrt(1 - abar_t) score, per sample timestep, any sample shape.
  const auto schedule = make_schedule(BetaScheduleKind::linear, 1000);
  MixtureDenoiser conditional(mixture, NoiseLevelMap::discrete(schedule), /*class_conditional=*/true);
  const auto t = torch::tensor({0, 10, 250, 999}, torch::kInt64);
  const auto y = torch::tensor({0, 4, 2, 3}, torch::kInt64);
  const auto x = torch::randn({4, 1, 2});
  const auto eps = conditional.predict(x, t, y).eps;
  ASSERT_EQ(eps.sizes(), x.sizes());
  const auto abar = schedule.alphas_cumprod.index_select(0, t);
  const auto expected = -(1.0 - abar).sqrt().unsqueeze(1) * mixture.score(x.view({4, 2}).to(torch::kFloat64), abar, y);
  // The same float64 maths; eps is then rounded to float32: 2^-24 |eps| = 6e-8 relative.
  EXPECT_TRUE(torch::allclose(eps.view({4, 2}).to(torch::kFloat64), expected, 1e-5, 1e-5));

  EXPECT_THROW(conditional.predict(x, t, {}), InputError);
  EXPECT_THROW(conditional.predict(x, t, torch::tensor({0, 5, 0, 0}, torch::kInt64)), InputError);
  EXPECT_THROW(conditional.predict(torch::zeros({4, 3}), t, y), InputError);
  EXPECT_EQ(conditional.num_classes(), 4);
  EXPECT_EQ(noisy.num_classes(), 0);
  EXPECT_EQ(noisy.time_kind(), TimeKind::log_snr);
}

TEST(GaussianMixture, ClassPosteriorSumsToOneAndItsGradientMatchesFiniteDifferences) {
  torch::manual_seed(11);
  for (const auto& mixture : {full_covariance_mixture(), GaussianMixture::demo(2)}) {
    const auto x = torch::randn({5, 2}, kF64) * 0.6;
    const auto abar = torch::tensor({0.99, 0.8, 0.5, 0.3, 0.1}, kF64);
    const auto posterior = mixture.class_log_posterior(x, abar);
    ASSERT_EQ(posterior.sizes(), (std::vector<int64_t>{5, mixture.num_classes}));
    // float64 logsumexp, exp and a sum of <= 4 terms: a few ulps of 1 (~1e-15).
    EXPECT_TRUE(torch::allclose(posterior.exp().sum(1), torch::ones({5}, kF64), 0, 1e-12));

    // Independent value: sum of class components' densities over the total.
    const auto joint = mixture.log_joint(x, abar).exp();
    const auto member = mixture.component_class.eq(0);
    const auto class0 = (joint * member.to(torch::kFloat64)).sum(1) / joint.sum(1);
    // float64: exp(L) has relative error ~u |L| (|L| < 100), ~1e-14; 1e-10 relative holds it.
    EXPECT_TRUE(torch::allclose(posterior.select(1, 0).exp(), class0, 1e-10, 1e-12));

    for (int64_t c = 0; c < mixture.num_classes; ++c) {
      auto xg = x.clone().requires_grad_(true);
      const auto grad = torch::autograd::grad({mixture.class_log_posterior(xg, abar).select(1, c).sum()}, {xg})[0];
      auto log_p_c = [&](const torch::Tensor& p) { return mixture.class_log_posterior(p, abar).select(1, c); };
      const auto fd = finite_difference_gradient(log_p_c, x, 1e-6);
      // Central differences as in ScoreMatchesFiniteDifferencesOfLogDensity.
      EXPECT_TRUE(torch::allclose(grad, fd, 1e-5, 1e-5)) << grad << fd;
      // log p(c | x) = log p(x | c) + log p(c) - log p(x): its gradient is the score difference.
      // float64 autograd vs the analytic scores (|score| < 300): a few ulps, ~1e-13.
      const auto labels = torch::full({5}, c, torch::kInt64);
      EXPECT_TRUE(torch::allclose(grad, mixture.score(x, abar, labels) - mixture.score(x, abar), 1e-9, 1e-9));
    }
  }
}

TEST(MixtureClassifier, LogitsAreTheClassPosteriorAndStayOnTheGraph) {
  torch::manual_seed(11);
  const auto mixture = GaussianMixture::demo(2);
  MixtureClassifier classifier(mixture, NoiseLevelMap::log_snr());
  auto x = torch::randn({3, 2}).requires_grad_(true);
  const auto lambda = torch::tensor({-2.0f, 0.0f, 3.0f});
  const auto logits = classifier.logits(x, lambda);
  ASSERT_EQ(logits.scalar_type(), torch::kFloat32);
  ASSERT_TRUE(logits.requires_grad());
  const auto abar = torch::sigmoid(lambda.to(torch::kFloat64));
  const auto expected = mixture.class_log_posterior(x.detach().to(torch::kFloat64), abar);
  // The float64 posterior rounded to float32: 2^-24 relative; 1e-5 is ~170 times that.
  EXPECT_TRUE(torch::allclose(logits.detach().to(torch::kFloat64), expected, 1e-5, 1e-5));
  const auto grad = torch::autograd::grad({logits.select(1, 2).sum()}, {x})[0];
  const auto labels = torch::full({3}, 2, torch::kInt64);
  const auto exact = mixture.score(x.detach().to(torch::kFloat64), abar, labels) -
                     mixture.score(x.detach().to(torch::kFloat64), abar);
  // The backward runs in float64 (ones through select and sum, then the float64 graph) and
  // is rounded to float32 at x: 2^-24 = 6e-8 relative, plus ~1e-13 of float64 differences.
  EXPECT_TRUE(torch::allclose(grad.to(torch::kFloat64), exact, 1e-6, 1e-6));
  EXPECT_EQ(classifier.num_classes(), 4);
}

TEST(GaussianMixture, SampleMomentsMatchEachClass) {
  const auto mixture = full_covariance_mixture();
  const int64_t n = 200000;
  const auto [x, labels] = mixture.sample(n, 1234);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{n, 2}));
  ASSERT_EQ(labels.scalar_type(), torch::kInt64);
  // Class frequencies: class 0 has weight 0.5, class 1 has 0.5 (0.3 + 0.2). Binomial:
  // 5 standard errors sqrt(p (1 - p) / n).
  const double fraction0 = labels.eq(0).to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(fraction0, 0.5, 5.0 * std::sqrt(0.25 / n));
  for (int64_t c = 0; c < 2; ++c) {
    const auto restricted = mixture.restricted_to_class(c);
    const auto w = restricted.weights.view({-1, 1});
    const auto mean = (w * restricted.means).sum(0);
    const auto second = (restricted.weights.view({-1, 1, 1}) *
                         (restricted.covariances + restricted.means.unsqueeze(2) * restricted.means.unsqueeze(1)))
                            .sum(0);
    const auto covariance = second - mean.unsqueeze(1) * mean.unsqueeze(0);
    const auto xs = x.index_select(0, labels.eq(c).nonzero().flatten());
    const double m = static_cast<double>(xs.size(0));
    const auto centred = xs - mean;
    // Tolerance: 5 standard errors, the errors estimated from the draws themselves.
    const auto mean_error = xs.mean(0) - mean;
    const auto mean_se = (xs.var(0) / m).sqrt();
    EXPECT_TRUE(mean_error.abs().le(5.0 * mean_se).all().item<bool>()) << mean_error << mean_se;
    const auto products = centred.unsqueeze(2) * centred.unsqueeze(1);  // [m, 2, 2]
    const auto cov_error = products.mean(0) - covariance;
    const auto cov_se = (products.var(0) / m).sqrt();
    EXPECT_TRUE(cov_error.abs().le(5.0 * cov_se).all().item<bool>()) << cov_error << cov_se;
  }
  // Seeded: the same seed repeats, another seed differs.
  EXPECT_TRUE(torch::equal(mixture.sample(100, 7).first, mixture.sample(100, 7).first));
  EXPECT_FALSE(torch::equal(mixture.sample(100, 7).first, mixture.sample(100, 8).first));
  EXPECT_EQ(mixture.sample(0, 7).first.size(0), 0);
  EXPECT_THROW(mixture.sample(-1, 7), InputError);
}

TEST(GaussianMixture, RestrictedToClassIsTheClassConditionalDensity) {
  torch::manual_seed(11);
  const auto mixture = full_covariance_mixture();
  const auto restricted = mixture.restricted_to_class(1);
  ASSERT_EQ(restricted.num_components(), 2);
  EXPECT_EQ(restricted.num_classes, 1);  // a one-class mixture, valid on its own
  // One float64 division each (0.3 / 0.5, 0.2 / 0.5): within an ulp of 0.6 and 0.4.
  EXPECT_TRUE(torch::allclose(restricted.weights, torch::tensor({0.6, 0.4}, kF64), 0, 1e-15));
  EXPECT_TRUE(torch::equal(restricted.means, mixture.means.slice(0, 1, 3)));
  EXPECT_TRUE(torch::equal(restricted.component_class, torch::tensor({0, 0}, torch::kInt64)));
  EXPECT_NO_THROW(restricted.validate());
  // p(x | c) = p(x, c) / p(c).
  const auto x = torch::randn({4, 2}, kF64);
  const auto abar = torch::full({4}, 0.7, kF64);
  const auto expected = torch::logsumexp(mixture.log_joint(x, abar).slice(1, 1, 3), 1) - std::log(0.5);
  // float64: log(0.6) vs log(0.3) - log(0.5) and the sums around them: a few ulps of |L| < 50.
  EXPECT_TRUE(torch::allclose(torch::logsumexp(restricted.log_joint(x, abar), 1), expected, 1e-12, 1e-12));
  EXPECT_THROW(mixture.restricted_to_class(2), InputError);
  EXPECT_THROW(mixture.restricted_to_class(-1), InputError);
}

TEST(GaussianMixture, ValidateNamesTheInconsistentField) {
  EXPECT_NO_THROW(full_covariance_mixture().validate());
  {
    auto m = full_covariance_mixture();
    m.weights = torch::tensor({0.5, 0.3, 0.3}, kF64);
    expect_error_naming<InputError>([&] { m.validate(); }, "sum to 1");
  }
  {
    auto m = full_covariance_mixture();
    m.weights = torch::tensor({0.9, 0.3, -0.2}, kF64);
    expect_error_naming<InputError>([&] { m.validate(); }, "weights");
  }
  {
    auto m = full_covariance_mixture();
    m.means = torch::zeros({2, 2}, kF64);
    expect_error_naming<InputError>([&] { m.validate(); }, "means");
  }
  {
    auto m = full_covariance_mixture();
    m.covariances = torch::zeros({3, 2, 3}, kF64);
    expect_error_naming<InputError>([&] { m.validate(); }, "covariances");
  }
  {
    auto m = full_covariance_mixture();
    m.covariances = m.covariances.clone();
    m.covariances[1] = torch::tensor({1.0, 2.0, 2.0, 1.0}, kF64).view({2, 2});  // eigenvalues 3, -1
    expect_error_naming<InputError>([&] { m.validate(); }, "component 1 is not positive definite");
  }
  {
    auto m = full_covariance_mixture();
    m.covariances = m.covariances.clone();
    m.covariances[0][0][1] = 0.02;
    expect_error_naming<InputError>([&] { m.validate(); }, "symmetric");
  }
  {
    auto m = full_covariance_mixture();
    m.component_class = torch::tensor({0, 1, 2}, torch::kInt64);
    expect_error_naming<InputError>([&] { m.validate(); }, "classes");
  }
  {
    auto m = full_covariance_mixture();
    m.component_class = torch::tensor({1, 1, 1}, torch::kInt64);
    expect_error_naming<InputError>([&] { m.validate(); }, "class 0 has no component");
  }
  {
    auto m = full_covariance_mixture();
    m.num_classes = 0;
    expect_error_naming<InputError>([&] { m.validate(); }, "num_classes");
  }
}

TEST(GaussianMixture, DemoClassesAreSeparatedAtTheDataLevel) {
  for (int64_t dim : {2, 5}) {
    const auto demo = GaussianMixture::demo(dim);
    EXPECT_EQ(demo.num_classes, 4);
    EXPECT_EQ(demo.num_components(), 6);
    EXPECT_EQ(demo.dim(), dim);
    EXPECT_LE(demo.means.abs().max().item<double>(), 1.0);
    const auto [x, labels] = demo.sample(20000, 99);
    // |mean| <= 0.75 with std <= 0.1 per coordinate: 1.6 is 8.5 sigma (P ~ 1e-17 per draw).
    EXPECT_LE(x.abs().max().item<double>(), 1.6);  // "within about [-1, 1]"
    // At abar = 1 the true class's posterior is ~1 for the draws of that class. Different
    // classes' means are >= 0.95 apart with std <= 0.1: the Bayes error is ~Phi(-4.7) ~ 1e-6
    // per draw, ~0.02 of 20000 draws, against the ~20 that 0.999 allows.
    const auto posterior = demo.class_log_posterior(x, torch::ones({x.size(0)}, kF64)).exp();
    const auto true_class = posterior.gather(1, labels.unsqueeze(1)).squeeze(1);
    EXPECT_GE(true_class.mean().item<double>(), 0.999);
    EXPECT_GE(true_class.ge(0.999).to(torch::kFloat64).mean().item<double>(), 0.998);
    // The most responsible component belongs to the sample's class.
    const auto nearest_class = demo.component_class.index_select(0, demo.nearest_component(x));
    EXPECT_GE(nearest_class.eq(labels).to(torch::kFloat64).mean().item<double>(), 0.999);
  }
  EXPECT_THROW(GaussianMixture::demo(1), InputError);
}

TEST(GaussianMixture, JsonFileRoundTripAndBadFiles) {
  const auto dir = fresh_temp_dir("json");
  const auto original = full_covariance_mixture();
  const auto good = dir / "good.json";
  write_file(good, R"({"num_classes": 2, "weights": [0.5, 0.3, 0.2],
    "means": [[0.5, -0.2], [-0.4, 0.3], [0.1, 0.6]],
    "covariances": [[[0.09, 0.03], [0.03, 0.05]], [[0.04, -0.01], [-0.01, 0.06]], [[0.02, 0], [0, 0.08]]],
    "classes": [0, 1, 1]})");
  const auto loaded = GaussianMixture::from_json_file(good.string());
  EXPECT_EQ(loaded.num_classes, 2);
  EXPECT_TRUE(torch::equal(loaded.weights, original.weights));
  EXPECT_TRUE(torch::equal(loaded.means, original.means));
  EXPECT_TRUE(torch::equal(loaded.covariances, original.covariances));
  EXPECT_TRUE(torch::equal(loaded.component_class, original.component_class));

  const auto missing = (dir / "missing.json").string();
  expect_error_naming<FileError>([&] { GaussianMixture::from_json_file(missing); }, missing);
  const auto broken = dir / "broken.json";
  write_file(broken, R"({"num_classes": 2, "weights": [0.5,)");
  expect_error_naming<FileError>([&] { GaussianMixture::from_json_file(broken.string()); }, broken.string());
  const auto no_classes = dir / "no_classes.json";
  write_file(no_classes, R"({"num_classes": 1, "weights": [1], "means": [[0, 0]], "covariances": [[[1, 0], [0, 1]]]})");
  expect_error_naming<InputError>([&] { GaussianMixture::from_json_file(no_classes.string()); }, "classes");
  const auto ragged = dir / "ragged.json";
  write_file(ragged, R"({"num_classes": 1, "weights": [0.5, 0.5], "means": [[0, 0], [1]],
    "covariances": [[[1, 0], [0, 1]], [[1, 0], [0, 1]]], "classes": [0, 0]})");
  expect_error_naming<InputError>([&] { GaussianMixture::from_json_file(ragged.string()); }, ragged.string());
  const auto wrong_type = dir / "wrong_type.json";
  write_file(wrong_type, R"({"num_classes": "two", "weights": [1], "means": [[0]], "covariances": [[[1]]], "classes": [0]})");
  expect_error_naming<InputError>([&] { GaussianMixture::from_json_file(wrong_type.string()); }, wrong_type.string());
  // Non-integer counts and classes were once truncated (2.5 -> 2), and unknown keys ignored.
  const std::string one_component = R"("weights": [1], "means": [[0]], "covariances": [[[1]]])";
  for (const auto& [body, message] : std::vector<std::pair<std::string, std::string>>{
           {R"({"num_classes": 2.5, "classes": [0], )" + one_component + "}",
            "\"num_classes\" must be a whole number"},
           {R"({"num_classes": 2, "classes": [0.5], )" + one_component + "}",
            "\"classes\" must be a list of whole"},
           {R"({"num_classes": 1, "classes": [0], "clases": [0], )" + one_component + "}",
            "unknown key \"clases\""}}) {
    const auto file = dir / "inexact.json";
    write_file(file, body);
    expect_error_naming<InputError>([&] { GaussianMixture::from_json_file(file.string()); },
                                    message);
  }
  const auto not_spd = dir / "not_spd.json";
  write_file(not_spd, R"({"num_classes": 1, "weights": [1], "means": [[0, 0]], "covariances": [[[1, 2], [2, 1]]], "classes": [0]})");
  expect_error_naming<InputError>([&] { GaussianMixture::from_json_file(not_spd.string()); }, "positive definite");
  std::filesystem::remove_all(dir);
}
