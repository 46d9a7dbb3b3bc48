// Sample-quality metrics: FID against closed forms (commuting, non-commuting and singular
// covariances), feature statistics, Inception Score, precision/recall and density/coverage
// on point sets small enough to check by hand, class accuracy, and the statistics cache.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/eval/metrics.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/safetensors.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using guidiff::testing::same_bytes;

namespace {

torch::Tensor doubles(std::vector<double> values, std::vector<int64_t> shape) {
  return torch::tensor(values, torch::kFloat64).reshape(shape);
}

// 1-D points as an [N, 1] float32 feature tensor.
torch::Tensor points_1d(const std::vector<float>& values) {
  return torch::tensor(values, torch::kFloat32).reshape({-1, 1});
}

FeatureStatistics statistics_of(std::vector<double> mean, std::vector<double> covariance) {
  const int64_t dim = static_cast<int64_t>(mean.size());
  FeatureStatistics statistics;
  statistics.mean = doubles(mean, {dim});
  statistics.covariance = doubles(covariance, {dim, dim});
  statistics.count = 100;
  return statistics;
}

// ---------------------------------------------------------------------------------------
// Feature statistics

TEST(FeatureStatistics, ExactOnAHandSet) {
  // Points (0,0), (2,1), (4,5): mean (2,2); centred (-2,-2), (0,-1), (2,3). Sums of products:
  // xx = 4+0+4 = 8, xy = 4+0+6 = 10, yy = 4+1+9 = 14; divided by N-1 = 2: [[4,5],[5,7]].
  const auto statistics = feature_statistics(torch::tensor({0.f, 0.f, 2.f, 1.f, 4.f, 5.f}).reshape({3, 2}));
  EXPECT_EQ(statistics.count, 3);
  EXPECT_EQ(statistics.mean.scalar_type(), torch::kFloat64);
  EXPECT_EQ(statistics.covariance.scalar_type(), torch::kFloat64);
  // Small integers: every float64 sum and product here is exact in any order.
  EXPECT_TRUE(torch::equal(statistics.mean, doubles({2, 2}, {2})));
  EXPECT_TRUE(torch::equal(statistics.covariance, doubles({4, 5, 5, 7}, {2, 2})));
  EXPECT_FALSE(statistics.features.defined());
}

TEST(FeatureStatistics, ApproximatesAKnownGaussian) {
  torch::manual_seed(1);
  const auto mean = doubles({1, -2, 3}, {3});
  const auto factor = doubles({1, 0, 0, 0.5, 2, 0, -1, 0.3, 0.7}, {3, 3});  // covariance = L L^T
  const int64_t n = 200000;
  const auto samples = (torch::randn({n, 3}, torch::kFloat64).mm(factor.t()) + mean).to(torch::kFloat32);
  const auto statistics = feature_statistics(samples);
  EXPECT_EQ(statistics.count, n);
  // Statistical (float32 rounding, ~1e-7, is negligible). Standard errors are at most
  // sqrt(4.25 / 2e5) = 0.0046 for the mean (0.03 is 6.5 of them) and sqrt((S_ii S_jj +
  // S_ij^2) / n) <= sqrt(2 * 4.25^2 / 2e5) = 0.013 for a covariance entry (0.06 is 4.5).
  EXPECT_TRUE(torch::allclose(statistics.mean, mean, 0, 0.03)) << statistics.mean;
  EXPECT_TRUE(torch::allclose(statistics.covariance, factor.mm(factor.t()), 0, 0.06)) << statistics.covariance;
}

TEST(FeatureStatistics, RejectsBadFeatures) {
  expect_error<InputError>([] { feature_statistics(torch::zeros({1, 4})); }, {"at least 2"});
  expect_error<InputError>([] { feature_statistics(torch::zeros({8})); }, {"[N, D]"});
  expect_error<InputError>([] { feature_statistics(torch::zeros({3, 0})); }, {"dimension"});
  auto with_nan = torch::zeros({4, 2});
  with_nan[2][1] = NAN;
  expect_error<InputError>([&] { feature_statistics(with_nan); }, {"finite"});
}

// ---------------------------------------------------------------------------------------
// Frechet distance

TEST(FrechetDistance, IdenticalSetsGiveZeroAndItIsSymmetric) {
  torch::manual_seed(2);
  const auto a = feature_statistics(torch::randn({500, 8}) * 3 + 1);
  const double scale = 2 * a.covariance.trace().item<double>();
  // float64 eigh and products of a well-conditioned S (500 points in 8-D: eigenvalues ~9 +-
  // 30%): a few n u |S|^2 / (2 sqrt(lambda_min)) in tr sqrt, ~1e-15 of scale; 1e-12 x scale.
  EXPECT_LE(frechet_distance(a, a), 1e-12 * scale);
  EXPECT_GE(frechet_distance(a, a), 0.0);

  const auto b = feature_statistics(torch::randn({400, 8}).mm(torch::randn({8, 8})) - 0.5);
  const double ab = frechet_distance(a, b), ba = frechet_distance(b, a);
  EXPECT_GT(ab, 1.0);
  // Mathematically equal spectra, computed by different float64 eighs; b's random covariance
  // may be ill-conditioned, and sqrt amplifies its small eigenvalues' errors: 1e-9 relative.
  EXPECT_NEAR(ab, ba, 1e-9 * ab);
}

TEST(FrechetDistance, MatchesTheClosedFormForDiagonalCovariances) {
  // Commuting covariances: tr sqrt(S1 S2) = sum_i sqrt(s1_i s2_i) = sqrt(4)+sqrt(4)+sqrt(144)
  // = 16. |mu1 - mu2|^2 = 1 + 0 + 4 = 5, tr S1 + tr S2 = 14 + 21, so d^2 = 5 + 35 - 32 = 8.
  const auto a = statistics_of({0, 1, 2}, {1, 0, 0, 0, 4, 0, 0, 0, 9});
  const auto b = statistics_of({1, 1, 0}, {4, 0, 0, 0, 1, 0, 0, 0, 16});
  // Diagonal: eigh is exact and every square root is of a perfect square, ~0 error; 1e-12.
  EXPECT_NEAR(frechet_distance(a, b), 8.0, 1e-12);
  EXPECT_NEAR(frechet_distance(b, a), 8.0, 1e-12);
}

TEST(FrechetDistance, MatchesTheTwoByTwoFormulaForNonCommutingCovariances) {
  // S1 = [[2,1],[1,2]] and S2 = diag(1,3) do not commute: S1 S2 = [[2,3],[1,6]]. For a 2x2
  // matrix with non-negative eigenvalues l1, l2, (sqrt l1 + sqrt l2)^2 = tr + 2 sqrt(det), so
  // tr sqrt(S1 S2) = sqrt(8 + 2 sqrt(9)) = sqrt(14). With |mu1 - mu2|^2 = 9 + 16 = 25:
  // d^2 = 25 + 4 + 4 - 2 sqrt(14).
  const auto a = statistics_of({0, 0}, {2, 1, 1, 2});
  const auto b = statistics_of({3, -4}, {1, 0, 0, 3});
  const double expected = 25 + 8 - 2 * std::sqrt(14.0);
  // float64 eigh of well-conditioned 2x2s (eigenvalues 1-6): a few ulps of ~30, ~1e-14.
  EXPECT_NEAR(frechet_distance(a, b), expected, 1e-12);
  EXPECT_NEAR(frechet_distance(b, a), expected, 1e-12);
}

TEST(FrechetDistance, HandlesASingularCovariance) {
  // S1 = [[1,1],[1,1]] has rank 1; S1 S2 = S1 for S2 = I, eigenvalues 2 and 0, so
  // tr sqrt(S1 S2) = sqrt(2) and d^2 = 2 + 2 - 2 sqrt(2).
  const auto a = statistics_of({0, 0}, {1, 1, 1, 1});
  const auto b = statistics_of({0, 0}, {1, 0, 0, 1});
  // S1's zero eigenvalue comes out of eigh as +-delta with delta ~ a few u |S1| (~1e-15),
  // LAPACK- and CPU-dependent; a positive one survives the clamp and its square root
  // (~3e-8), here and again in S1^(1/2) S2 S1^(1/2), adds up to ~6e-8 to tr sqrt.
  EXPECT_NEAR(frechet_distance(a, b), 4 - 2 * std::sqrt(2.0), 1e-7);
  // Identical singular covariances: exactly 0 after clamping, never negative. The square-root
  // error above only raises tr sqrt, i.e. lowers d into the clamp; what is left is a few ulps.
  EXPECT_NEAR(frechet_distance(a, a), 0.0, 1e-12);
  EXPECT_GE(frechet_distance(a, a), 0.0);
}

TEST(FrechetDistance, RejectsMismatchedOrBrokenStatistics) {
  const auto two = statistics_of({0, 0}, {1, 0, 0, 1});
  const auto three = statistics_of({0, 0, 0}, {1, 0, 0, 0, 1, 0, 0, 0, 1});
  expect_error<InputError>([&] { frechet_distance(two, three); }, {"dimensions differ", "2", "3"});
  auto bad_shape = two;
  bad_shape.covariance = torch::eye(3, torch::kFloat64);
  expect_error<InputError>([&] { frechet_distance(two, bad_shape); }, {"second", "covariance"});
  auto with_nan = two;
  with_nan.mean = doubles({0, NAN}, {2});
  expect_error<InputError>([&] { frechet_distance(with_nan, two); }, {"first", "finite"});
}

TEST(FrechetDistance, WarnsAboutSmallSamples) {
  EXPECT_EQ(fid_sample_warning(10000, 2048), "");
  const auto rank_deficient = fid_sample_warning(1500, 2048);
  EXPECT_NE(rank_deficient.find("1500"), std::string::npos) << rank_deficient;
  EXPECT_NE(rank_deficient.find("rank-deficient"), std::string::npos) << rank_deficient;
  const auto small = fid_sample_warning(500, 64);
  EXPECT_NE(small.find("500"), std::string::npos) << small;
  EXPECT_EQ(small.find('\n'), std::string::npos);
}

// ---------------------------------------------------------------------------------------
// Inception Score

// The Inception Score tests are float64 throughout on exactly representable probabilities:
// errors are a few ulps of values <= 4 (~1e-15), against 1e-12.
TEST(InceptionScore, UniformPredictionsScoreOne) {
  double spread = -1;
  EXPECT_NEAR(inception_score(torch::full({10, 4}, 0.25), 1, &spread), 1.0, 1e-12);
  EXPECT_EQ(spread, 0.0);
}

TEST(InceptionScore, EvenlySpreadOneHotPredictionsScoreK) {
  // Each split (4 rows, labels 0..3) has p(y) uniform, KL = log 4 for every row: IS = 4.
  const auto one_hot = torch::one_hot(torch::arange(12) % 4, 4).to(torch::kFloat32);
  double spread = -1;
  EXPECT_NEAR(inception_score(one_hot, 1, &spread), 4.0, 1e-12);
  EXPECT_NEAR(inception_score(one_hot, 3, &spread), 4.0, 1e-12);
  EXPECT_NEAR(spread, 0.0, 1e-12);
}

TEST(InceptionScore, MatchesAHandComputationWithZeroProbabilities) {
  // Rows (1/2, 1/2) and (1, 0): p(y) = (3/4, 1/4). KL of row 1 = 1/2 log(2/3) + 1/2 log 2
  // = 1/2 log(4/3); KL of row 2 = log(4/3) (the 0 log 0 term is 0). IS = exp(3/4 log(4/3)).
  EXPECT_NEAR(inception_score(doubles({0.5, 0.5, 1, 0}, {2, 2}), 1), std::pow(4.0 / 3.0, 0.75), 1e-12);
}

TEST(InceptionScore, AveragesOverSplits) {
  // Rows 0-3 all class 0, rows 4-7 classes 0,0,1,1. Two splits: IS 1 (p(y) one-hot) and IS 2,
  // mean 1.5, population std 0.5. One split: p(y) = (3/4, 1/4), six rows with KL log(4/3) and
  // two with KL log 4, so IS = (4/3)^(6/8) * 4^(2/8).
  const auto labels = torch::tensor({0, 0, 0, 0, 0, 0, 1, 1}, torch::kLong);
  const auto probabilities = torch::one_hot(labels, 2).to(torch::kFloat64);
  double spread = -1;
  EXPECT_NEAR(inception_score(probabilities, 2, &spread), 1.5, 1e-12);
  EXPECT_NEAR(spread, 0.5, 1e-12);
  EXPECT_NEAR(inception_score(probabilities, 1, &spread), std::pow(4.0 / 3.0, 0.75) * std::pow(4.0, 0.25), 1e-12);
  EXPECT_EQ(spread, 0.0);
}

TEST(InceptionScore, UnevenSplitsCutAtIN_Over_Splits) {
  // N = 5, splits = 2: parts are rows [0, 2) and [2, 5). Rows 0-1 are classes 0 and 1 (IS 2),
  // rows 2-4 all class 0 (IS 1): mean 1.5. Cutting at row 3 instead would give a first part
  // with classes 0,1,0, whose IS is not 2.
  const auto probabilities = torch::one_hot(torch::tensor({0, 1, 0, 0, 0}, torch::kLong), 2).to(torch::kFloat32);
  EXPECT_NEAR(inception_score(probabilities, 2), 1.5, 1e-12);
}

TEST(InceptionScore, RejectsBadInput) {
  const auto logits = doubles({0.5, 0.5, 2.0, 1.0}, {2, 2});
  expect_error<InputError>([&] { inception_score(logits, 1); }, {"row 1", "sums to"});
  const auto valid = torch::full({4, 2}, 0.5);
  expect_error<InputError>([&] { inception_score(valid, 0); }, {"splits", "[1, 4]"});
  expect_error<InputError>([&] { inception_score(valid, 5); }, {"splits", "got 5"});
  auto with_nan = valid.clone();
  with_nan[0][0] = NAN;
  expect_error<InputError>([&] { inception_score(with_nan, 1); }, {"finite"});
  expect_error<InputError>([] { inception_score(torch::full({4}, 0.25), 1); }, {"[N, K]"});
  expect_error<InputError>([] { inception_score(doubles({1.5, -0.5}, {1, 2}), 1); }, {"non-negative"});
}

// ---------------------------------------------------------------------------------------
// Precision and recall

TEST(PrecisionRecall, MatchesAHandComputationIn1D) {
  // k = 1. Real {0, 1, 2, 10}: radii 1, 1, 1, 8, manifold [-1,1] u [0,2] u [1,3] u [2,18]
  // = [-1, 18]. Fake {0.5, 0.6, 30}: radii 0.1, 0.1, 29.4, manifold [0.4,0.6] u [0.5,0.7]
  // u [0.6,59.4] = [0.4, 59.4].
  // precision: 0.5 and 0.6 lie in [-1, 18], 30 does not: 2/3.
  // recall: 1, 2, 10 lie in [0.4, 59.4], 0 does not: 3/4.
  const auto result = precision_recall(points_1d({0, 1, 2, 10}), points_1d({0.5f, 0.6f, 30}), 1);
  EXPECT_DOUBLE_EQ(result.precision, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(result.recall, 0.75);
}

TEST(PrecisionRecall, MatchesAHandComputationIn2DWithDefaultK) {
  // k = 3. Real = the unit square's corners: each corner's 3rd neighbour is the opposite
  // corner, radius sqrt 2. Fake (0.5,0.5) is 0.71 from every corner: inside. (2,1) is 1 from
  // (1,1): inside. (3,3) is 2 sqrt 2 from (1,1), its nearest corner: outside. (10,10): outside.
  // Precision 2/4. Fake radii (3rd of 3 neighbours, i.e. the farthest fake point) are 13.4,
  // 9.9, 12.0 and 13.4, and every corner lies within 1.6 of (0.5,0.5): recall 1.
  const auto real = torch::tensor({0.f, 0.f, 1.f, 0.f, 0.f, 1.f, 1.f, 1.f}).reshape({4, 2});
  const auto fake = torch::tensor({0.5f, 0.5f, 3.f, 3.f, 2.f, 1.f, 10.f, 10.f}).reshape({4, 2});
  const auto result = precision_recall(real, fake);
  EXPECT_DOUBLE_EQ(result.precision, 0.5);
  EXPECT_DOUBLE_EQ(result.recall, 1.0);
}

TEST(PrecisionRecall, BallsAreClosed) {
  // k = 1. Real {0, 1}: radii 1 and 1, manifold [-1, 2]. Fake 2 lies exactly on the sphere
  // around 1 and counts as inside (Kynkaanniemi et al. 2019, eq. 1 uses <=); 5 is outside.
  // Fake radii are 3 and 3, manifold [-1, 8]: both real points are inside.
  const auto result = precision_recall(points_1d({0, 1}), points_1d({2, 5}), 1);
  EXPECT_DOUBLE_EQ(result.precision, 0.5);
  EXPECT_DOUBLE_EQ(result.recall, 1.0);
  // The same tie for density/coverage: 2 is in B(1, 1) only, so density = 1 / (k M) = 1 and
  // one of the two real balls is covered.
  const auto density = density_coverage(points_1d({0, 1}), points_1d({2}), 1);
  EXPECT_DOUBLE_EQ(density.density, 1.0);
  EXPECT_DOUBLE_EQ(density.coverage, 0.5);
}

TEST(PrecisionRecall, IdenticalSetsGiveOne) {
  torch::manual_seed(3);
  const auto points = torch::randn({300, 5});  // over 25 points: cdist's matrix-product path
  const auto result = precision_recall(points, points.clone());
  // The matrix-product path puts each copy ~sqrt(u) |x| ~ 1e-7 from its original, far inside
  // every k-NN radius (~0.5): exact counts.
  EXPECT_EQ(result.precision, 1.0);
  EXPECT_EQ(result.recall, 1.0);
}

// A direct computation over the full distance matrix, for sets larger than one row block.
struct Naive {
  torch::Tensor real_radii, fake_radii, distances;  // distances: [fake, real]
};
Naive naive(const torch::Tensor& real, const torch::Tensor& fake, int64_t k) {
  const auto r = real.to(torch::kFloat64), f = fake.to(torch::kFloat64);
  const auto radii = [k](const torch::Tensor& x) {
    return std::get<0>(torch::cdist(x, x, 2, /*never use mm*/ 2).sort(1)).select(1, k);
  };
  return {radii(r), radii(f), torch::cdist(f, r, 2, 2)};
}

TEST(PrecisionRecall, BlockedComputationAgreesWithTheFullMatrix) {
  torch::manual_seed(4);
  const auto real = torch::randn({1300, 3});
  const auto fake = torch::randn({1100, 3}) * 1.3 + 0.4;  // more than one 1024-row block each
  const auto full = naive(real, fake, 3);
  const double precision = full.distances.le(full.real_radii.unsqueeze(0)).any(1).to(torch::kFloat64).mean().item<double>();
  const double recall = full.distances.le(full.fake_radii.unsqueeze(1)).any(0).to(torch::kFloat64).mean().item<double>();
  const auto result = precision_recall(real, fake);
  // The two cdist paths (matrix product vs direct) differ by ~1e-15 in float64; a membership
  // flips only for a fake-real distance that close to a radius (~1e-8 expected of 1.4e6
  // pairs). The tolerance allows one flipped point.
  EXPECT_NEAR(result.precision, precision, 1.0 / 1100);  // one borderline point may flip
  EXPECT_NEAR(result.recall, recall, 1.0 / 1300);
  EXPECT_GT(result.precision, 0.3);
  EXPECT_LT(result.precision, 1.0);
}

TEST(PrecisionRecall, RejectsBadInput) {
  const auto four = torch::zeros({4, 2});
  expect_error<InputError>([&] { precision_recall(torch::zeros({3, 2}), four); }, {"real", "3 points", "k = 3"});
  expect_error<InputError>([&] { precision_recall(four, torch::zeros({2, 2}), 2); }, {"fake", "2 points", "k = 2"});
  expect_error<InputError>([&] { precision_recall(four, torch::zeros({4, 3})); }, {"dimensions differ", "2 vs 3"});
  expect_error<InputError>([&] { precision_recall(four, four, 0); }, {"k must be at least 1"});
  auto with_nan = four.clone();
  with_nan[1][0] = NAN;
  expect_error<InputError>([&] { precision_recall(four, with_nan); }, {"fake", "finite"});
}

// ---------------------------------------------------------------------------------------
// Density and coverage

TEST(DensityCoverage, MatchesAHandComputationIn1D) {
  // k = 2. Real {0, 1, 2, 3, 10}; distances to the others and the 2nd smallest:
  //   0: 1,2,3,10 -> 2     1: 1,1,2,9 -> 1     2: 2,1,1,8 -> 1     3: 3,2,1,7 -> 2
  //   10: 10,9,8,7 -> 8
  // Balls [-2,2], [0,2], [1,3], [1,5], [2,18]. Fake {0.25, 4, 20}:
  //   0.25 lies in [-2,2] and [0,2]     (2 balls)
  //   4    lies in [1,5] and [2,18]     (2 balls)
  //   20   lies in none.
  // density = (2 + 2 + 0) / (k M) = 4 / 6; coverage: the ball around 2 holds no fake point,
  // so 4 of 5 balls are covered.
  const auto result = density_coverage(points_1d({0, 1, 2, 3, 10}), points_1d({0.25f, 4, 20}), 2);
  EXPECT_DOUBLE_EQ(result.density, 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(result.coverage, 0.8);
}

TEST(DensityCoverage, IdenticalSetsAreFullyCovered) {
  torch::manual_seed(5);
  const auto points = torch::randn({300, 4});
  const auto result = density_coverage(points, points.clone());
  // Each copy is ~1e-7 from its original (see PrecisionRecall.IdenticalSetsGiveOne).
  EXPECT_EQ(result.coverage, 1.0);
  // Each fake point lies at least in its own copy's ball, so density >= 1/k; for a sample
  // compared with itself it is typically near 1 (Naeem et al. 2020, sec. 3.2).
  EXPECT_GT(result.density, 0.5);
  EXPECT_LT(result.density, 2.0);
}

TEST(DensityCoverage, BlockedComputationAgreesWithTheFullMatrix) {
  torch::manual_seed(6);
  const auto real = torch::randn({1200, 2});
  const auto fake = torch::randn({1500, 2}) * 0.7 + 0.5;
  const auto full = naive(real, fake, 5);
  const auto inside = full.distances.le(full.real_radii.unsqueeze(0));
  const double density = inside.sum().item<int64_t>() / (5.0 * 1500);
  const double coverage = inside.any(0).to(torch::kFloat64).mean().item<double>();
  const auto result = density_coverage(real, fake);
  // As for precision/recall: at most a borderline membership or two flip between cdist paths.
  EXPECT_NEAR(result.density, density, 2.0 / (5.0 * 1500));
  EXPECT_NEAR(result.coverage, coverage, 1.0 / 1200);
  EXPECT_LT(result.coverage, 1.0);
}

TEST(DensityCoverage, RejectsBadInput) {
  expect_error<InputError>([] { density_coverage(torch::zeros({5, 2}), torch::zeros({3, 2})); },
                           {"real", "5 points", "k = 5"});
  expect_error<InputError>([] { density_coverage(torch::zeros({6, 2}), torch::zeros({0, 2})); }, {"fake", "0 points"});
  expect_error<InputError>([] { density_coverage(torch::zeros({6, 2}), torch::zeros({3, 1})); }, {"dimensions differ"});
  auto with_inf = torch::zeros({6, 2});
  with_inf[0][0] = INFINITY;
  expect_error<InputError>([&] { density_coverage(with_inf, torch::zeros({3, 2})); }, {"real", "finite"});
}

// ---------------------------------------------------------------------------------------
// Both neighbour metrics from shared distance passes

TEST(NeighbourMetrics, MatchesTheHandComputationsOfBothMetricsIn1D) {
  // Density/coverage with k = 2 as in DensityCoverage.MatchesAHandComputationIn1D: 4/6, 0.8.
  // Precision/recall with k = 1 on the same sets. Real {0, 1, 2, 3, 10}: 1st-neighbour radii
  // 1, 1, 1, 1, 7, manifold [-1, 17]. Fake {0.25, 4, 20}: radii 3.75, 3.75, 16, manifold
  // [-3.5, 36]. precision: 0.25 and 4 lie in [-1, 17], 20 does not: 2/3. recall: every real
  // point lies in [-3.5, 36]: 1. The two metrics' real balls come from one pass with k = 1 and 2.
  const auto result = neighbour_metrics(points_1d({0, 1, 2, 3, 10}), points_1d({0.25f, 4, 20}), 1, 2);
  EXPECT_DOUBLE_EQ(result.precision_recall.precision, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(result.precision_recall.recall, 1.0);
  EXPECT_DOUBLE_EQ(result.density_coverage.density, 4.0 / 6.0);
  EXPECT_DOUBLE_EQ(result.density_coverage.coverage, 0.8);
}

TEST(NeighbourMetrics, EqualsTheSeparateMetricsWhicheverKIsLarger) {
  torch::manual_seed(7);
  const auto real = torch::randn({1100, 6});
  const auto fake = torch::randn({1050, 6}) * 1.2 + 0.2;  // more than one row block each
  for (const auto& [pr_k, dc_k] : std::vector<std::pair<int64_t, int64_t>>{{3, 5}, {5, 3}, {4, 4}}) {
    const auto shared = neighbour_metrics(real, fake, pr_k, dc_k);
    const auto pr = precision_recall(real, fake, pr_k);
    const auto dc = density_coverage(real, fake, dc_k);
    // The same distance blocks and the same comparisons: equal, not close.
    EXPECT_EQ(shared.precision_recall.precision, pr.precision) << pr_k << "," << dc_k;
    EXPECT_EQ(shared.precision_recall.recall, pr.recall) << pr_k << "," << dc_k;
    EXPECT_EQ(shared.density_coverage.density, dc.density) << pr_k << "," << dc_k;
    EXPECT_EQ(shared.density_coverage.coverage, dc.coverage) << pr_k << "," << dc_k;
  }
  // The two k give different balls, so a mix-up of the radii columns would show.
  EXPECT_NE(density_coverage(real, fake, 3).density, density_coverage(real, fake, 5).density);
  EXPECT_NE(precision_recall(real, fake, 3).precision, precision_recall(real, fake, 5).precision);
}

TEST(NeighbourMetrics, AZeroKLeavesThatMetricOutAndBadKIsNamed) {
  const auto real = points_1d({0, 1, 2, 3, 10}), fake = points_1d({0.25f, 4, 20});
  const auto only_dc = neighbour_metrics(real, fake, 0, 2);
  EXPECT_EQ(only_dc.precision_recall.precision, 0.0);
  EXPECT_DOUBLE_EQ(only_dc.density_coverage.coverage, 0.8);
  const auto only_pr = neighbour_metrics(real, fake, 1, 0);
  EXPECT_DOUBLE_EQ(only_pr.precision_recall.precision, 2.0 / 3.0);
  EXPECT_EQ(only_pr.density_coverage.density, 0.0);
  expect_error<InputError>([&] { neighbour_metrics(real, fake, 0, 0); }, {"neither metric"});
  expect_error<InputError>([&] { neighbour_metrics(real, fake, -1, 2); }, {"k must be at least 1", "-1"});
  expect_error<InputError>([&] { neighbour_metrics(real, fake, 3, 5); }, {"real", "5 points", "k = 5"});
}

// ---------------------------------------------------------------------------------------
// Near-black (background) fraction

TEST(NearBlackFraction, CountsPixelsAtMostLevel8InEveryChannelAsAPngStoresThem) {
  // Levels are round((x + 1) * 127.5): x = -1 is 0; level 8 is black, level 9 is not.
  const auto level = [](double l) { return l / 127.5 - 1.0; };
  // One grey image of 2 x 4 pixels: levels 0, 8, 8.4 (rounds to 8), 8.6 (rounds to 9), 9,
  // 255, NaN, and -3 (below the range: black).
  const auto grey = torch::tensor({level(0), level(8), level(8.4), level(8.6), level(9), level(255), static_cast<double>(NAN), -3.0})
                        .reshape({1, 1, 2, 4});
  EXPECT_DOUBLE_EQ(near_black_fraction(grey), 4.0 / 8.0);
  EXPECT_DOUBLE_EQ(near_black_fraction(grey.to(torch::kFloat32)), 4.0 / 8.0);
  // RGB: a pixel is black only if every channel is. Pixel 0: all 0; pixel 1: red at 9.
  auto rgb = torch::full({1, 3, 1, 2}, -1.0);
  rgb[0][0][0][1] = level(9);
  EXPECT_DOUBLE_EQ(near_black_fraction(rgb), 0.5);
  // Two images, one all black and one all white: half the pixels.
  EXPECT_DOUBLE_EQ(near_black_fraction(torch::cat({torch::full({1, 1, 3, 3}, -1.0), torch::ones({1, 1, 3, 3})})), 0.5);
}

TEST(NearBlackFraction, GaussianNoiseOnABlackBackgroundGivesTheNormalProbability) {
  // x = -1 + sigma z: the level is round(127.5 sigma z) <= 8 exactly when 127.5 sigma z < 8.5,
  // so the expected fraction is Phi(8.5 / (127.5 sigma)) = Phi(4/3) = 0.908789 at sigma = 0.05.
  // 200,000 pixels: the binomial standard deviation is 0.00064; 0.004 is six of them.
  torch::manual_seed(3);
  const auto noisy = -1.0 + 0.05 * torch::randn({50, 1, 40, 100}, torch::kFloat64);
  const double expected = 0.5 * std::erfc(-(8.5 / (127.5 * 0.05)) / std::sqrt(2.0));
  EXPECT_NEAR(expected, 0.908789, 1e-6);
  EXPECT_NEAR(near_black_fraction(noisy), expected, 0.004);
}

TEST(NearBlackFraction, RejectsAnythingButImages) {
  expect_error<InputError>([] { near_black_fraction(torch::zeros({4, 4})); }, {"near-black", "[N, C, H, W]", "[4, 4]"});
  expect_error<InputError>([] { near_black_fraction(torch::zeros({0, 1, 4, 4})); }, {"near-black", "[0, 1, 4, 4]"});
  expect_error<InputError>([] { near_black_fraction(torch::Tensor()); }, {"near-black", "no tensor"});
}

// ---------------------------------------------------------------------------------------
// Class accuracy

TEST(ClassAccuracy, MatchesAHandExample) {
  // Argmax of the rows: 0, 1, 2, 0; requested 0, 2, 2, 1: rows 0 and 2 are right.
  const auto logits = torch::tensor({2.f, 1.f, 0.f, 0.f, 3.f, 1.f, 1.f, 0.f, 5.f, 4.f, 0.f, 0.f}).reshape({4, 3});
  const auto labels = torch::tensor({0, 2, 2, 1}, torch::kLong);
  EXPECT_DOUBLE_EQ(class_accuracy(logits, labels), 0.5);
  EXPECT_DOUBLE_EQ(class_accuracy(torch::softmax(logits, 1), labels.to(torch::kInt)), 0.5);
  // Per class: class 0 has one right of one, class 1 none of one, class 2 one of two, and no
  // row requested class 3.
  const auto per_class = per_class_accuracy(logits, labels, 4);
  ASSERT_EQ(per_class.sizes(), torch::IntArrayRef({4}));
  EXPECT_EQ(per_class.scalar_type(), torch::kFloat64);
  EXPECT_EQ(per_class[0].item<double>(), 1.0);
  EXPECT_EQ(per_class[1].item<double>(), 0.0);
  EXPECT_EQ(per_class[2].item<double>(), 0.5);
  EXPECT_TRUE(std::isnan(per_class[3].item<double>()));
}

TEST(ClassAccuracy, RejectsBadInput) {
  const auto logits = torch::zeros({3, 2});
  expect_error<InputError>([&] { class_accuracy(logits, torch::tensor({0, 1, 2}, torch::kLong)); }, {"[0, 2)", "2"});
  expect_error<InputError>([&] { class_accuracy(logits, torch::tensor({0, 1}, torch::kLong)); }, {"[3]"});
  expect_error<InputError>([&] { class_accuracy(logits, torch::tensor({0.f, 1.f, 0.f})); }, {"integers"});
  auto with_nan = logits.clone();
  with_nan[1][1] = NAN;
  expect_error<InputError>([&] { class_accuracy(with_nan, torch::tensor({0, 1, 0}, torch::kLong)); }, {"NaN"});
  expect_error<InputError>([&] { per_class_accuracy(logits, torch::tensor({0, 1, 0}, torch::kLong), 0); },
                           {"num_classes"});
  expect_error<InputError>([&] { per_class_accuracy(logits, torch::tensor({0, 1, 0}, torch::kLong), 1); },
                           {"label 1", "num_classes = 1"});
}

// ---------------------------------------------------------------------------------------
// The statistics cache

class StatisticsCacheTest : public guidiff::testing::TempDirTest {
 protected:
};

TEST_F(StatisticsCacheTest, RoundTripsBitExactly) {
  torch::manual_seed(7);
  const auto features = torch::randn({50, 6});
  auto statistics = feature_statistics(features);
  statistics.features = features;
  const nlohmann::json description = {{"dataset", "cifar10-train"}, {"network", "inception-v3 pool3"}};
  save_feature_statistics(path("stats.safetensors"), statistics, description);

  nlohmann::json loaded_description;
  const auto loaded = load_feature_statistics(path("stats.safetensors"), &loaded_description);
  EXPECT_EQ(loaded.count, 50);
  EXPECT_TRUE(same_bytes(loaded.mean, statistics.mean));
  EXPECT_TRUE(same_bytes(loaded.covariance, statistics.covariance));
  ASSERT_TRUE(loaded.features.defined());
  EXPECT_TRUE(same_bytes(loaded.features, features));
  EXPECT_EQ(loaded_description, description);
  EXPECT_EQ(frechet_distance(loaded, statistics), frechet_distance(statistics, statistics));
  // Written atomically: no temporary is left beside the file.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);

  // Without features, none come back.
  statistics.features = torch::Tensor();
  save_feature_statistics(path("moments.safetensors"), statistics, nlohmann::json::object());
  EXPECT_FALSE(load_feature_statistics(path("moments.safetensors")).features.defined());
}

TEST_F(StatisticsCacheTest, ReportsBadFilesNamingThem) {
  const auto missing = path("missing.safetensors");
  expect_error<FileError>([&] { load_feature_statistics(missing); }, {missing});

  const auto garbage = path("garbage.safetensors");
  std::ofstream(garbage, std::ios::binary) << "this is not a safetensors file at all";
  expect_error<FileError>([&] { load_feature_statistics(garbage); }, {garbage});

  auto statistics = feature_statistics(torch::randn({10, 3}));
  const auto good = path("good.safetensors");
  save_feature_statistics(good, statistics, {{"dataset", "x"}});
  const std::string bytes = read_file_bytes(good);
  const auto truncated = path("truncated.safetensors");
  std::ofstream(truncated, std::ios::binary) << bytes.substr(0, bytes.size() - 20);
  expect_error<FileError>([&] { load_feature_statistics(truncated); }, {truncated});

  // A valid safetensors file that is not a statistics file.
  const auto plain = path("plain.safetensors");
  save_safetensors(plain, {{"mean", statistics.mean}, {"covariance", statistics.covariance}});
  expect_error<FileError>([&] { load_feature_statistics(plain); }, {plain, "guidiff_feature_statistics"});

  const std::map<std::string, std::string> metadata = {
      {"guidiff_feature_statistics", R"({"format": 1, "count": 10, "description": {}})"}};
  const auto wrong_shape = path("wrong_shape.safetensors");
  save_safetensors(wrong_shape, {{"mean", statistics.mean}, {"covariance", torch::eye(2, torch::kFloat64)}}, metadata);
  expect_error<FileError>([&] { load_feature_statistics(wrong_shape); }, {wrong_shape, "'covariance'", "[3, 3]"});

  const auto wrong_features = path("wrong_features.safetensors");
  save_safetensors(wrong_features,
                   {{"mean", statistics.mean}, {"covariance", statistics.covariance}, {"features", torch::zeros({4, 2})}},
                   metadata);
  expect_error<FileError>([&] { load_feature_statistics(wrong_features); }, {wrong_features, "'features'"});

  const auto wrong_dtype = path("wrong_dtype.safetensors");
  save_safetensors(wrong_dtype, {{"mean", statistics.mean.to(torch::kFloat32)}, {"covariance", statistics.covariance}},
                   metadata);
  expect_error<FileError>([&] { load_feature_statistics(wrong_dtype); }, {wrong_dtype, "'mean'", "Double"});

  const auto no_covariance = path("no_covariance.safetensors");
  save_safetensors(no_covariance, {{"mean", statistics.mean}}, metadata);
  expect_error<FileError>([&] { load_feature_statistics(no_covariance); }, {no_covariance, "'covariance' is missing"});

  const auto bad_count = path("bad_count.safetensors");
  save_safetensors(bad_count, {{"mean", statistics.mean}, {"covariance", statistics.covariance}},
                   {{"guidiff_feature_statistics", R"({"format": 1, "count": 1, "description": {}})"}});
  expect_error<FileError>([&] { load_feature_statistics(bad_count); }, {bad_count, "count"});

  auto with_nan = statistics.covariance.clone();
  with_nan[0][0] = NAN;
  const auto non_finite = path("non_finite.safetensors");
  save_safetensors(non_finite, {{"mean", statistics.mean}, {"covariance", with_nan}}, metadata);
  expect_error<FileError>([&] { load_feature_statistics(non_finite); }, {non_finite, "NaN"});
}

TEST_F(StatisticsCacheTest, RefusesToSaveMalformedStatistics) {
  auto statistics = feature_statistics(torch::randn({10, 3}));
  statistics.features = torch::zeros({10, 4});
  expect_error<InputError>([&] { save_feature_statistics(path("a.safetensors"), statistics, {}); }, {"features"});
  statistics.features = torch::Tensor();
  statistics.count = 1;
  expect_error<InputError>([&] { save_feature_statistics(path("a.safetensors"), statistics, {}); }, {"count"});
  EXPECT_FALSE(fs::exists(path("a.safetensors")));
}

}  // namespace
