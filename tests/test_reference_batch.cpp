// guided-diffusion's reference batches (.npz: arr_0 images, arr_1 labels, mu/sigma/mu_s/sigma_s
// statistics), the reference set made from one, and the streamed feature moments behind sFID.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/eval/evaluator.hpp"
#include "guidiff/eval/feature_statistics.hpp"
#include "guidiff/eval/reference_batch.hpp"
#include "guidiff/eval/sample_scores.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npz.hpp"
#include "support/test_files.hpp"

using namespace guidiff;
using guidiff::testing::expect_error;

namespace {

class ReferenceBatchTest : public guidiff::testing::TempDirTest {
 protected:
  static torch::Tensor pixels(int64_t n, int64_t side, int64_t channels) {
    return (torch::arange(n * side * side * channels, torch::kLong) * 37 % 256).to(torch::kUInt8).reshape({n, side, side, channels});
  }
  // A network whose features are closed-form: per-image mean, mean of squares and row means.
  static std::unique_ptr<FeatureNetwork> mean_pixel_network() {
    return load_torchscript_feature_network(std::string(GUIDIFF_TEST_DATA_DIR) + "/features_mean_pixels.pt", torch::kCPU);
  }
};

}  // namespace

TEST_F(ReferenceBatchTest, WritingAndReadingKeepsImagesLabelsAndStatistics) {
  ReferenceBatch batch;
  batch.images = pixels(3, 4, 1);
  batch.labels = torch::tensor({2, 0, 1}, torch::kInt32);
  batch.pool_statistics.mean = torch::tensor({1.5, -2.0}, torch::kFloat64);
  batch.pool_statistics.covariance = torch::tensor({2.0, 0.5, 0.5, 1.0}, torch::kFloat64).reshape({2, 2});
  write_reference_batch(path("ref.npz"), batch);
  const NamedArrays arrays = read_npz(path("ref.npz"));
  std::vector<std::string> names;
  for (const auto& [name, array] : arrays) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"arr_0", "arr_1", "mu", "sigma"}));
  const ReferenceBatch read = read_reference_batch(path("ref.npz"));
  // Grey images become RGB (guided-diffusion's evaluator takes 3 channels only).
  EXPECT_TRUE(torch::equal(read.images, batch.images.expand({-1, -1, -1, 3})));
  EXPECT_TRUE(torch::equal(read.labels, torch::tensor({2, 0, 1}, torch::kLong)));
  EXPECT_TRUE(torch::equal(read.pool_statistics.mean, batch.pool_statistics.mean));
  EXPECT_TRUE(torch::equal(read.pool_statistics.covariance, batch.pool_statistics.covariance));
  EXPECT_EQ(read.pool_statistics.count, 3);
  EXPECT_FALSE(read.spatial_statistics.mean.defined());
}

TEST_F(ReferenceBatchTest, ReadsNumpysSampleBatchAsImagesOnly) {
  const ReferenceBatch read = read_reference_batch(std::string(GUIDIFF_TEST_DATA_DIR) + "/npz_stored.npz");
  EXPECT_EQ(read.images.sizes(), (std::vector<int64_t>{2, 4, 4, 3}));
  EXPECT_TRUE(torch::equal(read.labels, torch::tensor({7, 0}, torch::kLong)));
  EXPECT_FALSE(read.pool_statistics.mean.defined());
}

TEST_F(ReferenceBatchTest, MalformedBatchesAreOneLineErrorsNamingTheArray) {
  const auto write = [&](const std::string& name, const NamedArrays& arrays) {
    write_npz(path(name), arrays);
    return path(name);
  };
  const torch::Tensor mu = torch::zeros({3}, torch::kFloat64), sigma = torch::eye(3, torch::kFloat64);
  const std::string lone_mu = write("lone_mu.npz", {{"arr_0", pixels(2, 4, 3)}, {"mu", mu}});
  expect_error<FileError>([&] { read_reference_batch(lone_mu); }, {"lone_mu.npz", "'mu' without 'sigma'"});
  const std::string bad_sigma = write("bad_sigma.npz", {{"mu_s", mu}, {"sigma_s", torch::eye(2, torch::kFloat64)}, {"mu", mu}, {"sigma", sigma}});
  expect_error<FileError>([&] { read_reference_batch(bad_sigma); }, {"'mu_s' [3]", "'sigma_s' [2, 2]", "[D] and [D, D]"});
  const std::string nan_mu = write("nan_mu.npz", {{"mu", torch::full({3}, NAN, torch::kFloat64)}, {"sigma", sigma}});
  expect_error<FileError>([&] { read_reference_batch(nan_mu); }, {"'mu' and 'sigma' must be finite"});
  const std::string empty = write("nothing.npz", {{"arr_2", mu}});
  expect_error<FileError>([&] { read_reference_batch(empty); }, {"nothing.npz", "neither images (arr_0) nor statistics"});
  const std::string float_images = write("float_images.npz", {{"arr_0", torch::zeros({2, 4, 4, 3})}});
  expect_error<FileError>([&] { read_reference_batch(float_images); }, {"float_images.npz", "arr_0"});
  ReferenceBatch bad;
  bad.images = torch::zeros({2, 4, 4, 2}, torch::kUInt8);
  expect_error<InputError>([&] { write_reference_batch(path("out.npz"), bad); }, {"uint8 [N, H, W, 1 or 3]", "[2, 4, 4, 2]"});
  EXPECT_TRUE(is_reference_batch("VIRTUAL_imagenet64_labeled.npz"));
  EXPECT_FALSE(is_reference_batch("fashion-mnist"));
}

TEST_F(ReferenceBatchTest, ReferenceSetTakesTheFilesStatisticsAndTheImagesFeatures) {
  const auto network = mean_pixel_network();
  const torch::Tensor images = pixels(6, 4, 3);
  const torch::Tensor features = run_feature_network(*network, uint8_nhwc_to_images(images)).features;
  const FeatureStatistics computed = feature_statistics(features);

  ReferenceBatch images_only;
  images_only.images = images;
  write_reference_batch(path("images.npz"), images_only);
  const ReferenceSet from_images = reference_batch_set(*network, path("images.npz"), "", path("cache"));
  EXPECT_TRUE(torch::allclose(from_images.statistics.mean, computed.mean, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(from_images.statistics.covariance, computed.covariance, 1e-12, 1e-12));
  EXPECT_EQ(from_images.statistics.features.size(0), 6);
  EXPECT_EQ(from_images.statistics.count, 6);

  // With mu/sigma in the file, they replace the computed moments; the features stay for
  // precision/recall. Written again: a changed file is another cache entry.
  ReferenceBatch with_statistics = images_only;
  with_statistics.pool_statistics.mean = torch::full({features.size(1)}, 3.0, torch::kFloat64);
  with_statistics.pool_statistics.covariance = torch::eye(features.size(1), torch::kFloat64) * 2;
  write_reference_batch(path("stats.npz"), with_statistics);
  const ReferenceSet from_file = reference_batch_set(*network, path("stats.npz"), "", path("cache"));
  EXPECT_TRUE(torch::equal(from_file.statistics.mean, with_statistics.pool_statistics.mean));
  EXPECT_TRUE(torch::equal(from_file.statistics.covariance, with_statistics.pool_statistics.covariance));
  ASSERT_TRUE(from_file.statistics.features.defined());
  EXPECT_TRUE(torch::allclose(std::get<0>(from_file.statistics.features.sort(0)), std::get<0>(features.sort(0))));

  // Statistics only: FID from them, neighbour metrics NaN.
  ReferenceBatch statistics_only;
  statistics_only.pool_statistics = with_statistics.pool_statistics;
  write_reference_batch(path("only.npz"), statistics_only);
  const ReferenceSet only = reference_batch_set(*network, path("only.npz"), "", path("cache"));
  const SampleScores scores = score_features(features, {}, {}, only);
  EXPECT_NEAR(scores.fid, frechet_distance(computed, only.statistics), 1e-9);
  EXPECT_TRUE(std::isnan(scores.precision));
  EXPECT_TRUE(std::isnan(scores.recall));
}

TEST(FeatureMoments, BatchesMergeToTheTwoPassStatistics) {
  const torch::Tensor rows = torch::randn({37, 5}, torch::kFloat64) * 3 + 100;  // large mean: cancellation test
  FeatureMoments streamed;
  int64_t begin = 0;
  for (const int64_t end : {1, 2, 10, 10, 30, 37}) {  // uneven batches, one of them empty
    streamed.add(rows.slice(0, begin, end));
    begin = end;
  }
  const torch::Tensor centred = rows - rows.mean(0);
  const torch::Tensor two_pass = centred.t().mm(centred) / 36.0;
  const FeatureStatistics statistics = streamed.statistics();
  EXPECT_EQ(statistics.count, 37);
  // Relative to the covariance's scale (9): float64 rounding of a few dozen terms, ~1e-14.
  EXPECT_TRUE(torch::allclose(statistics.mean, rows.mean(0), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(statistics.covariance, two_pass, 0, 1e-11));
  const FeatureMoments copy = FeatureMoments::from_row(streamed.to_row());
  EXPECT_TRUE(torch::equal(copy.statistics().covariance, statistics.covariance));
  FeatureMoments other;
  expect_error<InputError>([&] { streamed.add(torch::zeros({2, 4})); }, {"[B, 5]", "[2, 4]"});
  expect_error<InputError>([&] { other.statistics(); }, {"at least 2"});
  expect_error<InputError>([&] { other.add(torch::full({2, 3}, NAN)); }, {"finite"});
}
