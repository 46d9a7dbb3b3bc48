// The FID Inception-v3 network against PyTorch: with the deterministic formula weights of
// tests/support/inception_formula_weights.hpp, the features, logits, FID, sFID and IS of small
// image sets must equal what tests/fixtures/make_inception_fixture.py recorded from torchvision's
// Inception-v3 with the FID block changes; plus the loader's names, shapes and errors.
//
// Time: forward passes over 27 images at 299 x 299 in all, about 20 s on 2 cores when idle.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/eval/feature_statistics.hpp"
#include "guidiff/eval/fid_inception.hpp"
#include "guidiff/eval/fid_inception_network.hpp"
#include "guidiff/eval/sample_scores.hpp"
#include "guidiff/eval/metrics.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npz.hpp"
#include "support/inception_formula_weights.hpp"
#include "support/test_files.hpp"

using namespace guidiff;
using guidiff::testing::expect_error;

namespace {

// Tolerance of every comparison with PyTorch, relative to the reference's largest magnitude.
// Both sides compute in float32 (unit roundoff u = 2^-24 = 6e-8) with different convolution
// kernels and summation orders. A layer's dot products of up to n = 2048 terms (1x1 on 2048
// channels; 3x3 on 448 has 4032) carry a relative error of about sqrt(n) u = 3e-6 when the
// roundings are independent (the usual random-walk bound; the worst case n u is not what
// blocked kernels give). The longest path through the network has 47 such layers between the
// image and pool3 (5 stem convolutions, 4 + 3 + 3 in the A blocks' deepest branches, 3 in 6a,
// 5 per C block, 4 in 7a, 3 per E block, and fc); errors of independent layers add in
// quadrature, and batch norm and the He scaling keep each layer's gain near 1 (the fixture
// script checked activation RMS 0.24..0.57 throughout), so the output's relative error is
// about sqrt(47) * 3e-6 = 2e-5. ReLUs and max pools only drop or pass errors. 1e-4 leaves a
// factor of 5 (and is the target): a wrong layer, name, pool kind or padding changes
// outputs by 1e-2 or more.
constexpr double kRelativeTolerance = 1e-4;

std::string data_path(const std::string& name) { return std::string(GUIDIFF_TEST_DATA_DIR) + "/" + name; }

const NamedArrays& fixture() {
  static const NamedArrays arrays = read_npz(data_path("fid_inception_formula.npz"));
  return arrays;
}

torch::Tensor fixture_array(const std::string& name) {
  return npz_array(fixture(), name, "fid_inception_formula.npz");
}

double scaled_difference(const torch::Tensor& actual, const torch::Tensor& expected) {
  const torch::Tensor a = actual.to(torch::kFloat64), e = expected.to(torch::kFloat64);
  EXPECT_EQ(a.sizes(), e.sizes());
  return (a - e).abs().max().item<double>() / e.abs().max().item<double>();
}

FidInception& formula_network() {
  static FidInception network = [] {
    FidInception built;
    guidiff::testing::load_formula_weights(built);
    return built;
  }();
  return network;
}

FidInceptionOutputs run(const torch::Tensor& images_uint8_nhwc) {
  torch::NoGradGuard no_grad;
  return formula_network()->forward(fid_inception_input(uint8_nhwc_to_images(images_uint8_nhwc)));
}

// Outputs per image set, computed once for the whole file.
const std::map<std::string, FidInceptionOutputs>& outputs() {
  static const std::map<std::string, FidInceptionOutputs> all = [] {
    std::map<std::string, FidInceptionOutputs> result;
    for (const char* set : {"a", "b", "grey"}) result[set] = run(fixture_array(std::string("images_") + set));
    return result;
  }();
  return all;
}

}  // namespace

TEST(FidInception, LoadsExactlyTheNamesAndShapesOfPyTorchsStateDict) {
  const torch::Tensor name_bytes = fixture_array("parameter_names");
  const std::string joined(reinterpret_cast<const char*>(name_bytes.data_ptr<uint8_t>()),
                           static_cast<size_t>(name_bytes.numel()));
  const torch::Tensor shapes = fixture_array("parameter_shapes");
  std::map<std::string, std::vector<int64_t>> expected;
  std::istringstream lines(joined);
  std::string name;
  for (int64_t row = 0; std::getline(lines, name, '\n'); ++row) {
    std::vector<int64_t> shape;
    for (int64_t k = 0; k < 4 && shapes[row][k].item<int64_t>() >= 0; ++k) shape.push_back(shapes[row][k].item<int64_t>());
    expected[name] = shape;
  }
  ASSERT_EQ(static_cast<int64_t>(expected.size()), shapes.size(0));
  FidInception network;
  std::map<std::string, std::vector<int64_t>> actual;
  for (const auto& [tensor_name, shape] : fid_inception_tensor_shapes(network)) actual[tensor_name] = shape;
  EXPECT_EQ(actual, expected);
  EXPECT_EQ(actual.size(), 472u);  // 94 convolutions, 4 tensors of each of their 94 batch norms, fc weight and bias
}

TEST(FidInception, FeaturesAndLogitsMatchPyTorchWithFormulaWeights) {
  for (const char* set : {"a", "b", "grey"}) {
    SCOPED_TRACE(set);
    const FidInceptionOutputs& out = outputs().at(set);
    EXPECT_LT(scaled_difference(out.pool3, fixture_array(std::string("pool3_") + set)), kRelativeTolerance);
    EXPECT_LT(scaled_difference(out.spatial, fixture_array(std::string("spatial_") + set)), kRelativeTolerance);
    EXPECT_LT(scaled_difference(out.logits, fixture_array(std::string("logits_") + set)), kRelativeTolerance);
    EXPECT_EQ(out.pool3.size(1), kFidInceptionPoolDim);
    EXPECT_EQ(out.spatial.size(1), kFidInceptionSpatialDim);
    EXPECT_EQ(out.logits.size(1), kFidInceptionClasses);
  }
}

TEST(FidInception, FidSfidAndInceptionScoreMatchPyTorch) {
  const auto& a = outputs().at("a");
  const auto& b = outputs().at("b");
  // Frechet distances: the features carry <= 2e-5 relative error (above); FID is a sum of
  // squared feature differences and traces, so about twice that, plus the eigen route's
  // rounding on 2048 near-zero eigenvalues of rank-5 covariances (sqrt(1e-16) per eigenvalue
  // relative to the largest, summed: ~2e-5 of tr S). Within 1e-4 again.
  const double fid = frechet_distance(feature_statistics(a.pool3), feature_statistics(b.pool3));
  const double sfid = frechet_distance(feature_statistics(a.spatial), feature_statistics(b.spatial));
  EXPECT_NEAR(fid, fixture_array("fid").item<double>(), kRelativeTolerance * fixture_array("fid").item<double>());
  EXPECT_NEAR(sfid, fixture_array("sfid").item<double>(), kRelativeTolerance * fixture_array("sfid").item<double>());
  torch::NoGradGuard no_grad;
  const double score = inception_score(formula_network()->score_probabilities(a.pool3), 1);
  EXPECT_NEAR(score, fixture_array("inception_score_a").item<double>(),
              kRelativeTolerance * fixture_array("inception_score_a").item<double>());
  // Random features vary little between images, so IS is near 1; still, adding fc's bias (which
  // the IS convention leaves out) would move it by 2.1e-3 relative, 21 times the tolerance.
  EXPECT_GT(score, 1.02);
}

TEST(FidInception, ResizeIsBilinearWithoutCornerAlignmentAndGreyBecomesRgb) {
  const torch::Tensor grey = torch::tensor({-1.0f, 1.0f}).reshape({1, 1, 1, 2});
  const torch::Tensor x = fid_inception_input(grey);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{1, 3, 299, 299}));
  EXPECT_TRUE(torch::equal(x[0][0], x[0][2]));
  // Output column c samples the input at (c + 0.5) * 2 / 299 - 0.5, clamped to [0, 1]: the
  // first 75 columns (source <= 0) are the left pixel, and column 149 sits at 0.4983.
  EXPECT_FLOAT_EQ(x[0][0][10][74].item<float>(), -1.0f);
  EXPECT_NEAR(x[0][0][10][149].item<float>(), -1.0 + 2.0 * (149.5 * 2.0 / 299.0 - 0.5), 1e-6);
  const torch::Tensor same = torch::rand({1, 3, 299, 299}) * 2 - 1;
  EXPECT_TRUE(torch::allclose(fid_inception_input(same), same, 0, 1e-6));
  expect_error<InputError>([] { fid_inception_input(torch::zeros({2, 2, 8, 8})); }, {"C = 1 or 3", "[2, 2, 8, 8]"});
}

// pytorch-fid's pt_inception-2015-12-05-6726825d.pth is in torch.save's legacy format, a plain
// dict in sorted key order with num_batches_tracked; this file has its layout (every tensor a
// broadcast of one value, to stay small) and loads through the same path.
TEST(FidInception, LoadsTheLayoutOfPytorchFidsLegacyWeightFile) {
  const std::string path = data_path("fid_inception_legacy_layout.pt");
  ASSERT_EQ(read_file_bytes(path).compare(0, 4, "\x80\x02\x8a\x0a"), 0);
  FidInception network = load_fid_inception(path);
  int checked = 0;
  const auto expect_broadcast = [&checked](const std::string& name, const torch::Tensor& tensor) {
    const float value = guidiff::testing::formula_uniform(name, 1).to(torch::kFloat32).item<float>();
    EXPECT_TRUE(torch::equal(tensor, torch::full_like(tensor, value))) << name;
    ++checked;
  };
  for (const auto& item : network->named_parameters()) expect_broadcast(item.key(), item.value());
  for (const auto& item : network->named_buffers()) {
    if (item.key().find("num_batches_tracked") == std::string::npos) expect_broadcast(item.key(), item.value());
  }
  EXPECT_EQ(checked, static_cast<int>(fid_inception_tensor_shapes(network).size()));
}

TEST(FidInception, LoaderErrorsNameTheFileAndTheTensor) {
  expect_error<FileError>([] { load_fid_inception(data_path("no_such_inception.pth")); }, {"no_such_inception.pth"});
  expect_error<FileError>([] { load_fid_inception(data_path("fid_inception_partial.pt")); },
                          {"fid_inception_partial.pt", "'Conv2d_1a_3x3.bn.weight'", "[31]", "[32]"});
  FidInception network;
  const auto shapes = fid_inception_tensor_shapes(network);
  const auto lookup_without = [&shapes](const std::string& left_out) {
    return [&shapes, left_out](const std::string& name) {
      for (const auto& [known, shape] : shapes) {
        if (known == name && name != left_out) return guidiff::testing::formula_value(name, shape);
      }
      return torch::Tensor();
    };
  };
  expect_error<FileError>([&] { load_fid_inception_tensors(network, lookup_without("Mixed_7c.branch_pool.bn.running_var"), "w.pth"); },
                          {"w.pth", "'Mixed_7c.branch_pool.bn.running_var' is missing", "pt_inception-2015-12-05"});
  expect_error<FileError>([&] {
    load_fid_inception_tensors(network, [](const std::string&) { return torch::full({32, 3, 3, 3}, NAN); }, "w.pth");
  }, {"'Conv2d_1a_3x3.conv.weight'", "NaN"});
}

TEST(FidInception, ReadsATorchSaveStateDictOfTheFullNetwork) {
  // Every formula tensor, plus a num_batches_tracked counter and an extra key (which the loader
  // ignores), in a 95 MB file of torch.save's zip format.
  const std::string file = std::string(::testing::TempDir()) + "/guidiff_fid_inception_formula.pt";
  c10::Dict<std::string, torch::Tensor> state;
  for (const auto& [name, shape] : fid_inception_tensor_shapes(formula_network())) {
    state.insert(name, guidiff::testing::formula_value(name, shape));
  }
  state.insert("Conv2d_1a_3x3.bn.num_batches_tracked", torch::tensor(int64_t{0}));
  state.insert("AuxLogits.fc.weight", torch::zeros({2, 2}));
  guidiff::testing::write_torch_save_state_dict(file, state);
  FidInception loaded = load_fid_inception(file);
  std::remove(file.c_str());
  const auto expected = formula_network()->named_parameters();
  for (const auto& item : loaded->named_parameters()) {
    EXPECT_TRUE(torch::equal(item.value(), expected[item.key()])) << item.key();
  }
  const auto expected_buffers = formula_network()->named_buffers();
  for (const auto& item : loaded->named_buffers()) {
    if (item.key().find("num_batches_tracked") == std::string::npos) {
      EXPECT_TRUE(torch::equal(item.value(), expected_buffers[item.key()])) << item.key();
    }
  }
}

TEST(FidInceptionNetwork, GivesPool3FeaturesSpatialMomentsAndScoreProbabilitiesPerBatch) {
  const std::unique_ptr<FeatureNetwork> network =
      fid_inception_feature_network(formula_network(), "formula weights", torch::kCPU);
  EXPECT_FALSE(network->probabilities_are_data_classes());
  EXPECT_TRUE(network->image_shape().empty());
  // Batches of 4 over 6 images: features in order, spatial statistics merged across batches.
  const FeatureOutput output = run_feature_network(*network, uint8_nhwc_to_images(fixture_array("images_a")), 4);
  EXPECT_LT(scaled_difference(output.features, fixture_array("pool3_a")), kRelativeTolerance);
  EXPECT_FALSE(output.spatial_features.defined());
  ASSERT_EQ(output.spatial_moments.count(), 6);
  const FeatureStatistics expected = feature_statistics(fixture_array("spatial_a"));
  const FeatureStatistics merged = output.spatial_moments.statistics();
  EXPECT_LT(scaled_difference(merged.mean, expected.mean), kRelativeTolerance);
  EXPECT_LT(scaled_difference(merged.covariance, expected.covariance), 2 * kRelativeTolerance);  // products of two
  EXPECT_TRUE(torch::allclose(output.probabilities.sum(1), torch::ones({6}), 0, 1e-5));
}

TEST(FidInceptionNetwork, SplitsABatchIntoPassesOfAtMostItsPassSize) {
  // Batches of 6 asked for, run as passes of 4 and 2 (the evaluator's batches of 500 run 25 at a
  // time): the same features, spatial statistics and probabilities as PyTorch's one pass.
  const std::unique_ptr<FeatureNetwork> network =
      fid_inception_feature_network(formula_network(), "formula weights", torch::kCPU, 4);
  EXPECT_EQ(network->largest_batch(), 4);
  const FeatureOutput output = run_feature_network(*network, uint8_nhwc_to_images(fixture_array("images_a")), 6);
  EXPECT_LT(scaled_difference(output.features, fixture_array("pool3_a")), kRelativeTolerance);
  ASSERT_EQ(output.spatial_moments.count(), 6);
  EXPECT_LT(scaled_difference(output.spatial_moments.statistics().mean, feature_statistics(fixture_array("spatial_a")).mean),
            kRelativeTolerance);
  const FeatureOutput whole = run_feature_network(
      *fid_inception_feature_network(formula_network(), "formula weights", torch::kCPU, 6),
      uint8_nhwc_to_images(fixture_array("images_a")), 6);
  EXPECT_LT(scaled_difference(output.probabilities, whole.probabilities), kRelativeTolerance);
  EXPECT_THROW(fid_inception_feature_network(formula_network(), "formula weights", torch::kCPU, 0), InputError);
}

TEST(FidInceptionNetwork, ScoringGivesPyTorchsFidSfidAndIs) {
  const std::unique_ptr<FeatureNetwork> network =
      fid_inception_feature_network(formula_network(), "formula weights", torch::kCPU);
  const FeatureOutput reference_output = run_feature_network(*network, uint8_nhwc_to_images(fixture_array("images_b")));
  ReferenceSet reference;
  reference.statistics = feature_statistics(reference_output.features);
  reference.statistics.features = reference_output.features;
  reference.spatial_statistics = reference_output.spatial_moments.statistics();
  ScoreOptions options;
  options.inception_splits = 1;
  // Requested labels with Inception's probabilities: IS yes, class accuracy no (ImageNet's
  // classes are not the data's).
  const SampleScores scores = score_images(*network, nullptr, uint8_nhwc_to_images(fixture_array("images_a")),
                                           torch::zeros({6}, torch::kLong), reference, options);
  const double fid = fixture_array("fid").item<double>(), sfid = fixture_array("sfid").item<double>();
  const double is = fixture_array("inception_score_a").item<double>();
  EXPECT_NEAR(scores.fid, fid, kRelativeTolerance * fid);
  EXPECT_NEAR(scores.sfid, sfid, kRelativeTolerance * sfid);
  EXPECT_NEAR(scores.inception_score, is, kRelativeTolerance * is);
  EXPECT_TRUE(std::isnan(scores.class_accuracy));
  EXPECT_EQ(scores.neighbour_count, 6);
}

TEST(FidInceptionNetwork, WeightsComeFromTheFlagTheVariableOrTheCache) {
  const std::string dir = std::string(::testing::TempDir()) + "/guidiff_inception_cache";
  std::filesystem::create_directories(dir);
  const std::string cached = dir + "/" + kFidInceptionWeightsName;
  std::remove(cached.c_str());
  ::unsetenv(kFidInceptionWeightsVariable);
  EXPECT_EQ(locate_fid_inception_weights("", dir), "");
  EXPECT_NE(missing_fid_inception_weights_message(dir).find(std::string("curl -L --create-dirs -o '") + cached + "' " +
                                                            kFidInceptionWeightsUrl),
            std::string::npos);
  { std::ofstream(cached) << "x"; }
  EXPECT_EQ(locate_fid_inception_weights("", dir), cached);
  const std::string elsewhere = data_path("fid_inception_partial.pt");
  ::setenv(kFidInceptionWeightsVariable, elsewhere.c_str(), 1);
  EXPECT_EQ(locate_fid_inception_weights("", dir), elsewhere);
  EXPECT_EQ(locate_fid_inception_weights(cached, dir), cached);
  expect_error<FileError>([&] { locate_fid_inception_weights(dir + "/absent.pth", dir); },
                          {"--inception-weights", "absent.pth", "does not exist"});
  ::setenv(kFidInceptionWeightsVariable, (dir + "/gone.pth").c_str(), 1);
  expect_error<FileError>([&] { locate_fid_inception_weights("", dir); }, {"$GUIDIFF_INCEPTION_WEIGHTS", "gone.pth"});
  ::unsetenv(kFidInceptionWeightsVariable);
  std::filesystem::remove_all(dir);
}
