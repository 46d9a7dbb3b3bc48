// Tests of the Gaussian diffusion maths against closed forms computed here from the betas
// alone (not from the schedule's precomputed coefficient tensors).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"

using namespace guidiff;

namespace {

template <class E, class F>
void expect_error_naming(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an exception naming '" << needle << "'";
  } catch (const E& error) {
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

// abar_t = prod_{s <= t} (1 - beta_s), by a plain loop over the betas.
std::vector<double> cumulative_alphas(const torch::Tensor& betas) {
  std::vector<double> abar;
  double product = 1.0;
  for (int64_t i = 0; i < betas.size(0); ++i) {
    product *= 1.0 - betas[i].item<double>();
    abar.push_back(product);
  }
  return abar;
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

torch::Tensor randn64(std::vector<int64_t> shape, uint64_t seed) {
  auto generator = at::detail::createCPUGenerator(seed);
  return torch::randn(shape, generator, torch::kFloat64);
}

}  // namespace

TEST(Diffusion, QSampleIsDdpmEq4) {
  const auto s = make_schedule(BetaScheduleKind::linear, 1000);
  const auto abar = cumulative_alphas(s.betas);
  const auto x0 = randn64({3, 2, 4}, 1), noise = randn64({3, 2, 4}, 2);
  const std::vector<int64_t> t = {0, 400, 999};
  const auto xt = q_sample(s, x0, torch::tensor(t), noise);
  for (int i = 0; i < 3; ++i) {
    const auto expected = std::sqrt(abar[t[i]]) * x0[i] + std::sqrt(1.0 - abar[t[i]]) * noise[i];
    // float64 both ways: the coefficients agree to an ulp or so, the combination rounds values
    // |x| < 8 (ulp 8.9e-16) a few times: ~3e-15 against 1e-14.
    EXPECT_LT(max_abs_diff(xt[i], expected), 1e-14) << t[i];
  }
  EXPECT_EQ(q_sample(s, x0.to(torch::kFloat32), torch::tensor(t), noise.to(torch::kFloat32))
                .scalar_type(),
            torch::kFloat32);
}

// q(x_{t-1} | x_t, x0) by Bayes: q(x_{t-1} | x0) = N(sqrt(abar_{t-1}) x0, 1 - abar_{t-1}) times
// q(x_t | x_{t-1}) = N(sqrt(alpha_t) x_{t-1}, beta_t) as a function of x_{t-1}, normalised:
// precision = 1/(1 - abar_{t-1}) + alpha_t/beta_t,
// mean = variance (sqrt(abar_{t-1}) x0 / (1 - abar_{t-1}) + sqrt(alpha_t) x_t / beta_t).
void expect_posterior_is_bayes(const DiscreteSchedule& s, int64_t t, uint64_t seed) {
  const auto abar = cumulative_alphas(s.betas);
  const double beta = s.betas[t].item<double>();
  const double abar_prev = t > 0 ? abar[t - 1] : 1.0;
  const auto x0 = randn64({1, 5}, seed), xt = randn64({1, 5}, seed + 1);
  const auto posterior = q_posterior(s, x0, xt, torch::tensor({t}));
  if (t == 0) {  // x_{-1} = x0 exactly: zero variance, mean x0
    // coef1 = beta_0 / (1 - fl(1 - beta_0)): for linear's beta_0 = 1e-4 that rounding is
    // 1.1e-13 of beta_0 (exact for cosine, whose beta_0 = 1 - r); times |x0| < 4: < 5e-13.
    EXPECT_LT(max_abs_diff(posterior.mean, x0), 1e-12);
    EXPECT_EQ(posterior.variance.abs().max().item<double>(), 0.0);
    return;
  }
  const double precision = 1.0 / (1.0 - abar_prev) + (1.0 - beta) / beta;
  const double variance = 1.0 / precision;
  const auto mean = variance * (std::sqrt(abar_prev) * x0 / (1.0 - abar_prev) +
                                std::sqrt(1.0 - beta) * xt / beta);
  // float64, but the schedule forms 1 - abar_t by cancellation: at t = 1, 1 - abar ~ 1e-4,
  // so an ulp of abar (1.1e-16) is ~3e-12 relative; 1e-10 covers that times |x| < 4 and logs.
  EXPECT_LT(max_abs_diff(posterior.mean, mean), 1e-10) << t;
  EXPECT_NEAR(posterior.variance[0][0].item<double>() / variance, 1.0, 1e-10) << t;
  EXPECT_NEAR(posterior.log_variance[0][3].item<double>(), std::log(variance), 1e-10) << t;
  EXPECT_EQ(posterior.variance.sizes(), x0.sizes());
}

TEST(Diffusion, PosteriorIsTheBayesProductOfGaussians) {
  const auto linear = make_schedule(BetaScheduleKind::linear, 1000);
  const auto cosine = make_schedule(BetaScheduleKind::cosine, 1000);
  for (int64_t t : {0, 1, 2, 317, 998, 999}) {
    expect_posterior_is_bayes(linear, t, 10 + t);
    expect_posterior_is_bayes(cosine, t, 20 + t);
  }
  const auto spaced = respace(cosine, parse_respacing("ddim50", 1000));  // respaced betas too
  for (int64_t t : {0, 1, 25, 49}) expect_posterior_is_bayes(spaced, t, 30 + t);
}

TEST(Diffusion, EpsAndX0RoundTrip) {
  const auto s = make_schedule(BetaScheduleKind::cosine, 1000);
  const auto step = torch::tensor({0, 10, 500, 990});
  const auto x0 = randn64({4, 3, 2, 2}, 3), eps = randn64({4, 3, 2, 2}, 4);
  const auto xt = q_sample(s, x0, step, eps);
  // float64 round trips that cancel: at t = 0, sqrt(1/abar - 1) ~ 6e-3 comes from 1/abar - 1
  // ~ 4e-5 (an ulp of 1 is ~3e-12 of it), and eps = (...) / 6e-3 amplifies ulps of |x| < 8
  // (8.9e-16) to ~1e-12; at t = 990, 1/sqrt(abar) ~ 80 scales ulps by 80. 1e-9 is >100x that.
  EXPECT_LT(max_abs_diff(predict_x0_from_eps(s, xt, step, eps), x0), 1e-9);
  EXPECT_LT(max_abs_diff(predict_eps_from_x0(s, xt, step, x0), eps), 1e-9);
  // Arbitrary (x_t, eps): eps -> x0 -> eps is the identity.
  const auto any_xt = randn64({4, 3, 2, 2}, 5);
  const auto back = predict_eps_from_x0(s, any_xt, step, predict_x0_from_eps(s, any_xt, step, eps));
  EXPECT_LT(max_abs_diff(back, eps), 1e-9);
  const auto x32 =
      predict_x0_from_eps(s, any_xt.to(torch::kFloat32), step, eps.to(torch::kFloat32));
  EXPECT_EQ(x32.scalar_type(), torch::kFloat32);
}

TEST(Diffusion, ScoreAndEpsRoundTrip) {
  const auto s = make_schedule(BetaScheduleKind::linear, 1000);
  const auto abar = cumulative_alphas(s.betas);
  const std::vector<int64_t> t = {0, 250, 999};
  const auto step = torch::tensor(t);
  const auto x0 = randn64({3, 6}, 6), eps = randn64({3, 6}, 7);
  const auto xt = q_sample(s, x0, step, eps);
  const auto score = score_from_eps(s, step, eps);
  // With the true noise, the score is that of q(x_t | x0): -(x_t - sqrt(abar) x0) / (1 - abar).
  // float64: x_t - sqrt(abar) x0 cancels to within a few ulps of |x_t| < 8 (~4e-15), divided
  // by 1 - abar; the score's own roundings are a few ulps of |eps| / sqrt(1 - abar). Even a
  // differently ordered cumprod (<= 2t * 2^-53 relative in abar) stays under 1e-12 / (1 - abar).
  for (int i = 0; i < 3; ++i) {
    const auto exact = -(xt[i] - std::sqrt(abar[t[i]]) * x0[i]) / (1.0 - abar[t[i]]);
    EXPECT_LT(max_abs_diff(score[i], exact), 1e-12 / (1.0 - abar[t[i]])) << t[i];
  }
  // Two float64 roundings of |eps| < 4: ~2e-15.
  EXPECT_LT(max_abs_diff(eps_from_score(s, step, score), eps), 1e-12);
}

TEST(Diffusion, VarianceKindsAndClipping) {
  const auto s = make_schedule(BetaScheduleKind::linear, 1000);
  const auto abar = cumulative_alphas(s.betas);
  const std::vector<int64_t> t = {0, 1, 600};
  const auto step = torch::tensor(t);
  const auto xt = randn64({3, 4}, 8), eps = randn64({3, 4}, 9);
  const auto small = p_mean_variance(s, xt, step, eps, {}, VarianceKind::fixed_small, false);
  const auto large = p_mean_variance(s, xt, step, eps, {}, VarianceKind::fixed_large, false);
  const auto low =
      p_mean_variance(s, xt, step, eps, -torch::ones_like(xt), VarianceKind::learned_range, false);
  const auto high =
      p_mean_variance(s, xt, step, eps, torch::ones_like(xt), VarianceKind::learned_range, false);
  const auto mid =
      p_mean_variance(s, xt, step, eps, torch::zeros_like(xt), VarianceKind::learned_range, false);
  // The mean is the posterior mean at the predicted x0, whatever the variance.
  const auto pred_x0 = predict_x0_from_eps(s, xt, step, eps);
  const auto posterior = q_posterior(s, pred_x0, xt, step);
  // The same float64 operations on the same inputs: equal, 1e-15 is an ulp of |x| < 8.
  EXPECT_LT(max_abs_diff(small.pred_x0, pred_x0), 1e-15);
  for (const auto* r : {&small, &large, &low, &high})
    EXPECT_LT(max_abs_diff(r->gaussian.mean, posterior.mean), 1e-15);

  const double beta1 = s.betas[1].item<double>();
  const double tilde1 = (1.0 - abar[0]) / (1.0 - abar[1]) * beta1;  // beta~_1, DDPM eq. 7
  for (int i = 0; i < 3; ++i) {
    const double beta = s.betas[t[i]].item<double>();
    const double abar_prev = t[i] > 0 ? abar[t[i] - 1] : 1.0;
    const double tilde = (1.0 - abar_prev) / (1.0 - abar[t[i]]) * beta;
    const double clipped_log_tilde = std::log(t[i] == 0 ? tilde1 : tilde);
    // float64, the same products in another order: variances (<= 0.02) agree to a few ulps
    // (~1e-17), their logs (|log| < 10, ulp 1.8e-15) to ~5e-15; 1e-15 and 1e-12 hold those.
    EXPECT_NEAR(small.gaussian.variance[i][0].item<double>(), tilde, 1e-15);
    EXPECT_NEAR(small.gaussian.log_variance[i][1].item<double>(), clipped_log_tilde, 1e-12);
    // fixed_large: beta_t, but beta~_1 at t = 0.
    EXPECT_NEAR(large.gaussian.variance[i][2].item<double>(), t[i] == 0 ? tilde1 : beta, 1e-15);
    EXPECT_NEAR(large.gaussian.log_variance[i][2].item<double>(),
                std::log(t[i] == 0 ? tilde1 : beta), 1e-12);
    // learned_range: v = -1 -> fixed_small's log variance; v = +1 -> log beta; v = 0 -> midpoint.
    EXPECT_NEAR(low.gaussian.log_variance[i][3].item<double>(), clipped_log_tilde, 1e-12);
    EXPECT_NEAR(high.gaussian.log_variance[i][3].item<double>(), std::log(beta), 1e-12);
    EXPECT_NEAR(mid.gaussian.log_variance[i][0].item<double>(),
                0.5 * (std::log(beta) + clipped_log_tilde), 1e-12);
    EXPECT_NEAR(mid.gaussian.variance[i][0].item<double>(),
                std::sqrt(beta * std::exp(clipped_log_tilde)), 1e-15);
  }

  // clip_x0: an eps that predicts x0 far outside [-1, 1] is clamped before the posterior mean.
  const auto far_eps = -10.0 * torch::ones_like(xt);
  const auto clipped = p_mean_variance(s, xt, step, far_eps, {}, VarianceKind::fixed_small, true);
  const auto clamped_x0 = predict_x0_from_eps(s, xt, step, far_eps).clamp(-1.0, 1.0);
  EXPECT_LE(clipped.pred_x0.abs().max().item<double>(), 1.0);
  // The same float64 operations on the same inputs: equal.
  EXPECT_LT(max_abs_diff(clipped.pred_x0, clamped_x0), 1e-15);
  EXPECT_LT(max_abs_diff(clipped.gaussian.mean, q_posterior(s, clamped_x0, xt, step).mean), 1e-15);

  const auto f32 = p_mean_variance(s, xt.to(torch::kFloat32), step, eps.to(torch::kFloat32), {},
                                   VarianceKind::fixed_large, true);
  EXPECT_EQ(f32.gaussian.mean.scalar_type(), torch::kFloat32);
  EXPECT_EQ(f32.gaussian.variance.scalar_type(), torch::kFloat32);
  EXPECT_EQ(f32.gaussian.variance.sizes(), xt.sizes());
}

TEST(Diffusion, RejectsBadInputs) {
  const auto s = make_schedule(BetaScheduleKind::linear, 100);
  const auto x = randn64({2, 3}, 11);
  const auto step = torch::tensor({1, 2});
  EXPECT_EQ(parse_variance_kind("fixed-small"), VarianceKind::fixed_small);
  EXPECT_EQ(parse_variance_kind("fixed-large"), VarianceKind::fixed_large);
  EXPECT_EQ(parse_variance_kind("learned-range"), VarianceKind::learned_range);
  expect_error_naming<InputError>([] { parse_variance_kind("fixed_small"); }, "fixed_small");
  expect_error_naming<ModelError>(
      [&] { p_mean_variance(s, x, step, x, {}, VarianceKind::learned_range, false); },
      "variance output");
  expect_error_naming<ModelError>(
      [&] { p_mean_variance(s, x, step, x.slice(1, 0, 2), {}, VarianceKind::fixed_small, false); },
      "eps");
  expect_error_naming<InputError>(
      [&] {
        q_sample(s, x, torch::tensor({0, 100}), x);
      },
      "step_index");
  expect_error_naming<InputError>([&] { q_sample(s, x, step, x.slice(1, 0, 1)); }, "noise");
  expect_error_naming<InputError>([&] { predict_x0_from_eps(s, x, torch::tensor({0}), x); },
                                  "step_index");
}

TEST(Diffusion, SingleStepScheduleHasFiniteVariances) {
  // "1" keeps only timestep 0: there is no beta~_1, so the log variance falls back to log beta_0.
  const auto base = make_schedule(BetaScheduleKind::linear, 1000);
  const auto one = respace(base, parse_respacing("1", 1000));
  ASSERT_EQ(one.num_steps(), 1);
  const auto x = randn64({2, 3}, 12);
  const auto step = torch::tensor({0, 0});
  for (const auto kind : {VarianceKind::fixed_small, VarianceKind::fixed_large}) {
    const auto r = p_mean_variance(one, x, step, x, {}, kind, false);
    // The respaced beta_0 = 1 - fl(1 - 1e-4) is 1.1e-13 relative off 1e-4, so its log is
    // 1.1e-13 off; coef1 = beta_0 / beta_0 = 1 and coef2 = 0 exactly, so the mean is x0_hat.
    EXPECT_NEAR(r.gaussian.log_variance[0][0].item<double>(), std::log(1e-4), 1e-12);
    EXPECT_LT(max_abs_diff(r.gaussian.mean, r.pred_x0), 1e-12);  // step 0 returns x0_hat
  }
}
