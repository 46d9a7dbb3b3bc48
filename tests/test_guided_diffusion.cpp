// openai/guided-diffusion's models: its flag strings mapped onto guidiff's configs (the
// released models' README lines, verbatim), and tiny versions of each released architecture
// loaded from `.pt` files and checked against an independent float64 reference
// (tests/fixtures/make_guided_diffusion_fixtures.py, which wrote tests/data/guided_diffusion):
// eps and variance outputs, classifier logits, classifier-guided DDPM (learned range) and
// DDIM runs, and the upsampler.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/guided_diffusion_flags.hpp"
#include "guidiff/models/guided_diffusion_models.hpp"
#include "guidiff/models/network_adapters.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/sampling/upsample.hpp"
#include "support/attention_settings.hpp"
#include "support/test_files.hpp"
#include "support/winograd_settings.hpp"

using namespace guidiff;
using guidiff::testing::expect_error;
using nlohmann::json;

namespace {

// ---- flags ------------------------------------------------------------------------------

// guided-diffusion's README, verbatim.
const std::string kFlags64 =
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
    "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
    "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True";
const std::string kFlags128 =
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True";
const std::string kFlags256Uncond =
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True";
const std::string kFlags512 =
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 False --use_scale_shift_norm True";
const std::string kFlags64To256 =
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256  --small_size 64 "
    "--learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True";
const std::string kFlags128To512 =
    "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True";

GuidedDiffusionFlags flags(const std::string& text) { return GuidedDiffusionFlags::parse(text, "--model-flags"); }

TEST(GuidedDiffusionFlags, The64ModelsFlagsGiveItsArchitecture) {
  const auto config = unet_config_from_flags(flags(kFlags64), false);
  EXPECT_EQ(config.image_size, 64);
  EXPECT_EQ(config.in_channels, 3);
  EXPECT_EQ(config.model_channels, 192);
  EXPECT_EQ(config.channel_mult, (std::vector<double>{1, 2, 3, 4}));  // by image size
  EXPECT_EQ(config.num_res_blocks, 3);
  EXPECT_EQ(config.attention_resolutions, (std::vector<int64_t>{32, 16, 8}));
  EXPECT_EQ(config.num_head_channels, 64);
  EXPECT_TRUE(config.use_new_attention_order);
  EXPECT_TRUE(config.resblock_updown);
  EXPECT_TRUE(config.use_scale_shift_norm);
  EXPECT_TRUE(config.learn_sigma);
  EXPECT_EQ(config.num_classes, 1000);
  EXPECT_FALSE(config.null_class);
  EXPECT_EQ(config.label_rows(), 1000);
  EXPECT_DOUBLE_EQ(config.dropout, 0.1);
  EXPECT_EQ(config.norm_groups, 32);
  const auto diffusion = diffusion_settings_from_flags(flags(kFlags64));
  EXPECT_EQ(diffusion.schedule, BetaScheduleKind::cosine);
  EXPECT_EQ(diffusion.timesteps, 1000);
  EXPECT_EQ(diffusion.fixed_variance, VarianceKind::fixed_large);
}

TEST(GuidedDiffusionFlags, EveryReleasedModelsFlagsMapAndDefaultsFillTheRest) {
  const auto c128 = unet_config_from_flags(flags(kFlags128), false);
  EXPECT_EQ(c128.channel_mult, (std::vector<double>{1, 1, 2, 3, 4}));
  EXPECT_EQ(c128.num_heads, 4);
  EXPECT_EQ(c128.num_head_channels, -1);
  EXPECT_FALSE(c128.use_new_attention_order);  // the legacy order by default
  EXPECT_EQ(c128.upsample_heads_setting(), 4);  // num_heads_upsample -1: num_heads
  const auto c256 = unet_config_from_flags(flags(kFlags256Uncond), false);
  EXPECT_EQ(c256.channel_mult, (std::vector<double>{1, 1, 2, 2, 4, 4}));
  EXPECT_EQ(c256.num_classes, 0);
  const auto c512 = unet_config_from_flags(flags(kFlags512), false);
  EXPECT_EQ(c512.channel_mult, (std::vector<double>{0.5, 1, 1, 2, 2, 4, 4}));
  EXPECT_EQ(c512.level_channels(0), 128);  // int(0.5 * 256)
  const auto up256 = unet_config_from_flags(flags(kFlags64To256), true);
  EXPECT_EQ(up256.image_size, 256);
  EXPECT_EQ(up256.low_res_size, 64);
  EXPECT_EQ(up256.network_in_channels(), 6);
  EXPECT_EQ(up256.out_channels(), 6);
  EXPECT_EQ(up256.channel_mult, (std::vector<double>{1, 1, 2, 2, 4, 4}));
  const auto up512 = unet_config_from_flags(flags(kFlags128To512), true);
  EXPECT_EQ(up512.channel_mult, (std::vector<double>{1, 1, 2, 2, 4, 4}));  // not 0.5: sr_create_model
  EXPECT_EQ(up512.attention_resolutions, (std::vector<int64_t>{32, 16}));
  EXPECT_EQ(up512.low_res_size, 128);
  // Defaults (model_and_diffusion_defaults): 128 channels, 2 blocks, 4 heads, 16,8.
  const auto defaults = unet_config_from_flags(GuidedDiffusionFlags(), false);
  EXPECT_EQ(defaults.image_size, 64);
  EXPECT_EQ(defaults.model_channels, 128);
  EXPECT_EQ(defaults.num_heads, 4);
  EXPECT_EQ(defaults.attention_resolutions, (std::vector<int64_t>{16, 8}));
  EXPECT_TRUE(defaults.use_scale_shift_norm);
  EXPECT_FALSE(defaults.learn_sigma);
}

TEST(GuidedDiffusionFlags, ClassifiersTakeTheModelsImageSizeAndCreateClassifiersFixedValues) {
  // classifier_sample.py parses the model's and the classifier's flags together.
  auto all = flags(kFlags64);
  all.merge(GuidedDiffusionFlags::parse("--classifier_depth 4", "--classifier-flags"));
  const auto c64 = classifier_config_from_flags(all);
  EXPECT_EQ(c64.image_size, 64);
  EXPECT_EQ(c64.channel_mult, (std::vector<double>{1, 2, 3, 4}));
  EXPECT_EQ(c64.model_channels, 128);  // classifier_width
  EXPECT_EQ(c64.num_res_blocks, 4);
  EXPECT_EQ(c64.attention_resolutions, (std::vector<int64_t>{32, 16, 8}));
  EXPECT_EQ(c64.num_head_channels, 64);
  EXPECT_EQ(c64.pool, "attention");
  EXPECT_TRUE(c64.use_scale_shift_norm);
  EXPECT_TRUE(c64.resblock_updown);
  EXPECT_FALSE(c64.use_new_attention_order);
  EXPECT_EQ(c64.num_classes, 1000);
  const auto c512 = classifier_config_from_flags(flags(kFlags512));
  EXPECT_EQ(c512.level_channels(0), 64);  // int(0.5 * 128)
  for (const char* pool : {"adaptive", "spatial", "spatial_v2"}) {
    EXPECT_EQ(classifier_config_from_flags(flags(std::string("--image_size 128 --classifier_pool ") + pool)).pool, pool);
  }
  // The README's DDIM line puts the scale among the classifier flags.
  const auto sampling = sampling_from_flags(GuidedDiffusionFlags::parse(
      "--classifier_scale 1.0 --classifier_use_fp16 True --use_ddim True --timestep_respacing ddim25", "x"));
  EXPECT_EQ(sampling.classifier_scale, 1.0);
  EXPECT_EQ(sampling.use_ddim, true);
  EXPECT_EQ(sampling.timestep_respacing, "ddim25");
  EXPECT_FALSE(sampling.clip_denoised.has_value());
}

TEST(GuidedDiffusionFlags, BadFlagsAreNamed) {
  const auto bad = [](const std::string& text, const std::vector<std::string>& fragments, bool sr = false) {
    SCOPED_TRACE(text);
    expect_error<InputError>([&] { unet_config_from_flags(flags(text), sr); }, fragments);
  };
  bad("--num_channel 64", {"--num_channel", "did you mean --num_channels"});
  bad("--class_cond maybe", {"--class_cond", "True or False"});
  bad("--image_size", {"--image_size needs a value"});
  bad("image_size 64", {"expected a flag"});
  bad("--image_size 64 --image_size 128", {"--image_size is given twice", "'64'", "'128'"});
  bad("--model_path models/64x64_diffusion.pt", {"--model_path is a path", "--model"});
  bad("--predict_xstart True", {"--predict_xstart"});
  bad("--rescale_timesteps True --diffusion_steps 4000", {"--rescale_timesteps"});
  bad("--image_size 100", {"--image_size 100", "--channel_mult"});
  bad("--image_size 64 --attention_resolutions 7", {"guided-diffusion flags give an invalid UNet", "attention_resolutions"});
  bad("--image_size 64", {"--image_size does not apply to an upsampler"}, true);
  bad("--large_size 256", {"upsampler's flags"});
  // Same value twice is fine; so are --name=value and str2bool's words.
  EXPECT_NO_THROW(unet_config_from_flags(flags("--image_size 64 --image_size=64 --class_cond yes"), false));
}

TEST(GuidedDiffusionFlags, RandomClassesAreUniformAndDependOnlyOnSeedAndSampleIndex) {
  // guided-diffusion's scripts draw a random class per sample; --class random does too.
  const auto all = labels_from_spec("random", 20000, 10, 7);
  EXPECT_TRUE(torch::equal(labels_from_spec("random", 20000, 10, 7), all));
  EXPECT_TRUE(torch::equal(labels_from_spec("random", 5, 10, 7, 100), all.slice(0, 100, 105)));
  EXPECT_FALSE(torch::equal(labels_from_spec("random", 20000, 10, 8), all));
  // 20000 draws of 10 classes: each count is Binomial(20000, 0.1), 2000 +- 42.4; 5 sigma.
  const auto counts = torch::bincount(all, {}, 10);
  EXPECT_EQ(counts.size(0), 10);
  EXPECT_LT((counts - 2000).abs().max().item<int64_t>(), 212);
  expect_error<InputError>([] { labels_from_spec("random", 3, 0); }, {"no classes"});
}

// ---- the tiny released architectures against the reference -------------------------------

std::string data_path(const std::string& name) { return std::string(GUIDIFF_TEST_DATA_DIR) + "/guided_diffusion/" + name; }

const SafetensorsContents& reference() {
  static const SafetensorsContents contents = load_safetensors(data_path("reference.safetensors"));
  return contents;
}

const torch::Tensor& expected(const std::string& name) {
  const torch::Tensor* tensor = reference().find(name);
  if (tensor == nullptr) throw std::runtime_error("reference.safetensors lacks " + name);
  return *tensor;
}

json case_config(const std::string& name) { return json::parse(reference().metadata.at("config." + name)); }

// A reference case as guidiff loads it: "adm64" through guided-diffusion's flags, the others
// through their JSON config (the form `guidiff convert` writes).
Model load_case(const std::string& name) {
  if (name == "adm64") {
    return load_guided_diffusion_model(data_path("adm64.pt"), flags(reference().metadata.at("flags.adm64")),
                                       GuidedDiffusionRole::diffusion);
  }
  return load_pt_model(data_path(name + ".pt"), case_config(name));
}

// Tolerance for a float32 network against the float64 reference on the same weights: each
// layer's outputs are sums of K <= 9 * 64 products rounded in float32 (u = 2^-24), an error
// of about sqrt(K) u ~ 1.5e-6 of the activations' scale (normalisation keeps them O(1)).
// Independent from layer to layer, over the L <= 60 layers of the deepest case they add to
// about sqrt(L) 1.5e-6 ~ 1.2e-5; 4x that for errors that do not cancel. The scale is the
// output's (at least 1). (Measured: 2e-7 to 3e-6.) The Winograd convolutions round a few times
// more per layer (their transforms' constants reach 8; tests/test_winograd_conv.cpp), which the
// 4x covers. (Measured with them in every layer: up to 2.5e-6.)
double network_tolerance(const torch::Tensor& reference_output) {
  return 5e-5 * std::max(1.0, reference_output.abs().max().item<double>());
}

double max_difference(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

// Runs `check` twice: with libtorch's convolutions and attention in one piece, then with the
// Winograd path in every 3x3 convolution it can serve (by default only images from 32x32, or
// calls of 64 tiles with 256 channels, take it; these models' 16x16 layers are narrower) and
// attention in blocks of a few query rows (by default only heads of over 1 MiB of scores are
// blocked), and checks that the paths were taken exactly when enabled.
void with_and_without_fast_paths(const std::function<void()>& check) {
  for (const bool fast : {false, true}) {
    SCOPED_TRACE(fast ? "Winograd convolutions, blocked attention"
                      : "libtorch's convolutions, attention in one piece");
    guidiff::testing::WinogradSettings settings(fast, 0);
    // Blocks of 3 float32 query rows for up to 65 keys (the attention pool's 8 x 8 + 1).
    guidiff::testing::AttentionBlockBytes blocks(fast ? 3 * 65 * 4 : int64_t{1} << 40);
    const int64_t calls = winograd_calls(), blocked = blocked_attention_calls();
    check();
    EXPECT_EQ(winograd_calls() > calls, fast);
    EXPECT_EQ(blocked_attention_calls() > blocked, fast);
  }
}

void every_architecture_matches_the_reference() {
  torch::NoGradGuard no_grad;  // as the samplers run the networks (the Winograd path needs it)
  const auto x = expected("input.x").to(torch::kFloat32);
  const auto t = expected("input.t").to(torch::kLong);
  const auto y = expected("input.y").to(torch::kLong);
  const auto low_res = expected("input.low_res").to(torch::kFloat32);
  int cases = 0;
  for (const auto& [key, value] : reference().metadata) {
    if (key.rfind("config.", 0) != 0) continue;
    const std::string name = key.substr(7);
    SCOPED_TRACE(name + " (" + reference().metadata.at("saving." + name) + ")");
    const Model model = load_case(name);
    const auto& want = expected("out." + name);
    torch::Tensor got;
    if (model.classifier) {
      got = model.classifier->logits(x, t);
    } else {
      auto unet = std::dynamic_pointer_cast<UNetDenoiser>(model.denoiser);
      ASSERT_TRUE(unet);
      const auto denoiser = unet->network()->config().is_super_resolution() ? unet->conditioned_on(low_res) : unet;
      const auto out = denoiser->predict(x, t, denoiser->num_classes() > 0 ? y : torch::Tensor());
      got = torch::cat({out.eps, out.variance_output}, 1);  // every case learns its variance
    }
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_GT(want.abs().max().item<double>(), 0.1);
    EXPECT_LT(max_difference(got, want), network_tolerance(want));
    ++cases;
  }
  EXPECT_EQ(cases, 9);
}

TEST(GuidedDiffusionModels, EveryTinyArchitectureMatchesTheReference) {
  with_and_without_fast_paths(every_architecture_matches_the_reference);
}

TEST(GuidedDiffusionModels, FlagsBuildTheSameNetworkAsTheConfig) {
  json network = unet_config_from_flags(flags(reference().metadata.at("flags.adm64")), false);
  network["kind"] = "unet";
  const auto from_flags = build_model(network);
  auto config = case_config("adm64");
  const auto from_config = build_model(config);
  std::map<std::string, std::vector<int64_t>> a, b;
  for (const auto& p : from_flags.module->named_parameters()) a[p.key()] = p.value().sizes().vec();
  for (const auto& p : from_config.module->named_parameters()) b[p.key()] = p.value().sizes().vec();
  EXPECT_EQ(a, b);
}

// The sampler cases: generate() (or generate_upsampled()) as the CLI runs it, with batch size
// 2 for 3 samples, every step compared. Tolerance: the network's (above) times the growth of
// an eps error through the steps, at most 1/sqrt(abar) <= 3.3 per run (the respacings start at
// t <= 800) for the x0 prediction (the clamp to [-1, 1] is 1-Lipschitz), with the classifier
// gradient a second network pass of the same depth: 10x. (Measured: below 1/10 of it.)
void guided_samplers_match_the_reference() {
  std::map<std::string, Model> models;
  const auto model = [&](const std::string& name) -> Model& {
    if (!models.count(name)) models.emplace(name, load_case(name));
    return models.at(name);
  };
  int cases = 0;
  for (const auto& [key, value] : reference().metadata) {
    if (key.rfind("sampler.", 0) != 0) continue;
    const std::string name = key.substr(8);
    SCOPED_TRACE(name);
    const json spec = json::parse(value);
    GenerationConfig config;
    config.sampler = parse_sampler(spec.at("sampler"));
    config.schedule = parse_beta_schedule(spec.at("schedule"));
    config.timesteps = 1000;
    config.respacing = spec.at("respacing");
    config.clip_x0 = spec.at("clip");
    config.classifier_scale = spec.at("classifier_scale");
    config.seed = spec.at("seed");
    config.num_samples = 3;
    config.batch_size = 2;
    config.sample_shape = {3, 16, 16};
    config.keep_trajectory = true;
    const auto labels = torch::tensor(spec.at("labels").get<std::vector<int64_t>>(), torch::kLong);
    std::shared_ptr<Classifier> classifier;
    if (!spec.at("classifier").is_null()) classifier = model(spec.at("classifier")).classifier;
    Model& denoiser = model(spec.at("model"));
    GenerationResult result;
    if (reference().find("sample." + name + ".low_res") != nullptr) {
      auto unet = std::dynamic_pointer_cast<UNetDenoiser>(denoiser.denoiser);
      result = generate_upsampled([unet](const torch::Tensor& low_res) { return unet->conditioned_on(low_res); },
                                  classifier, config, expected("sample." + name + ".low_res").to(torch::kFloat32),
                                  labels);
    } else {
      result = generate(denoiser.denoiser, classifier, config, labels, {});
    }
    const auto& want = expected("sample." + name);  // [steps + 1, 3, 3, 16, 16]
    ASSERT_EQ(static_cast<int64_t>(result.trajectory.size()), want.size(0));
    for (int64_t step = 0; step < want.size(0); ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      EXPECT_LT(max_difference(result.trajectory[step], want[step]), 10 * network_tolerance(want[step]));
    }
    ++cases;
  }
  EXPECT_EQ(cases, 3);
}

TEST(GuidedDiffusionModels, GuidedDdpmAndDdimAndUpsamplingMatchTheReference) {
  with_and_without_fast_paths(guided_samplers_match_the_reference);
}

// ---- conditional models without a null class -------------------------------------------

TEST(GuidedDiffusionModels, ModelsWithoutANullClassRefuseClassifierFreeGuidanceClearly) {
  const Model model = load_case("adm128");
  EXPECT_EQ(model.denoiser->num_classes(), 10);
  EXPECT_FALSE(model.denoiser->has_null_class());
  expect_error<ModelError>([&] { ClassifierFreeGuidance(model.denoiser, 3.0); }, {"null class", "--classifier-scale"});
  expect_error<InputError>([&] { NullClassDenoiser{model.denoiser}; }, {"no null class"});
  GenerationConfig config;
  config.sample_shape = {3, 16, 16};
  config.num_samples = 1;
  config.steps = 2;
  config.cfg_scale = 1.0;
  const auto label = torch::tensor({1}, torch::kLong);
  expect_error<ModelError>([&] { generate(model.denoiser, nullptr, config, label, {}); }, {"--cfg-scale", "null class"});
  config.cfg_scale = 0.0;
  expect_error<InputError>([&] { generate(model.denoiser, nullptr, config, {}, {}); }, {"no null class", "--class"});
  const auto x = torch::zeros({1, 3, 16, 16});
  expect_error<InputError>([&] { model.denoiser->predict(x, torch::tensor({5}), torch::tensor({10})); },
                           {"class 10", "no null class"});
}

// ---- saving as a guidiff checkpoint (guidiff convert) ------------------------------------

class GuidedDiffusionFiles : public guidiff::testing::TempDirTest {};

TEST_F(GuidedDiffusionFiles, ConvertedModelsReloadWithoutFlagsAndGiveTheSameOutputs) {
  const Model original = load_case("adm64");
  save_model(original, path("converted"));
  const json file = json::parse(read_file_bytes(path("converted.json")));
  EXPECT_EQ(file.at("diffusion").at("noise_schedule"), "cosine");
  EXPECT_EQ(file.at("source").at("format"), "guided-diffusion state dict (.pt)");
  EXPECT_NE(file.at("source").at("flags").get<std::string>().find("--use_new_attention_order True"), std::string::npos);
  const Model loaded = load_model(path("converted"));
  ASSERT_TRUE(loaded.diffusion.has_value());
  EXPECT_EQ(loaded.diffusion->schedule, BetaScheduleKind::cosine);
  const auto x = expected("input.x").to(torch::kFloat32);
  const auto t = expected("input.t").to(torch::kLong);
  const auto a = original.denoiser->predict(x, t, {});
  const auto b = loaded.denoiser->predict(x, t, {});
  EXPECT_TRUE(torch::equal(a.eps, b.eps));
  EXPECT_TRUE(torch::equal(a.variance_output, b.variance_output));
  const json card = model_card(loaded, path("converted"));
  EXPECT_EQ(card.at("origin").at("project"), "openai/guided-diffusion");
  EXPECT_EQ(card.at("parameters"), count_parameters(*loaded.module));
}

TEST(GuidedDiffusionModels, WrongFlagsForAFileNameTheMismatch) {
  // The 64-like file read with other flags: two blocks per level need tensors it lacks.
  expect_error<FileError>(
      [&] {
        std::string text = reference().metadata.at("flags.adm64");
        text.replace(text.find("--num_res_blocks 1"), 18, "--num_res_blocks 2");
        load_guided_diffusion_model(data_path("adm64.pt"), flags(text), GuidedDiffusionRole::diffusion);
      },
      {"adm64.pt", "missing key", "are the flags those the model was trained with?"});
}

}  // namespace
