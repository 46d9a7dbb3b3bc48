// Tests of the counter-based per-sample noise: each value is a pure function of (seed,
// sample index, stream, element), so batches can be split, reordered and sharded; the
// values are standard normal (moments, tail mass, distribution function) and uncorrelated
// across elements, samples and streams.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/sample_noise.hpp"

using namespace guidiff;

namespace {

torch::Tensor indices(std::vector<int64_t> values) { return torch::tensor(values, torch::kInt64); }

double correlation(const torch::Tensor& a, const torch::Tensor& b) {
  const auto x = a.to(torch::kFloat64).flatten();
  const auto y = b.to(torch::kFloat64).flatten();
  const auto xc = x - x.mean();
  const auto yc = y - y.mean();
  return ((xc * yc).sum() / (xc.square().sum() * yc.square().sum()).sqrt()).item<double>();
}

// Fraction of positions where two draws agree exactly (independent float32 normals: ~0).
double fraction_equal(const torch::Tensor& a, const torch::Tensor& b) {
  return a.eq(b).to(torch::kFloat64).mean().item<double>();
}

}  // namespace

TEST(SampleNoise, RowDependsOnlyOnSeedIndexStreamAndShape) {
  const SampleNoise noise(42);
  const std::vector<int64_t> shape{3, 5, 7};
  const auto all = noise.normal(indices({0, 1, 2, 3, 4, 5, 6, 7}), 3, shape);
  ASSERT_EQ(all.sizes(), (std::vector<int64_t>{8, 3, 5, 7}));
  ASSERT_EQ(all.scalar_type(), torch::kFloat32);
  // Each value comes from the same scalar code on the same counter, whatever the batch or
  // thread split, so equality is exact.
  const auto pair = noise.normal(indices({5, 3}), 3, shape);
  EXPECT_TRUE(torch::equal(pair[0], all[5]));
  EXPECT_TRUE(torch::equal(pair[1], all[3]));
  const auto reversed = noise.normal(indices({7, 6, 5, 4, 3, 2, 1, 0}), 3, shape);
  EXPECT_TRUE(torch::equal(reversed, all.flip(0)));
  // A second object with the same seed, and a repeated call, give the same values.
  EXPECT_TRUE(torch::equal(SampleNoise(42).normal(indices({5}), 3, shape)[0], all[5]));
  EXPECT_TRUE(torch::equal(noise.normal(indices({0, 1, 2, 3, 4, 5, 6, 7}), 3, shape), all));
  // Large and negative indices are streams like any other.
  const auto big = noise.normal(indices({int64_t{1} << 40, -3}), SampleNoise::initial_stream, shape);
  EXPECT_TRUE(torch::equal(noise.normal(indices({-3}), SampleNoise::initial_stream, shape)[0], big[1]));
  // Elements are counted in row-major order: the shape only arranges the same sequence.
  const auto flat = noise.normal(indices({2}), 3, {105});
  EXPECT_TRUE(torch::equal(flat[0], all[2].flatten()));
  EXPECT_TRUE(torch::equal(noise.normal(indices({2}), 3, {9})[0], flat[0].slice(0, 0, 9)));
}

TEST(SampleNoise, SeedsStreamsAndIndicesGiveDifferentValues) {
  const std::vector<int64_t> shape{4096};
  const auto base = SampleNoise(1).normal(indices({10}), 0, shape)[0];
  // Two independent float32 normals coincide with probability ~1e-7 (density times an ulp),
  // ~4e-4 expected matches in 4096; 0.001 needs 5, while a repeated stream matches all.
  EXPECT_LT(fraction_equal(base, SampleNoise(2).normal(indices({10}), 0, shape)[0]), 0.001);
  EXPECT_LT(fraction_equal(base, SampleNoise(1).normal(indices({11}), 0, shape)[0]), 0.001);
  EXPECT_LT(fraction_equal(base, SampleNoise(1).normal(indices({10}), 1, shape)[0]), 0.001);
  EXPECT_LT(fraction_equal(base, SampleNoise(1).normal(indices({10}), SampleNoise::initial_stream, shape)[0]),
            0.001);
  // Seeds differing only in the high word.
  EXPECT_LT(fraction_equal(base, SampleNoise(1 + (uint64_t{1} << 32)).normal(indices({10}), 0, shape)[0]),
            0.001);
}

TEST(SampleNoise, ValuesAreStandardNormalAndUncorrelated) {
  const SampleNoise noise(2024);
  std::vector<int64_t> rows(1000);
  for (int64_t i = 0; i < 1000; ++i) rows[i] = i;
  const auto x = noise.normal(indices(rows), 5, {1000}).to(torch::kFloat64);  // 1e6 values
  const double n = static_cast<double>(x.numel());
  // 5 standard errors: mean (1/sqrt(n)), variance (sqrt(2/n)), fourth moment (sqrt(96/n)).
  EXPECT_NEAR(x.mean().item<double>(), 0.0, 5.0 / std::sqrt(n));
  EXPECT_NEAR(x.var().item<double>(), 1.0, 5.0 * std::sqrt(2.0 / n));
  EXPECT_NEAR(x.pow(3).mean().item<double>(), 0.0, 5.0 * std::sqrt(15.0 / n));
  EXPECT_NEAR(x.pow(4).mean().item<double>(), 3.0, 5.0 * std::sqrt(96.0 / n));
  // Tail mass beyond 3 sigma: 2 (1 - Phi(3)) = 0.0026998.
  const double p3 = 0.0026997960632601866;
  EXPECT_NEAR(x.abs().gt(3.0).to(torch::kFloat64).mean().item<double>(), p3, 5.0 * std::sqrt(p3 / n));
  // Kolmogorov-Smirnov against Phi on 1e5 values: D < 1.95 / sqrt(m) (0.1 % level).
  const auto sorted = std::get<0>(x.flatten().slice(0, 0, 100000).sort());
  const double m = 100000.0;
  const auto cdf = 0.5 * torch::erfc(-sorted / std::sqrt(2.0));
  const auto ranks = torch::arange(1, 100001, torch::kFloat64) / m;
  const double ks = torch::maximum((ranks - cdf).abs(), (ranks - 1.0 / m - cdf).abs()).max().item<double>();
  EXPECT_LT(ks, 1.95 / std::sqrt(m));
  // Correlations: neighbouring elements (including within one Box-Muller pair), neighbouring
  // samples, and two streams of the same sample. |r| < 5 / sqrt(count).
  const double bound_elements = 5.0 / std::sqrt(1000.0 * 999.0);
  EXPECT_LT(std::abs(correlation(x.slice(1, 0, 999), x.slice(1, 1, 1000))), bound_elements);
  const auto evens = x.slice(1, 0, 1000, 2);
  const auto odds = x.slice(1, 1, 1000, 2);
  EXPECT_LT(std::abs(correlation(evens, odds)), 5.0 / std::sqrt(evens.numel()));
  EXPECT_LT(std::abs(correlation(evens.square(), odds.square())), 5.0 * std::sqrt(2.0) / std::sqrt(evens.numel()));
  EXPECT_LT(std::abs(correlation(x.slice(0, 0, 999), x.slice(0, 1, 1000))), 5.0 / std::sqrt(999000.0));
  const auto other_stream = noise.normal(indices(rows), 6, {1000}).to(torch::kFloat64);
  EXPECT_LT(std::abs(correlation(x, other_stream)), 5.0 / std::sqrt(n));
}

TEST(SampleNoise, RejectsBadArguments) {
  const SampleNoise noise(0);
  EXPECT_THROW(noise.normal(torch::tensor({0, 1}, torch::kInt32), 0, {2}), InputError);
  EXPECT_THROW(noise.normal(torch::zeros({2, 2}, torch::kInt64), 0, {2}), InputError);
  EXPECT_THROW(noise.normal(torch::Tensor(), 0, {2}), InputError);
  EXPECT_THROW(noise.normal(indices({0}), int64_t{1} << 33, {2}), InputError);
  EXPECT_THROW(noise.normal(indices({0}), 0, {-1}), InputError);
  EXPECT_EQ(noise.normal(indices({}), 0, {3}).sizes(), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(noise.seed(), 0u);
}
