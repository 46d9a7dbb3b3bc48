// The evaluator network (cnn_classifier), TorchScript feature extractors, scoring a set of
// images against reference statistics and the statistics cache, line plots and flat image
// folders.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/idx.hpp"
#include "guidiff/data/image_folder.hpp"
#include "guidiff/eval/evaluator.hpp"
#include "guidiff/eval/feature_statistics.hpp"
#include "guidiff/eval/metrics.hpp"
#include "guidiff/eval/sample_scores.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/network_adapters.hpp"
#include "guidiff/models/unet_blocks.hpp"
#include "support/fixture_models.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using guidiff::testing::fixture_path;

namespace {

nlohmann::json tiny_cnn_config() {
  return {{"kind", "cnn_classifier"}, {"image_size", 8},  {"in_channels", 1}, {"channels", {8, 16}},
          {"norm_groups", 4},         {"num_classes", 3}, {"dropout", 0.2}};
}

class EvaluationTest : public guidiff::testing::TempDirTest {
 protected:
  // A saved random cnn_classifier for 8x8 grey images, 3 classes.
  std::string saved_evaluator() {
    torch::manual_seed(3);
    Model model = build_model(tiny_cnn_config());
    const std::string prefix = path("evaluator");
    save_model(model, prefix);
    return prefix;
  }
  // Images quantised to 8 bits, so a PNG round trip gives them back exactly.
  static torch::Tensor images(int64_t n, int64_t side, uint64_t seed) {
    torch::Generator generator = at::detail::createCPUGenerator(seed);
    const torch::Tensor x = torch::rand({n, 1, side, side}, generator) * 2 - 1;
    return uint8_nhwc_to_images(images_to_uint8_nhwc(x));
  }
  // A class-per-folder tree of PNGs: n_per_class images of each of `classes` classes.
  std::string image_tree(const std::string& name, int64_t classes, int64_t n_per_class, int64_t side) {
    const fs::path root = dir_ / name;
    for (int64_t c = 0; c < classes; ++c) {
      const fs::path folder = root / ("class" + std::to_string(c));
      fs::create_directories(folder);
      write_png_images(folder.string(), images(n_per_class, side, 100 + c));
    }
    return root.string();
  }
};

// ---- the evaluator network ----------------------------------------------------------------

TEST_F(EvaluationTest, CnnClassifierGivesPooledFeaturesAndLogitsFromThem) {
  torch::manual_seed(0);
  Model model = build_model(tiny_cnn_config());
  ASSERT_EQ(model.kind, ModelKind::cnn_classifier);
  ASSERT_TRUE(model.classifier);
  model.module->eval();
  auto& network = std::dynamic_pointer_cast<CnnClassifier>(model.classifier)->network();
  const torch::Tensor x = images(5, 8, 1);
  const torch::Tensor features = network->features(x);
  EXPECT_EQ(features.sizes(), (std::vector<int64_t>{5, 16}));
  const torch::Tensor logits = model.classifier->logits(x, torch::zeros({5}, torch::kLong));
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{5, 3}));
  // The same float32 head on the same features: at most another GEMM order over 16 inputs,
  // a few u (2^-24) of sum |w f| ~ 1, ~1e-7.
  EXPECT_TRUE(torch::allclose(logits, network->logits_from_penultimate(features), 1e-5, 1e-6));
  // Features are spatial means: after the 2 stages, GroupNorm + SiLU outputs are > -0.279.
  // (min x sigmoid(x) = -0.278465; float32 rounding, ~1e-7, leaves 3.5e-5 to the bound.)
  EXPECT_GT(features.min().item<double>(), -0.2785);
  // The config is complete, so a rebuild from it is the same network shape.
  EXPECT_EQ(model.config.at("convs_per_stage"), 1);
  EXPECT_EQ(model.config.at("kind"), "cnn_classifier");
}

TEST_F(EvaluationTest, CnnClassifierConfigErrorsNameTheField) {
  nlohmann::json config = tiny_cnn_config();
  config["channels"] = {8, 10};
  expect_error<InputError>([&] { build_model(config); }, {"cnn_classifier config", "\"channels\"", "norm_groups"});
  config = tiny_cnn_config();
  config["channels"] = {4, 4, 4, 4, 4};
  expect_error<InputError>([&] { build_model(config); }, {"\"channels\"", "halved"});
  config = tiny_cnn_config();
  config["widths"] = 3;
  expect_error<InputError>([&] { build_model(config); }, {"widths"});
}

TEST_F(EvaluationTest, CnnClassifierFeaturesFromSeveralStagesAreTheWeightedScaledStageMeans) {
  nlohmann::json config = tiny_cnn_config();
  config["feature_stages"] = {0, 1};
  config["feature_weights"] = {2.0, 1.0};
  config["feature_scales"] = {0.5, 3.0};
  torch::manual_seed(0);
  Model model = build_model(config);
  model.module->eval();
  auto& network = std::dynamic_pointer_cast<CnnClassifier>(model.classifier)->network();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = images(4, 8, 5);
  const std::vector<torch::Tensor> means = network->stage_means(x);
  ASSERT_EQ(means.size(), 2u);
  EXPECT_EQ(means[0].sizes(), (std::vector<int64_t>{4, 8}));
  EXPECT_EQ(means[1].sizes(), (std::vector<int64_t>{4, 16}));
  // Stage 0 by hand: conv, GroupNorm, SiLU (one conv per stage), then the spatial mean.
  auto* body = network->named_children()["body"]->as<torch::nn::Sequential>();
  const torch::Tensor stage0 = body->ptr(2)->as<torch::nn::SiLU>()->forward(
      body->ptr(1)->as<Float32GroupNorm>()->forward(body->ptr(0)->as<torch::nn::Conv2d>()->forward(x)));
  EXPECT_TRUE(torch::allclose(means[0], stage0.mean({2, 3}), 1e-5, 1e-6));
  const torch::Tensor features = network->features(x);
  EXPECT_EQ(features.sizes(), (std::vector<int64_t>{4, 8 + 16}));
  EXPECT_TRUE(torch::allclose(features.slice(1, 0, 8), means[0] * (2.0 * 0.5), 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(features.slice(1, 8), means[1] * (1.0 * 3.0), 1e-6, 1e-7));
  // The logits come from the penultimate layer whatever the feature layout.
  EXPECT_TRUE(torch::allclose(network->forward(x), network->logits_from_penultimate(means[1]), 1e-5, 1e-6));
  // The layout survives a save and a load.
  save_model(model, path("multi"));
  const Model loaded = load_model(path("multi"));
  EXPECT_EQ(loaded.config.at("feature_stages"), config.at("feature_stages"));
  EXPECT_EQ(loaded.config.at("feature_scales"), config.at("feature_scales"));
}

TEST_F(EvaluationTest, CnnClassifierFeatureLayoutErrorsNameTheField) {
  const auto fails = [&](const char* field, const nlohmann::json& value, const std::string& fragment) {
    nlohmann::json config = tiny_cnn_config();
    config[field] = value;
    expect_error<InputError>([&] { build_model(config); }, {field, fragment});
  };
  fails("feature_stages", {2}, "[0, 2)");
  fails("feature_stages", {1, 0}, "increasing");
  fails("feature_weights", {1.0, 1.0}, "one entry per feature stage (1)");
  fails("feature_scales", {0.0}, "> 0");
  fails("feature_scales", {"a"}, "list of numbers");
}

TEST_F(EvaluationTest, CalibrationGivesEveryFeatureBlockUnitTotalVarianceTimesItsWeight) {
  nlohmann::json config = tiny_cnn_config();
  config["feature_stages"] = {0, 1};
  config["feature_weights"] = {3.0, 1.0};
  torch::manual_seed(4);
  save_model(build_model(config), path("evaluator"));
  const auto before = load_evaluator_network(path("evaluator"), torch::kCPU);
  const torch::Tensor x = images(50, 8, 11);
  const std::vector<double> scales = calibrate_evaluator_features(path("evaluator"), x, torch::kCPU);
  ASSERT_EQ(scales.size(), 2u);
  // The scales are in the file now; the weights file is untouched.
  const auto after = load_evaluator_network(path("evaluator"), torch::kCPU);
  EXPECT_NE(after->cache_key(), before->cache_key());
  const torch::Tensor features = run_feature_network(*after, x).features.to(torch::kFloat64);
  // Total variance of block k = weight_k^2 exactly in real arithmetic; float32 features
  // (relative rounding ~1e-7 per value, sums of 50 terms) leave far less than 1e-4 of it.
  EXPECT_NEAR(features.slice(1, 0, 8).var(0).sum().item<double>(), 9.0, 9.0 * 1e-4);
  EXPECT_NEAR(features.slice(1, 8).var(0).sum().item<double>(), 1.0, 1e-4);
  // Identical images have no spread to calibrate on.
  expect_error<NumericError>([&] { calibrate_evaluator_features(path("evaluator"), x[0].repeat({4, 1, 1, 1}), torch::kCPU); },
                             {"stage 0", "total variance"});
  expect_error<InputError>([&] { calibrate_evaluator_features(path("evaluator"), x.slice(0, 0, 1), torch::kCPU); },
                           {"at least 2"});
}

TEST_F(EvaluationTest, EvaluatorNetworkGivesFeaturesAndSoftmaxOfTheSavedWeights) {
  const std::string prefix = saved_evaluator();
  const auto evaluator = load_evaluator_network(prefix, torch::kCPU);
  EXPECT_EQ(evaluator->image_shape(), (std::vector<int64_t>{1, 8, 8}));
  const Model model = load_model(prefix);
  auto& network = std::dynamic_pointer_cast<CnnClassifier>(model.classifier)->network();
  const torch::Tensor x = images(7, 8, 2);
  // Batches of 3 (3 + 3 + 1) give what one pass gives.
  const FeatureOutput output = run_feature_network(*evaluator, x, /*batch_size=*/3);
  torch::NoGradGuard no_grad;
  // Other batch sizes may take other float32 conv kernels (another summation order). Each
  // conv (fan-in 9, then 72) is followed by GroupNorm, so each moves the normalised values by
  // ~u sqrt(fan-in) <= 5e-7 RMS; the 16-pixel mean then averages: ~2e-7 in features of
  // ~0.1-0.5, against 1e-6 + 1e-5 |f|.
  EXPECT_TRUE(torch::allclose(output.features, network->features(x), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(output.probabilities, torch::softmax(network->forward(x), 1), 1e-5, 1e-6));
  EXPECT_NE(evaluator->cache_key(), evaluator->description());
}

TEST_F(EvaluationTest, EvaluatorMustBeACnnClassifierAndTakeTheImagesShape) {
  Model mlp = build_model({{"kind", "mlp_classifier"}, {"num_classes", 2}});
  save_model(mlp, path("mlp"));
  expect_error<InputError>([&] { load_evaluator_network(path("mlp"), torch::kCPU); }, {"mlp_classifier", "cnn_classifier"});
  const auto evaluator = load_evaluator_network(saved_evaluator(), torch::kCPU);
  expect_error<InputError>([&] { run_feature_network(*evaluator, images(2, 6, 0)); }, {"[1, 6, 6]", "[1, 8, 8]"});
  torch::Tensor bad = images(2, 8, 0);
  bad[1][0][3][3] = NAN;
  expect_error<InputError>([&] { run_feature_network(*evaluator, bad); }, {"NaN"});
}

// ---- TorchScript feature networks ---------------------------------------------------------

TEST_F(EvaluationTest, TorchScriptFeaturesAreTheModulesOutput) {
  const auto network = load_torchscript_feature_network(fixture_path("features_mean_pixels.pt"), torch::kCPU);
  EXPECT_TRUE(network->image_shape().empty());
  const torch::Tensor x = images(5, 6, 4);
  const FeatureOutput output = run_feature_network(*network, x, 2);
  const torch::Tensor flat = x.flatten(1);
  const torch::Tensor expected =
      torch::cat({flat.mean(1, true), (flat * flat).mean(1, true), x.mean(std::vector<int64_t>{1, 3})}, 1);
  // The module runs these same float32 reductions (batches of 2 vs 5); reordered, a mean of
  // 36 values |x| <= 1 would move by ~u sqrt(36) ~ 4e-7 (36 u mean|x| ~ 1e-6 at worst).
  EXPECT_TRUE(torch::allclose(output.features, expected, 1e-5, 1e-6));
  EXPECT_FALSE(output.probabilities.defined());
}

TEST_F(EvaluationTest, TorchScriptTupleGivesFeaturesAndSoftmaxOfTheLogits) {
  const auto network = load_torchscript_feature_network(fixture_path("features_and_logits.pt"), torch::kCPU);
  const torch::Tensor x = images(4, 3, 5);
  const FeatureOutput output = run_feature_network(*network, x);
  const torch::Tensor flat = x.flatten(1);
  // A slice and a float32 softmax of x * 10: the same operations as the module, equal.
  EXPECT_TRUE(torch::allclose(output.features, flat.slice(1, 0, 4)));
  EXPECT_TRUE(torch::allclose(output.probabilities, torch::softmax(flat.slice(1, 0, 3) * 10, 1), 1e-5, 1e-6));
}

TEST_F(EvaluationTest, TorchScriptWithTheWrongOutputIsAOneLineModelError) {
  const auto network = load_torchscript_feature_network(fixture_path("features_wrong_rank.pt"), torch::kCPU);
  expect_error<ModelError>([&] { run_feature_network(*network, images(2, 4, 0)); },
                           {"features_wrong_rank.pt", "[2, 1, 4, 4]", "[2, D]"});
  expect_error<FileError>([&] { load_torchscript_feature_network(path("missing.pt"), torch::kCPU); }, {"missing.pt"});
}

// ---- scoring ------------------------------------------------------------------------------

ReferenceSet reference_of(FeatureNetwork& network, const torch::Tensor& x) {
  ReferenceSet reference;
  const FeatureOutput output = run_feature_network(network, x);
  reference.statistics = feature_statistics(output.features);
  reference.statistics.features = output.features;
  return reference;
}

TEST_F(EvaluationTest, ScoringTheReferenceImagesThemselvesIsPerfect) {
  const auto network = load_torchscript_feature_network(fixture_path("features_and_logits.pt"), torch::kCPU);
  const torch::Tensor x = images(40, 3, 6);
  const ReferenceSet reference = reference_of(*network, x);
  const torch::Tensor predicted = x.flatten(1).slice(1, 0, 3).argmax(1);
  const SampleScores scores = score_images(*network, nullptr, x, predicted, reference);
  // Identical features (slices of x), so FID(a, a) in float64 on a 4-D covariance of 40
  // points (eigenvalues ~0.15-0.6): a few ulps through eigh and sqrt, ~1e-15.
  EXPECT_NEAR(scores.fid, 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(scores.precision, 1.0);
  EXPECT_DOUBLE_EQ(scores.recall, 1.0);
  EXPECT_DOUBLE_EQ(scores.coverage, 1.0);
  EXPECT_DOUBLE_EQ(scores.class_accuracy, 1.0);
  EXPECT_EQ(scores.count, 40);
  EXPECT_EQ(scores.neighbour_count, 40);
  EXPECT_FALSE(scores.fid_warning.empty());  // 40 samples: FID is biased, and the warning says so
  EXPECT_DOUBLE_EQ(scores.near_black_fraction, near_black_fraction(x));
  EXPECT_TRUE(std::isnan(scores.reference_near_black_fraction));  // a reference made in memory says nothing
  EXPECT_TRUE(scores.to_json().at("reference_near_black_fraction").is_null());
  // The reference's fraction comes from its description, and both survive JSON.
  ReferenceSet described = reference;
  described.description["near_black_fraction"] = 0.25;
  const SampleScores with_reference = score_images(*network, nullptr, x, predicted, described);
  EXPECT_DOUBLE_EQ(with_reference.reference_near_black_fraction, 0.25);
  const SampleScores round_trip = SampleScores::from_json(with_reference.to_json());
  EXPECT_DOUBLE_EQ(round_trip.near_black_fraction, scores.near_black_fraction);
  EXPECT_DOUBLE_EQ(round_trip.reference_near_black_fraction, 0.25);
  // Scores saved before the fractions existed read back with NaN.
  nlohmann::json older = scores.to_json();
  older.erase("near_black_fraction");
  older.erase("reference_near_black_fraction");
  EXPECT_TRUE(std::isnan(SampleScores::from_json(older).near_black_fraction));
  // Asking for the next class every time: no image is what it was asked to be.
  const SampleScores wrong = score_images(*network, nullptr, x, (predicted + 1) % 3, reference);
  EXPECT_DOUBLE_EQ(wrong.class_accuracy, 0.0);
  EXPECT_EQ(wrong.per_class_accuracy.size(), 3u);
}

TEST_F(EvaluationTest, ScoresAreTheMetricFunctionsOnTheFeatures) {
  const auto network = load_torchscript_feature_network(fixture_path("features_mean_pixels.pt"), torch::kCPU);
  const auto evaluator = load_evaluator_network(saved_evaluator(), torch::kCPU);
  const torch::Tensor real = images(60, 8, 7);
  const torch::Tensor fake = (images(30, 8, 8) * 0.5).clamp(-1, 1);
  const ReferenceSet reference = reference_of(*network, real);
  const torch::Tensor labels = torch::arange(30, torch::kLong) % 3;
  // Features from the TorchScript network (no logits), IS and accuracy from the evaluator.
  const SampleScores scores = score_images(*network, evaluator.get(), fake, labels, reference);
  const torch::Tensor fake_features = run_feature_network(*network, fake).features;
  // FID, IS: the same network calls (same batch size) and the same float64 functions as
  // score_images, so equal; 1e-9 is slack.
  EXPECT_NEAR(scores.fid, frechet_distance(feature_statistics(fake_features), reference.statistics), 1e-9);
  const PrecisionRecall pr = precision_recall(reference.statistics.features.slice(0, 0, 30), fake_features, 3);
  EXPECT_DOUBLE_EQ(scores.precision, pr.precision);
  EXPECT_DOUBLE_EQ(scores.recall, pr.recall);
  EXPECT_EQ(scores.neighbour_count, 30);
  const torch::Tensor probabilities = run_feature_network(*evaluator, fake).probabilities;
  EXPECT_NEAR(scores.inception_score, inception_score(probabilities, 10), 1e-9);
  EXPECT_DOUBLE_EQ(scores.class_accuracy, class_accuracy(probabilities, labels));
  // Images the evaluator cannot take: no IS, no accuracy, but the feature metrics still.
  const torch::Tensor rgb = images(30, 8, 9).repeat({1, 3, 1, 1});  // mean-pixel features still have D = 2 + 8
  const SampleScores other_size = score_images(*network, evaluator.get(), rgb, labels, reference);
  EXPECT_TRUE(std::isnan(other_size.inception_score));
  EXPECT_TRUE(std::isnan(other_size.class_accuracy));
  EXPECT_TRUE(other_size.to_json().at("class_accuracy").is_null());
  expect_error<InputError>([&] { score_images(*network, nullptr, fake, labels.slice(0, 0, 5), reference); }, {"labels"});
}

TEST_F(EvaluationTest, ReferenceStatisticsAreCachedPerDataAndNetwork) {
  const std::string tree = image_tree("reference", 3, 10, 8);
  const auto evaluator = load_evaluator_network(saved_evaluator(), torch::kCPU);
  DatasetRequest data;
  data.spec = "folder:" + tree;
  data.channels = 1;
  std::vector<std::string> log;
  const auto record = [&](const std::string& line) { log.push_back(line); };
  const ReferenceSet first = reference_set(*evaluator, data, "", path("cache"), record);
  EXPECT_EQ(first.statistics.count, 30);
  ASSERT_EQ(first.statistics.features.size(0), 30);
  ASSERT_EQ(log.size(), 2u);  // computing ..., cached in ...
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(path("cache"))) files.push_back(entry.path());
  ASSERT_EQ(files.size(), 1u);
  // The same request loads the file: no new log line, the same numbers.
  const ReferenceSet second = reference_set(*evaluator, data, "", path("cache"), record);
  EXPECT_EQ(log.size(), 2u);
  EXPECT_TRUE(torch::equal(first.statistics.mean, second.statistics.mean));
  EXPECT_TRUE(torch::equal(first.statistics.features, second.statistics.features));
  // The data's near-black fraction is part of the cached description.
  const double data_black = near_black_fraction(load_image_folder(tree, {1}).images);
  EXPECT_DOUBLE_EQ(first.description.at("near_black_fraction").get<double>(), data_black);
  EXPECT_EQ(second.description, first.description);
  {
    // A cache written before the fraction existed is recomputed once, and says why.
    nlohmann::json older = first.description;
    older.erase("near_black_fraction");
    save_feature_statistics(files.front().string(), first.statistics, older);
    const ReferenceSet refreshed = reference_set(*evaluator, data, "", path("cache"), record);
    ASSERT_EQ(log.size(), 5u);  // predate ..., computing ..., cached in ...
    EXPECT_NE(log[2].find("predate the near-black fraction"), std::string::npos) << log[2];
    EXPECT_DOUBLE_EQ(refreshed.description.at("near_black_fraction").get<double>(), data_black);
    log.resize(2);
  }
  // The features are the data's, in a random order: the same multiset of rows.
  const torch::Tensor direct = run_feature_network(*evaluator, load_image_folder(tree, {1}).images).features;
  // The same per-image float32 network with the images in another order in the batch: sums
  // of 16 features (~3) agree to a few u, ~1e-6; 1e-4 relative, while a wrong image is ~0.1 off.
  EXPECT_TRUE(torch::allclose(std::get<0>(first.statistics.features.sum(1).sort()), std::get<0>(direct.sum(1).sort()), 1e-4));
  // Another network through the same file: recomputed and replaced.
  const auto other = load_torchscript_feature_network(fixture_path("features_mean_pixels.pt"), torch::kCPU);
  const ReferenceSet third = reference_set(*other, data, files.front().string(), "", record);
  EXPECT_EQ(third.statistics.mean.size(0), 2 + 8);
  ASSERT_GE(log.size(), 3u);
  EXPECT_NE(log[2].find("recomputing"), std::string::npos) << log[2];
  // A file the caller names that is not statistics at all (damaged, or a data set named by
  // mistake) is refused and left as it is: it may not be guidiff's to overwrite.
  write_file_atomically(files.front().string(), "not safetensors");
  expect_error<InputError>(
      [&] { reference_set(*other, data, files.front().string(), "", record); },
      {files.front().string(), "exists and is not usable statistics", "not overwriting it"});
  EXPECT_EQ(read_file_bytes(files.front().string()), "not safetensors");
  // The same damaged file as guidiff's own cache (in the cache directory) is recomputed.
  const ReferenceSet fourth = reference_set(*evaluator, data, "", path("cache"), record);
  // Recomputed from the same images: equal up to a float64 summation order (~1e-16).
  EXPECT_TRUE(torch::allclose(fourth.statistics.mean, first.statistics.mean));
  EXPECT_NE(log[log.size() - 3].find("unusable"), std::string::npos) << log[log.size() - 3];
}

TEST_F(EvaluationTest, DefaultCacheDirectoryFollowsTheEnvironment) {
  ::setenv("GUIDIFF_CACHE_DIR", "/tmp/somewhere", 1);
  EXPECT_EQ(default_cache_directory(), "/tmp/somewhere");
  ::unsetenv("GUIDIFF_CACHE_DIR");
  ::setenv("XDG_CACHE_HOME", "/tmp/xdg", 1);
  EXPECT_EQ(default_cache_directory(), "/tmp/xdg/guidiff");
  ::unsetenv("XDG_CACHE_HOME");
}

// ---- flat image folders and line plots ----------------------------------------------------

TEST_F(EvaluationTest, FlatImageFolderReadsEveryImageInNameOrder) {
  const torch::Tensor x = images(4, 5, 10);
  fs::create_directories(path("flat"));
  write_png_images(path("flat"), x);
  fs::create_directories(path("flat/ignored_subfolder"));
  const torch::Tensor read = load_image_files(path("flat"), {1});
  EXPECT_TRUE(torch::equal(read, x));
  fs::create_directories(path("empty"));
  expect_error<FileError>([&] { load_image_files(path("empty")); }, {"empty", "no .png"});
}

TEST_F(EvaluationTest, LinePlotIsAPngAndRejectsMalformedSeries) {
  LineSeries a{"classifier", {1.0, 2.0, 3.0}, {30.0, 20.0, 25.0}, {"s=0", "s=1", "s=3"}};
  LineSeries b{"cfg", {1.5, NAN}, {28.0, 1.0}, {}};
  write_line_plot(path("plot.png"), {a, b}, {"title", "IS", "FID"});
  const std::string bytes = read_file_bytes(path("plot.png"));
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
  LineSeries uneven{"bad", {1.0}, {1.0, 2.0}, {}};
  expect_error<InputError>([&] { write_line_plot(path("bad.png"), {uneven}); }, {"bad", "length"});
  LineSeries empty{"nan", {NAN}, {1.0}, {}};
  expect_error<InputError>([&] { write_line_plot(path("bad.png"), {empty}); }, {"no finite point"});
  EXPECT_FALSE(fs::exists(path("bad.png")));
}

// The committed evaluator must see what people see. Samples with grey speckle on black
// backgrounds once scored near the real-data floor, because the penultimate features alone
// (stage 2) barely move under pixel noise; with every stage's features, each on one scale
// (models/fashion-mnist/evaluator.json), real images plus small Gaussian noise or 1%
// salt-and-pepper pixels score far above the floor: the FID of as many clean real images.
// Here (docs/evaluation.md): Gaussian 6.7x and salt-and-pepper 5.2x the floor, against 2.8x
// and 3.2x with the penultimate features alone.
TEST(EvaluatorSensitivity, NoisyAndSpeckledRealImagesScoreWellAboveTheRealDataFloor) {
  if (!fs::exists(std::string(kFashionMnistDirectory) + "/train-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
  }
  const auto network =
      load_evaluator_network(std::string(GUIDIFF_SOURCE_DIR) + "/models/fashion-mnist/evaluator", torch::kCPU);
  // As `guidiff eval` and the sweep's real-images row: 1000 training images against the
  // statistics of the 10000 test images, everything quantised to 8 bits as saved samples are.
  const FeatureStatistics reference =
      feature_statistics(run_feature_network(*network, load_fashion_mnist("test").images).features);
  const auto fid = [&](const torch::Tensor& images) {
    const torch::Tensor saved = uint8_nhwc_to_images(images_to_uint8_nhwc(images));
    return frechet_distance(feature_statistics(run_feature_network(*network, saved).features), reference);
  };
  // The floor at 1000 images is itself a noisy estimate (it moves by about 2x between draws),
  // so each FID is the mean over 3 disjoint sets of 1000 images.
  torch::Generator generator = at::detail::createCPUGenerator(1);
  const Dataset train = load_fashion_mnist("train");
  const torch::Tensor order = torch::randperm(train.size(), generator);
  double floor = 0, noisy = 0, speckled = 0, clean_black = 0, noisy_black = 0;
  for (int64_t set = 0; set < 3; ++set) {
    const torch::Tensor clean = train.images.index_select(0, order.slice(0, 1000 * set, 1000 * (set + 1)));
    const torch::Tensor gaussian = (clean + 0.05 * torch::randn(clean.sizes(), generator)).clamp(-1.0, 1.0);
    const torch::Tensor hit = torch::rand(clean.sizes(), generator) < 0.01;
    const torch::Tensor salt = torch::rand(clean.sizes(), generator) < 0.5;
    const torch::Tensor salt_and_pepper =
        torch::where(hit, torch::where(salt, torch::ones_like(clean), -torch::ones_like(clean)), clean);
    floor += fid(clean) / 3;
    noisy += fid(gaussian) / 3;
    speckled += fid(salt_and_pepper) / 3;
    clean_black += near_black_fraction(clean) / 3;
    noisy_black += near_black_fraction(gaussian) / 3;
  }
  ASSERT_GT(floor, 0.0);
  std::printf("FID floor %.4g; Gaussian sigma 0.05: %.4g (%.1fx); 1%% salt-and-pepper: %.4g (%.1fx)\n", floor,
              noisy, noisy / floor, speckled, speckled / floor);
  // "Well above": the penultimate features alone fail 4x.
  EXPECT_GT(noisy, 4.0 * floor);
  EXPECT_GT(speckled, 4.0 * floor);
  // The background metric sees the same noise: Fashion-MNIST's background pixels are 0, and
  // about 9% of them (1 - Phi(4/3), metrics' test) leave level <= 8 under sigma 0.05. About
  // half the pixels are background, so the fraction drops by about 0.045; more than 0.03 is
  // asked, while 3 sets of 1000 clean images differ by about 0.002.
  std::printf("near-black pixels: clean %.4f, Gaussian sigma 0.05 %.4f\n", clean_black, noisy_black);
  EXPECT_GT(clean_black, 0.4);
  EXPECT_GT(clean_black - noisy_black, 0.03);
}

}  // namespace
