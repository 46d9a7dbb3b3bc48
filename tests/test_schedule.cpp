// Tests of the discrete schedules, respacing, the log-SNR schedule, the noise-level map and
// the sigma spacings of the few-step samplers.
// Expected values are closed forms or lists computed independently from the published rules.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"
#include "guidiff/schedule/noise_level.hpp"
#include "guidiff/schedule/sigma_schedule.hpp"

using namespace guidiff;

namespace {

// Runs f, which must throw E with a message containing `needle`.
template <class E, class F>
void expect_error_naming(F f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an exception naming '" << needle << "'";
  } catch (const E& error) {
    EXPECT_NE(std::string(error.what()).find(needle), std::string::npos) << error.what();
  }
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const auto c = t.to(torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<int64_t> arange_vector(int64_t start, int64_t stop, int64_t step) {
  std::vector<int64_t> v;
  for (int64_t t = start; t < stop; t += step) v.push_back(t);
  return v;
}

double cosine_f(double t) {  // Nichol & Dhariwal eq. 17, s = 0.008
  const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2.0);
  return c * c;
}

}  // namespace

TEST(BetaSchedule, ParsesNamesAndRejectsOthers) {
  EXPECT_EQ(parse_beta_schedule("linear"), BetaScheduleKind::linear);
  EXPECT_EQ(parse_beta_schedule("cosine"), BetaScheduleKind::cosine);
  EXPECT_EQ(to_string(BetaScheduleKind::cosine), "cosine");
  EXPECT_EQ(parse_beta_schedule(to_string(BetaScheduleKind::linear)), BetaScheduleKind::linear);
  expect_error_naming<InputError>([] { parse_beta_schedule("quadratic"); }, "quadratic");
}

TEST(BetaSchedule, LinearEndpointsScaleWithT) {
  const auto b1000 = linear_betas(1000);
  ASSERT_EQ(b1000.scalar_type(), torch::kFloat64);
  ASSERT_EQ(b1000.size(0), 1000);
  // linspace returns its endpoints exactly, and 1000/T = 4 scales them exactly.
  EXPECT_DOUBLE_EQ(b1000[0].item<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(b1000[999].item<double>(), 0.02);
  // Evenly spaced: constant difference (0.02 - 1e-4) / 999. float64 linspace puts each
  // element within a few ulps of 0.02 (2^-58 = 3.5e-18), so differences agree to ~1e-17:
  // 1e-15 leaves ~50x margin, and uneven spacing would show at ~1e-5.
  const auto diffs = b1000.slice(0, 1) - b1000.slice(0, 0, 999);
  EXPECT_LT((diffs - (0.02 - 1e-4) / 999.0).abs().max().item<double>(), 1e-15);
  // Scaled by 1000/T: T = 250 runs from 4e-4 to 0.08.
  const auto b250 = linear_betas(250);
  EXPECT_DOUBLE_EQ(b250[0].item<double>(), 4e-4);
  EXPECT_DOUBLE_EQ(b250[249].item<double>(), 0.08);
  expect_error_naming<InputError>([] { linear_betas(10); }, "10");
  expect_error_naming<InputError>([] { linear_betas(0); }, "0");
}

TEST(BetaSchedule, CosineMatchesClosedFormWhereNotClipped) {
  const int64_t T = 1000;
  const auto betas = cosine_betas(T);
  const auto abar = torch::cumprod(1.0 - betas, 0);
  ASSERT_EQ(betas.scalar_type(), torch::kFloat64);
  EXPECT_LE(betas.max().item<double>(), 0.999);
  int64_t compared = 0;
  for (int64_t i = 0; i < T; ++i) {
    if (betas[i].item<double>() >= 0.999) break;  // from the first clip on, abar departs
    // Step i ends at t = (i + 1) / T: abar_i = f((i+1)/T) / f(0). The f values telescope
    // (computed identically here), leaving two float64 roundings per step (ratio, product):
    // <= 2 * 1000 * 2^-53 = 2.2e-13 of abar <= 1 in the worst case.
    EXPECT_NEAR(abar[i].item<double>(), cosine_f(double(i + 1) / T) / cosine_f(0.0), 1e-12) << i;
    ++compared;
  }
  EXPECT_GE(compared, 990);                              // clipping only at the very end
  EXPECT_DOUBLE_EQ(betas[T - 1].item<double>(), 0.999);  // f(1) = 0: the last beta is clipped
  expect_error_naming<InputError>([] { cosine_betas(-5); }, "-5");
}

TEST(DiscreteSchedule, FromBetasBuildsDdpmQuantities) {
  const auto s = make_schedule(BetaScheduleKind::linear, 1000);
  EXPECT_EQ(s.num_steps(), 1000);
  EXPECT_EQ(s.original_num_timesteps, 1000);
  EXPECT_EQ(to_vector(s.timestep_map), arange_vector(0, 1000, 1));
  EXPECT_DOUBLE_EQ(s.alphas_cumprod_prev[0].item<double>(), 1.0);
  EXPECT_DOUBLE_EQ(s.alphas_cumprod_prev[7].item<double>(), s.alphas_cumprod[6].item<double>());
  EXPECT_DOUBLE_EQ(s.alphas_cumprod[0].item<double>(), 1.0 - 1e-4);
  EXPECT_DOUBLE_EQ(s.posterior_variance[0].item<double>(), 0.0);
  EXPECT_DOUBLE_EQ(s.posterior_log_variance_clipped[0].item<double>(),
                   std::log(s.posterior_variance[1].item<double>()));
  for (const auto& t : {s.alphas_cumprod, s.sqrt_recipm1_alphas_cumprod, s.posterior_mean_coef2}) {
    EXPECT_EQ(t.scalar_type(), torch::kFloat64);
  }
  expect_error_naming<InputError>([] { make_schedule(BetaScheduleKind::cosine, 0); }, "0");
  expect_error_naming<InputError>(
      [] {
        DiscreteSchedule::from_betas(torch::tensor({0.1, 1.5}, torch::kFloat64));
      },
      "betas");
  expect_error_naming<InputError>(
      [] {
        DiscreteSchedule::from_betas(torch::zeros({2, 2}, torch::kFloat64));
      },
      "betas");
}

// The expected lists below were computed with /usr/bin/python3 running a re-typed version
// of guided-diffusion's space_timesteps rule (stride search for "ddimN"; sections of size
// T//n + (1 if i < T%n), each keeping round(k * (size-1)/(count-1)) with the fractional
// stride accumulated and Python's half-to-even round()).
TEST(Respacing, DdimPicksGuidedDiffusionStrides) {
  EXPECT_EQ(parse_respacing("ddim50", 1000), arange_vector(0, 1000, 20));
  EXPECT_EQ(parse_respacing("ddim25", 1000), arange_vector(0, 1000, 40));
  EXPECT_EQ(parse_respacing("ddim1000", 1000), arange_vector(0, 1000, 1));
  EXPECT_EQ(parse_respacing("ddim7", 100), arange_vector(0, 100, 15));
  // The first stride that works wins: over T = 20, stride 7 (not 8) gives 3 steps.
  EXPECT_EQ(parse_respacing("ddim3", 20), (std::vector<int64_t>{0, 7, 14}));
}

TEST(Respacing, SectionCountsFollowGuidedDiffusion) {
  EXPECT_EQ(parse_respacing("10", 1000),
            (std::vector<int64_t>{0, 111, 222, 333, 444, 555, 666, 777, 888, 999}));
  EXPECT_EQ(parse_respacing("10,15,20", 1000),
            (std::vector<int64_t>{0,   37,  74,  111, 148, 185, 222, 259, 296, 333, 334, 358,
                                  381, 405, 429, 453, 476, 500, 524, 547, 571, 595, 619, 642,
                                  666, 667, 684, 702, 719, 737, 754, 772, 789, 807, 824, 842,
                                  859, 877, 894, 912, 929, 947, 964, 982, 999}));
  EXPECT_EQ(parse_respacing("3", 10), (std::vector<int64_t>{0, 4, 9}));  // round(4.5) = 4
  EXPECT_EQ(parse_respacing("2,3", 11), (std::vector<int64_t>{0, 5, 6, 8, 10}));
  EXPECT_EQ(parse_respacing("1,1,1", 7), (std::vector<int64_t>{0, 3, 5}));
  EXPECT_EQ(parse_respacing("", 5), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(Respacing, RejectsSpecsThatCannotFit) {
  expect_error_naming<InputError>([] { parse_respacing("ddim37", 1000); },
                                  "cannot create exactly 37 steps");
  expect_error_naming<InputError>([] { parse_respacing("ddim37", 1000); }, "ddim37");
  expect_error_naming<InputError>([] { parse_respacing("2000", 1000); }, "2000");
  expect_error_naming<InputError>([] { parse_respacing("5,600", 1000); }, "5,600");
  for (const std::string bad : {"ddim", "ddimx", "abc", "10,,5", "-3", "10,", "0"}) {
    expect_error_naming<InputError>([&] { parse_respacing(bad, 1000); }, "'" + bad + "'");
  }
  expect_error_naming<InputError>([] { parse_respacing("10", 0); }, "0");
}

TEST(Respacing, KeepsOriginalAbarAtKeptSteps) {
  for (const auto kind : {BetaScheduleKind::linear, BetaScheduleKind::cosine}) {
    const auto base = make_schedule(kind, 1000);
    for (const std::string spec : {"ddim50", "10,15,20", "7", "1000"}) {
      const auto kept = parse_respacing(spec, 1000);
      const auto spaced = respace(base, kept);
      const auto kept_t = torch::tensor(kept, torch::kInt64);
      EXPECT_EQ(to_vector(spaced.timestep_map), kept) << spec;
      EXPECT_EQ(spaced.original_num_timesteps, 1000);
      EXPECT_EQ(spaced.num_steps(), static_cast<int64_t>(kept.size()));
      const auto expected = base.alphas_cumprod.index_select(0, kept_t);
      // Re-deriving abar costs about two float64 roundings (2^-53) per kept step: at most
      // 2k * 1.1e-16 * abar(t_k), whose maximum over k is ~6e-14 (cosine, k ~ 450).
      EXPECT_LT((spaced.alphas_cumprod - expected).abs().max().item<double>(), 1e-13) << spec;
      // beta_k = 1 - abar(t_k) / abar(t_{k-1}), abar(t_{-1}) = 1: the same two correctly
      // rounded float64 operations on the same values, so equal to within an ulp of 1.
      const auto prev = torch::cat({torch::ones({1}, torch::kFloat64), expected.slice(0, 0, -1)});
      EXPECT_LT((spaced.betas - (1.0 - expected / prev)).abs().max().item<double>(), 1e-15) << spec;
    }
  }
}

TEST(Respacing, ComposesAndRejectsBadLists) {
  const auto base = make_schedule(BetaScheduleKind::linear, 100);
  const auto coarse = respace(base, {0, 10, 20, 50, 90});
  const auto coarser = respace(coarse, {10, 50, 90});  // original timesteps, looked up in coarse
  EXPECT_EQ(to_vector(coarser.timestep_map), (std::vector<int64_t>{10, 50, 90}));
  // Two respacings: ~8 float64 roundings of values <= 1 along the way (2^-53 each of abar, or
  // of the step ratio where it is < 1/2), ~5e-16 at most against 1e-15.
  EXPECT_NEAR(coarser.alphas_cumprod[1].item<double>(), base.alphas_cumprod[50].item<double>(),
              1e-15);
  expect_error_naming<InputError>([&] { respace(base, {}); }, "no timesteps");
  expect_error_naming<InputError>([&] { respace(base, {0, 100}); }, "100");
  expect_error_naming<InputError>([&] { respace(base, {-1, 5}); }, "-1");
  expect_error_naming<InputError>([&] { respace(base, {5, 3}); }, "5 then 3");
  expect_error_naming<InputError>([&] { respace(base, {3, 3}); }, "3 then 3");
  expect_error_naming<InputError>([&] { respace(coarse, {10, 11}); }, "11");
}

TEST(GatherFor, BroadcastsPerSampleValues) {
  const auto values = torch::tensor({0.5, 1.5, 2.5, 3.5}, torch::kFloat64);
  const auto x = torch::zeros({3, 2, 4, 4}, torch::kFloat32);
  const auto c = gather_for(values, torch::tensor({3, 0, 2}, torch::kInt64), x);
  EXPECT_EQ(c.sizes(), (std::vector<int64_t>{3, 1, 1, 1}));
  EXPECT_EQ(c.scalar_type(), torch::kFloat32);
  EXPECT_EQ(c.flatten()[0].item<float>(), 3.5f);
  EXPECT_EQ(c.flatten()[1].item<float>(), 0.5f);
  EXPECT_EQ(c.flatten()[2].item<float>(), 2.5f);
  expect_error_naming<InputError>(
      [&] {
        gather_for(values, torch::tensor({0, 4, 1}, torch::kInt64), x);
      },
      "step_index");
  expect_error_naming<InputError>(
      [&] {
        gather_for(values, torch::tensor({0, 1}, torch::kInt64), x);
      },
      "step_index");
}

TEST(LogSnrSchedule, EndpointsAndStrictDecrease) {
  LogSnrSchedule schedule;  // [-20, 20]
  const auto u = torch::linspace(0.0, 1.0, 1001, torch::kFloat64);
  const auto lambda = schedule.lambda_of_u(u);
  // At u = 1, tan is evaluated e^-10 = 4.5e-5 from its pole: a few float64 roundings of the
  // argument (~1e-16 each) become ~1e-11 relative in tan, 2e-11 in lambda; 1e-9 leaves 50x.
  EXPECT_NEAR(lambda[0].item<double>(), 20.0, 1e-9);
  EXPECT_NEAR(lambda[1000].item<double>(), -20.0, 1e-9);
  EXPECT_TRUE((lambda.slice(0, 1) < lambda.slice(0, 0, -1)).all().item<bool>());
  // Another range, float32 in and out.
  LogSnrSchedule narrow{-5.0, 3.0};
  const auto ends = narrow.lambda_of_u(torch::tensor({0.0f, 1.0f}));
  EXPECT_EQ(ends.scalar_type(), torch::kFloat32);
  // Computed in float64, rounded to float32: half an ulp of 5 (2.4e-7); 1e-5 is ~40 ulps.
  EXPECT_NEAR(ends[0].item<float>(), 3.0f, 1e-5);
  EXPECT_NEAR(ends[1].item<float>(), -5.0f, 1e-5);
  // Closed form at the midpoint: -2 log tan((a + 2b)/2). The same float64 expression up to
  // torch's vs libm's tan and log (an ulp or two each): ~1e-15 for |lambda| < 1.
  const double b = std::atan(std::exp(-1.5)), a = std::atan(std::exp(2.5)) - b;
  EXPECT_NEAR(narrow.lambda_of_u(torch::tensor({0.5}, torch::kFloat64)).item<double>(),
              -2.0 * std::log(std::tan(a * 0.5 + b)), 1e-12);
  expect_error_naming<InputError>([] { LogSnrSchedule{3.0, 3.0}.validate(); }, "lambda_min");
  expect_error_naming<InputError>([] { LogSnrSchedule{-INFINITY, 3.0}.validate(); }, "inf");
}

TEST(LogSnrSchedule, AlphaSigmaAreVariancePreserving) {
  const auto lambda = torch::linspace(-15.0, 15.0, 61, torch::kFloat64);
  const auto a2 = alpha_squared_of_log_snr(lambda);
  const auto s2 = sigma_squared_of_log_snr(lambda);
  // A float64 sigmoid (exp, add, divide) is within ~4 * 2^-53 relative: the sum of two values
  // <= 1 is within ~5.5e-16 of 1, and log(a2 / s2) within ~1e-15 plus an ulp of 15 (1.8e-15).
  EXPECT_LT((a2 + s2 - 1.0).abs().max().item<double>(), 1e-15);
  EXPECT_LT(((a2 / s2).log() - lambda).abs().max().item<double>(), 1e-13);  // log-SNR = lambda
}

TEST(NoiseLevelMap, DiscreteLooksUpOriginalTimesteps) {
  const auto base = make_schedule(BetaScheduleKind::cosine, 1000);
  const auto map = NoiseLevelMap::discrete(base);
  EXPECT_EQ(map.kind(), TimeKind::discrete_timestep);
  const auto t = torch::tensor({0, 500, 999}, torch::kInt64);
  const auto abar = map.alpha_squared(t);
  EXPECT_EQ(abar.scalar_type(), torch::kFloat64);
  // A table lookup, and sqrt(1 - abar) by the same correctly rounded float64 operations.
  for (int i = 0; i < 3; ++i) {
    const int64_t ti = t[i].item<int64_t>();
    EXPECT_DOUBLE_EQ(abar[i].item<double>(), base.alphas_cumprod[ti].item<double>());
    EXPECT_DOUBLE_EQ(map.sigma(t)[i].item<double>(),
                     std::sqrt(1.0 - base.alphas_cumprod[ti].item<double>()));
  }
  expect_error_naming<InputError>(
      [&] {
        map.alpha_squared(torch::tensor({3, 1000}, torch::kInt64));
      },
      "1000");
  expect_error_naming<InputError>([&] { map.sigma(torch::tensor({-2}, torch::kInt64)); }, "-2");
  expect_error_naming<InputError>([&] { map.alpha_squared(torch::tensor({0.5f})); }, "Float");
  expect_error_naming<InputError>(
      [&] {
        NoiseLevelMap::discrete(respace(base, {0, 10}));
      },
      "unrespaced");
}

TEST(NoiseLevelMap, LogSnrUsesSigmoid) {
  const auto map = NoiseLevelMap::log_snr();
  EXPECT_EQ(map.kind(), TimeKind::log_snr);
  const auto lambda = torch::tensor({-3.0f, 0.0f, 4.0f});
  const auto abar = map.alpha_squared(lambda);
  EXPECT_EQ(abar.scalar_type(), torch::kFloat64);
  // torch's float64 sigmoid vs libm's 1 / (1 + exp(-l)): each within ~2 ulps of a value <= 1
  // (2^-53 = 1.1e-16 per ulp), so ~4.4e-16 apart at most.
  for (int i = 0; i < 3; ++i) {
    const double l = lambda[i].item<float>();
    EXPECT_NEAR(abar[i].item<double>(), 1.0 / (1.0 + std::exp(-l)), 1e-15);
    EXPECT_NEAR(map.sigma(lambda)[i].item<double>(), std::sqrt(1.0 / (1.0 + std::exp(l))), 1e-15);
  }
  expect_error_naming<InputError>(
      [&] {
        map.alpha_squared(torch::tensor({0.0f, NAN}));
      },
      "non-finite");
  expect_error_naming<InputError>([&] { map.sigma(torch::tensor({INFINITY})); }, "non-finite");
}

// ---- Sigma levels and spacings -----------------------------------------------------------------

TEST(ModelSigmas, DiscreteLevelsAreSqrtOfOneMinusAbarOverAbar) {
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 1000);
  const ModelSigmas levels = ModelSigmas::discrete(schedule);
  ASSERT_EQ(levels.timestep_sigmas().size(), 1000u);
  for (const int64_t t : {0, 1, 499, 999}) {
    const double abar = schedule.alphas_cumprod[t].item<double>();
    EXPECT_DOUBLE_EQ(levels.timestep_sigmas()[t], std::sqrt((1 - abar) / abar)) << t;
  }
  // abar_0 = 1 - 1e-4: sigma_min = sqrt(1e-4 / (1 - 1e-4)); sigma_max = sigma_999.
  EXPECT_NEAR(levels.sigma_min(), std::sqrt(1e-4 / (1 - 1e-4)), 1e-15);
  EXPECT_DOUBLE_EQ(levels.sigma_max(), levels.timestep_sigmas().back());
  // The nearest timestep in log sigma: at the geometric mean of sigma_1 and sigma_2 the two
  // are equally near; just below it t = 1 wins, just above t = 2.
  const double s1 = levels.timestep_sigmas()[1], s2 = levels.timestep_sigmas()[2];
  EXPECT_EQ(levels.nearest_timestep(std::sqrt(s1 * s2) * 0.999), 1);
  EXPECT_EQ(levels.nearest_timestep(std::sqrt(s1 * s2) * 1.001), 2);
  EXPECT_EQ(levels.nearest_timestep(1e-9), 0);
  EXPECT_EQ(levels.nearest_timestep(1e9), 999);
  EXPECT_EQ(levels.time_for(s2, 3, torch::kFloat).equal(torch::full({3}, 2, torch::kLong)), true);
  EXPECT_THROW(levels.nearest_timestep(0.0), InputError);
}

TEST(ModelSigmas, LogSnrLevelsAreExpOfMinusHalfLambda) {
  LogSnrSchedule range;
  range.lambda_min = -6;
  range.lambda_max = 10;
  const ModelSigmas levels = ModelSigmas::log_snr(range);
  EXPECT_DOUBLE_EQ(levels.sigma_min(), std::exp(-5.0));
  EXPECT_DOUBLE_EQ(levels.sigma_max(), std::exp(3.0));
  EXPECT_DOUBLE_EQ(levels.snap(0.123), 0.123);
  const torch::Tensor lambda = levels.time_for(0.5, 2, torch::kFloat64);
  EXPECT_EQ(lambda.scalar_type(), torch::kFloat64);
  EXPECT_DOUBLE_EQ(lambda[1].item<double>(), -2.0 * std::log(0.5));
}

TEST(SigmaSpacing, KarrasIsEdmEquation5AndLogSnrIsUniformInLogSigma) {
  LogSnrSchedule range;
  range.lambda_min = -2 * std::log(80.0);  // sigma from 80 ...
  range.lambda_max = -2 * std::log(0.002);  // ... to 0.002, EDM's range
  const ModelSigmas levels = ModelSigmas::log_snr(range);
  const std::vector<double> karras = make_sigmas(SigmaSpacing::karras, levels, 5);
  ASSERT_EQ(karras.size(), 6u);
  const double a = std::pow(80.0, 1 / 7.0), b = std::pow(0.002, 1 / 7.0);
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(karras[i], std::pow(a + i / 4.0 * (b - a), 7.0), 1e-12 * karras[i]) << i;
  EXPECT_EQ(karras.back(), 0.0);
  const std::vector<double> uniform = make_sigmas(SigmaSpacing::log_snr, levels, 3);
  EXPECT_NEAR(uniform[0], 80.0, 1e-12);
  EXPECT_NEAR(uniform[1], std::sqrt(80.0 * 0.002), 1e-12);
  EXPECT_NEAR(uniform[2], 0.002, 1e-15);
  const std::vector<double> one = make_sigmas(SigmaSpacing::karras, levels, 1);
  ASSERT_EQ(one.size(), 2u);
  EXPECT_NEAR(one[0], 80.0, 1e-12);
  EXPECT_EQ(one[1], 0.0);
  // A wider model range is cut to EDM's [0.002, 80]: the default log-SNR range runs from
  // 4.5e-5 to 22026.
  const ModelSigmas wide = ModelSigmas::log_snr(LogSnrSchedule{});
  const std::vector<double> cut = make_sigmas(SigmaSpacing::karras, wide, 10);
  // (x^(1/7))^7 and exp(log x) round in the last few bits.
  EXPECT_NEAR(cut.front(), 80.0, 1e-12);
  EXPECT_NEAR(cut[cut.size() - 2], 0.002, 1e-16);
  EXPECT_NEAR(make_sigmas(SigmaSpacing::log_snr, wide, 10).front(), 80.0, 1e-12);
}

TEST(SigmaSpacing, TimestepsFollowTheRespacingOrTheContinuousSamplersGrid) {
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 1000);
  const ModelSigmas discrete = ModelSigmas::discrete(schedule);
  // "4" keeps 0, 333, 666, 999 (guided-diffusion's section rule): their sigmas, noisiest first.
  const std::vector<double> four = make_sigmas(SigmaSpacing::timesteps, discrete, 4);
  const std::vector<double>& table = discrete.timestep_sigmas();
  EXPECT_EQ(four, (std::vector<double>{table[999], table[666], table[333], table[0], 0.0}));
  EXPECT_EQ(make_sigmas(SigmaSpacing::timesteps, discrete, 0, "ddim4"),
            (std::vector<double>{table[750], table[500], table[250], table[0], 0.0}));
  // Log-SNR: lambda(u_i) at u_i = 1 - i/steps, the levels of the continuous sampler.
  const LogSnrSchedule range;
  const std::vector<double> continuous = make_sigmas(SigmaSpacing::timesteps, ModelSigmas::log_snr(range), 4);
  ASSERT_EQ(continuous.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    const double lambda = range.lambda_of_u(torch::tensor({1.0 - i / 4.0}, torch::kFloat64)).item<double>();
    EXPECT_NEAR(continuous[i], std::exp(-lambda / 2), 1e-12 * continuous[i]) << i;
  }
  expect_error_naming<InputError>([&] { make_sigmas(SigmaSpacing::karras, discrete, 4, "ddim4"); }, "--respacing");
  expect_error_naming<InputError>([&] { make_sigmas(SigmaSpacing::karras, discrete, 0); }, "--steps");
}

TEST(SigmaSpacing, DiscreteModelsGetTheirOwnLevelsWithRepeatsMerged) {
  // T = 30 linear: 200 Karras levels snap onto at most 30 distinct sigma_t, in order.
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 30);
  const ModelSigmas levels = ModelSigmas::discrete(schedule);
  const std::vector<double> sigmas = make_sigmas(SigmaSpacing::karras, levels, 200);
  EXPECT_LE(sigmas.size(), 31u);
  EXPECT_EQ(sigmas.front(), levels.snap(std::min(levels.sigma_max(), 80.0)));
  EXPECT_EQ(sigmas[sigmas.size() - 2], levels.sigma_min());
  for (size_t i = 0; i + 1 < sigmas.size(); ++i) {
    EXPECT_GT(sigmas[i], sigmas[i + 1]);
    if (i + 1 < sigmas.size() - 1) {
      EXPECT_NE(std::find(levels.timestep_sigmas().begin(), levels.timestep_sigmas().end(), sigmas[i]),
                levels.timestep_sigmas().end());
    }
  }
  SigmaSchedule bad{levels, {1.0, 2.0, 0.0}};
  expect_error_naming<InputError>([&] { bad.validate("euler"); }, "strictly decreasing");
  bad.sigmas = {1.0};
  expect_error_naming<InputError>([&] { bad.validate("euler"); }, "followed by 0");
  expect_error_naming<InputError>([&] { parse_sigma_spacing("exponential"); }, "exponential");
}
