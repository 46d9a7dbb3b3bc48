// Networks as files: the JSON-config factory, save/load of safetensors weights + config
// (bit-identical round trips, errors naming the key at fault), and the UNet / classifier
// against openai/guided-diffusion's own outputs for the same weights.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/model_files.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using nlohmann::json;

namespace {

torch::Tensor steps(std::vector<int64_t> values) { return torch::tensor(values, torch::kInt64); }

// Replaces every parameter with N(0, scale^2) noise, so zero-initialised layers stop hiding
// the rest of the network.
void randomize(torch::nn::Module& module, double scale = 0.2) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) parameter.copy_(torch::randn_like(parameter) * scale);
}

// A small conditional UNet with learned variance and dropout: 16x16, one channel, two levels.
json tiny_unet_json() {
  return {{"kind", "unet"},
          {"image_size", 16},
          {"in_channels", 1},
          {"model_channels", 16},
          {"channel_mult", {1, 2}},
          {"num_res_blocks", 1},
          {"attention_resolutions", {8}},
          {"num_heads", 2},
          {"norm_groups", 8},
          {"num_classes", 3},
          {"learn_sigma", true},
          {"dropout", 0.3}};
}

class ModelFilesTest : public guidiff::testing::TempDirTest {
 protected:
};

// ---- against guided-diffusion itself --------------------------------------------------

// The closed form tests/fixtures/make_adm_reference.py uses: parameter number j (sorted-name
// order), flat index k: 0.2 sin(0.7 k + 1.9 j + 0.3).
void set_reference_weights(torch::nn::Module& module) {
  auto parameters = module.named_parameters();
  std::vector<std::string> names = parameters.keys();
  std::sort(names.begin(), names.end());
  torch::NoGradGuard no_grad;
  for (size_t j = 0; j < names.size(); ++j) {
    auto& parameter = parameters[names[j]];
    const auto k = torch::arange(parameter.numel(), torch::kFloat64);
    parameter.copy_((0.2 * torch::sin(0.7 * k + (1.9 * static_cast<double>(j) + 0.3)))
                        .reshape(parameter.sizes()));
  }
}

TEST(AdmReference, OutputsMatchGuidedDiffusionsUNetAndClassifier) {
  // Outputs of openai/guided-diffusion's UNetModel / EncoderUNetModel with the same weights
  // (written by tests/fixtures/make_adm_reference.py): same architecture, same names.
  const auto reference =
      load_safetensors(std::string(GUIDIFF_TEST_DATA_DIR) + "/adm_reference.safetensors");
  int cases = 0;
  for (const auto& [key, text] : reference.metadata) {
    const std::string name = key.substr(0, key.size() - std::string(".config").size());
    SCOPED_TRACE(name);
    auto model = build_model(json::parse(text));
    set_reference_weights(*model.module);
    model.module->eval();
    const int64_t channels = model.config.at("in_channels");
    const auto x = torch::sin(0.3 * torch::arange(3 * channels * 16 * 16, torch::kFloat64) + 0.1)
                       .to(torch::kFloat32)
                       .reshape({3, channels, 16, 16});
    const auto t = steps({0, 417, 999});
    torch::Tensor out;
    if (model.classifier) {
      out = model.classifier->logits(x, t);
    } else {
      const int64_t classes = model.denoiser->num_classes();
      const auto y = classes > 0 ? steps({0, classes - 1, 1}) : torch::Tensor();
      const auto prediction = model.denoiser->predict(x, t, y);
      out = prediction.variance_output.defined()
                ? torch::cat({prediction.eps, prediction.variance_output}, 1)
                : prediction.eps;
    }
    const auto* expected = reference.find(name + ".out");
    ASSERT_NE(expected, nullptr);
    ASSERT_EQ(out.sizes(), expected->sizes());
    EXPECT_GT(expected->abs().max().item<double>(), 0.1);
    // float32 both, other kernels (torch 1.13 on the fixture's CPU): each of the ~40 rounded
    // layers sums up to ~600 products in another order, ~u sqrt(n / 6) = 6e-7 relative RMS
    // (u = 2^-24), ~4e-6 through the net in quadrature; at outputs of mean |0.25-0.55| (max
    // 2) the 4-sigma tail of ~1500 values stays under ~1e-5, 10x inside 1e-4.
    EXPECT_LT((out - *expected).abs().max().item<double>(), 1e-4);
    ++cases;
  }
  EXPECT_EQ(cases, 5);
}

// ---- factory, save and load ----------------------------------------------------------

TEST(ModelFactory, AConfigTooLargeForMemoryNamesItself) {
  // 1e8 x 1e8 float32 weights are 4e16 bytes: more than any machine has available, so they are
  // refused before they are requested.
  const json large = {
      {"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", int64_t{100000000}}};
  expect_error<InputError>([&] { build_model(large); },
                           {"mlp_denoiser config: its weights need more than the",
                            "memory available", "check its sizes"});
  // Without that budget they are beyond a 47-bit address space, so the allocation fails at once
  // everywhere (overcommit or not); and 4e13 x 4e13 elements overflow the size calculation.
  // Either way the error names the config, not the allocator.
  expect_error<InputError>(
      [&] { build_model(large, std::numeric_limits<int64_t>::max()); },
      {"mlp_denoiser config: its weights do not fit in memory", "check its sizes"});
  expect_error<InputError>(
      [] {
        build_model({{"kind", "mlp_denoiser"},
                     {"data_dim", 2},
                     {"hidden_channels", int64_t{40000000000000}}});
      },
      {"mlp_denoiser config: its weights do not fit in memory", "check its sizes"});
}

TEST(ModelFactory, BuildsEveryKindBehindItsInterface) {
  const auto unet = build_model(tiny_unet_json());
  EXPECT_EQ(unet.kind, ModelKind::unet);
  ASSERT_TRUE(unet.denoiser);
  EXPECT_FALSE(unet.classifier);
  EXPECT_EQ(unet.denoiser->num_classes(), 3);
  EXPECT_TRUE(unet.denoiser->learns_variance());
  EXPECT_EQ(unet.config.at("kind"), "unet");
  EXPECT_EQ(unet.config.at("norm_groups"), 8);
  EXPECT_TRUE(unet.config.contains("use_scale_shift_norm")) << "the stored config is complete";

  const json classifier = {{"kind", "encoder_unet"},
                           {"image_size", 16},
                           {"in_channels", 1},
                           {"model_channels", 16},
                           {"channel_mult", {1, 2}},
                           {"num_res_blocks", 1},
                           {"attention_resolutions", {8}},
                           {"num_head_channels", 8},
                           {"norm_groups", 8},
                           {"num_classes", 5}};
  const auto encoder = build_model(classifier);
  ASSERT_TRUE(encoder.classifier);
  EXPECT_FALSE(encoder.denoiser);
  EXPECT_EQ(encoder.classifier->num_classes(), 5);

  const auto mlp = build_model({{"kind", "mlp_denoiser"}, {"time_input", "log_snr"}});
  ASSERT_TRUE(mlp.denoiser);
  EXPECT_EQ(mlp.denoiser->time_kind(), TimeKind::log_snr);
  EXPECT_EQ(mlp.denoiser->num_classes(), 0);
  const auto mlp_classifier = build_model({{"kind", "mlp_classifier"}, {"num_classes", 2}});
  ASSERT_TRUE(mlp_classifier.classifier);

  expect_error<InputError>(
      [] {
        build_model({{"kind", "transformer"}});
      },
      {"\"kind\"", "transformer"});
  expect_error<InputError>([] { build_model({{"model_channels", 3}}); }, {"\"kind\""});
  expect_error<InputError>(
      [] {
        build_model({{"kind", "mlp_classifier"}});
      },
      {"mlp_classifier config", "\"num_classes\""});
}

TEST_F(ModelFilesTest, FileNamesFromADirectoryPrefixOrEitherFile) {
  EXPECT_EQ(model_files(dir_.string()).weights, path("model.safetensors"));
  EXPECT_EQ(model_files(dir_.string()).config, path("model.json"));
  EXPECT_EQ(model_files(path("ema")).weights, path("ema.safetensors"));
  EXPECT_EQ(model_files(path("ema.safetensors")).config, path("ema.json"));
  EXPECT_EQ(model_files(path("ema.json")).weights, path("ema.safetensors"));
}

TEST_F(ModelFilesTest, SaveLoadRoundTripGivesBitIdenticalOutputs) {
  torch::manual_seed(7);
  auto model = build_model(tiny_unet_json());
  randomize(*model.module);
  model.module->eval();
  save_model(model, path("unet"));
  EXPECT_TRUE(fs::exists(path("unet.safetensors")));
  EXPECT_TRUE(fs::exists(path("unet.json")));
  const auto stored = json::parse(read_file_bytes(path("unet.json")));
  EXPECT_EQ(stored, model.config);

  const auto loaded = load_model(path("unet"));
  EXPECT_FALSE(loaded.module->is_training()) << "loaded models are ready to sample (dropout off)";
  const auto x = torch::randn({2, 1, 16, 16});
  const auto t = steps({3, 700});
  const auto y = steps({0, 3});
  const auto expected = model.denoiser->predict(x, t, y);
  const auto actual = loaded.denoiser->predict(x, t, y);
  // Bit-identical weights and the same forward on the same batch: bitwise.
  EXPECT_TRUE(torch::equal(actual.eps, expected.eps));
  EXPECT_TRUE(torch::equal(actual.variance_output, expected.variance_output));
  EXPECT_TRUE(torch::equal(loaded.denoiser->predict(x, t, y).eps, actual.eps))
      << "deterministic in eval mode";
  const auto weights = load_safetensors(path("unet.safetensors"));
  EXPECT_EQ(weights.metadata.at("guidiff_kind"), "unet");
  EXPECT_EQ(weights.tensors.size(), model.module->parameters().size());

  // A classifier saved into a directory loads from it.
  auto classifier =
      build_model({{"kind", "mlp_classifier"}, {"num_classes", 3}, {"hidden_channels", 16}});
  save_model(classifier, dir_.string());
  const auto reloaded = load_model(dir_.string());
  const auto points = torch::randn({4, 2});
  EXPECT_TRUE(torch::equal(reloaded.classifier->logits(points, steps({0, 1, 2, 3})),
                           classifier.classifier->logits(points, steps({0, 1, 2, 3}))));
}

TEST_F(ModelFilesTest, ClassNamesTravelWithTheModelAndAreChecked) {
  auto model = build_model(tiny_unet_json());  // 3 classes (and the null class)
  model.class_names = {"Coat", "Bag", "Ankle boot"};
  save_model(model, path("unet"));
  const auto stored = json::parse(read_file_bytes(path("unet.json")));
  EXPECT_EQ(stored.at("class_names"), json({"Coat", "Bag", "Ankle boot"}));
  EXPECT_EQ(load_model(path("unet")).class_names, model.class_names);
  // A classifier's names are one per output.
  auto classifier = build_model({{"kind", "mlp_classifier"}, {"num_classes", 2}, {"hidden_channels", 8}});
  classifier.class_names = {"left", "right"};
  save_model(classifier, path("classifier"));
  EXPECT_EQ(load_model(path("classifier")).class_names, classifier.class_names);

  auto config = stored;
  config["class_names"] = {"Coat", "Bag"};
  write_file_atomically(path("unet.json"), config.dump());
  expect_error<FileError>([&] { load_model(path("unet")); },
                          {"unet.json", "\"class_names\" has 2 names for the network's 3 classes"});
  config["class_names"] = {"Coat", 1, "Bag"};
  write_file_atomically(path("unet.json"), config.dump());
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json", "\"class_names\" must be an array of strings"});
  config["class_names"] = "Coat";
  write_file_atomically(path("unet.json"), config.dump());
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json", "array of strings"});
}

TEST_F(ModelFilesTest, MismatchedConfigOrWeightsNameTheKey) {
  auto model = build_model(tiny_unet_json());
  save_model(model, path("unet"));
  const auto edit_config = [&](const std::string& key, const json& value) {
    auto config = model.config;
    if (value.is_null()) {
      config.erase(key);
    } else {
      config[key] = value;
    }
    write_file_atomically(path("unet.json"), config.dump());
  };
  edit_config("model_channels", 24);
  expect_error<FileError>([&] { load_model(path("unet")); },
                          {"unet.safetensors", "'time_embed.0.weight'", "[64, 16]", "[96, 24]"});
  edit_config("num_classes", 0);
  expect_error<FileError>([&] { load_model(path("unet")); },
                          {"unet.safetensors", "unexpected key 'label_emb.weight'"});
  edit_config("learn_sigma", false);
  expect_error<FileError>([&] { load_model(path("unet")); },
                          {"'out.2.weight'", "[2, 16, 3, 3]", "[1, 16, 3, 3]"});
  edit_config("norm_groups", 5);
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json", "norm_groups"});
  edit_config("kind", nullptr);
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json", "\"kind\""});
  write_file_atomically(path("unet.json"), "{\"kind\": ");
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json", "not valid JSON"});
  // A binary file given as the config: the parser's quote of it comes out printable.
  write_file_atomically(path("unet.json"), std::string("\x89PNG\r\n\x1a\n", 8));
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json", "not valid JSON (parse error", "\\x89"});
  try {
    load_model(path("unet"));
  } catch (const FileError& error) {
    EXPECT_EQ(std::string(error.what()).find("[json.exception"), std::string::npos) << error.what();
  }

  // Weights lacking a tensor the config's network has.
  write_file_atomically(path("unet.json"), model.config.dump());
  auto state = model_state(*model.module);
  state.erase(std::remove_if(state.begin(), state.end(),
                             [](const auto& item) { return item.first == "out.2.bias"; }),
              state.end());
  save_safetensors(path("unet.safetensors"), state);
  expect_error<FileError>([&] { load_model(path("unet")); },
                          {"unet.safetensors", "missing key 'out.2.bias'"});

  // A NaN weight (a diverged run, a corrupt copy) makes every output NaN: named on load.
  auto poisoned = model_state(*model.module);
  for (auto& [name, tensor] : poisoned) {
    if (name == "time_embed.0.weight") {
      tensor = tensor.clone();
      tensor[1][2] = std::numeric_limits<float>::quiet_NaN();
    }
  }
  save_safetensors(path("unet.safetensors"), poisoned);
  expect_error<FileError>([&] { load_model(path("unet")); },
                          {"unet.safetensors", "key 'time_embed.0.weight' holds NaN or infinity"});

  fs::remove(path("unet.json"));
  expect_error<FileError>([&] { load_model(path("unet")); }, {"unet.json"});
}

}  // namespace
