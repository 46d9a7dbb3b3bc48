// guided-diffusion's models on the command line (see guided_diffusion_setup.hpp).
#include "guidiff/cli/guided_diffusion_setup.hpp"

#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "guidiff/cli/common.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/models/guided_diffusion_models.hpp"
#include "guidiff/models/network_adapters.hpp"

namespace guidiff::cli {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_pt(const std::string& path) { return ends_with(path, ".pt") || ends_with(path, ".pth"); }

bool parse_words(const std::string& flag, const std::string& text) {
  // guided-diffusion's str2bool, through its own parser so both spell the same words.
  const auto parsed = GuidedDiffusionFlags::parse("--" + flag + " " + text, "--" + flag);
  return parsed.boolean(flag);
}

// Sets a guidiff setting from a guided-diffusion flag unless guidiff's option was given with
// another value.
template <typename T>
void take(T& setting, const CLI::Option* option, const T& value, const std::string& gd_flag,
          const std::string& value_text) {
  if (given(option) && setting != value) {
    throw InputError(option->get_name() + " contradicts --" + gd_flag + " " + value_text);
  }
  setting = value;
}

}  // namespace

void add_guided_diffusion_flags(CLI::App& command, SamplingFlags& flags) {
  command.add_option("--model-flags", flags.model_flags,
                     "guided-diffusion's MODEL_FLAGS for a .pt --model, verbatim (\"--image_size 64 --class_cond True ...\")");
  command.add_option("--classifier-flags", flags.classifier_flags,
                     "guided-diffusion's classifier flags for a .pt --classifier (\"--classifier_depth 4 ...\")");
  command.add_option("--model-config", flags.model_config,
                     "a guidiff JSON config of the network in a .pt --model (instead of --model-flags)");
  command.add_option("--classifier-config", flags.classifier_config,
                     "a guidiff JSON config of the network in a .pt --classifier (instead of --classifier-flags)");
  command.add_option("--use_ddim", flags.use_ddim, "guided-diffusion's: True = --sampler ddim, False = --sampler ddpm");
  command.add_option("--clip_denoised", flags.clip_denoised, "guided-diffusion's: True = --clip, False = --no-clip");
}

GuidedDiffusionFlags guided_diffusion_flags(const SamplingFlags& flags) {
  GuidedDiffusionFlags all = GuidedDiffusionFlags::parse(flags.model_flags, "--model-flags");
  all.merge(GuidedDiffusionFlags::parse(flags.classifier_flags, "--classifier-flags"));
  return all;
}

void apply_guided_diffusion_sampling(SamplingFlags& flags, const GuidedDiffusionFlags& strings) {
  const GuidedDiffusionSampling inside = sampling_from_flags(strings);
  std::optional<bool> use_ddim = inside.use_ddim;
  if (!flags.use_ddim.empty()) {
    const bool value = parse_words("use_ddim", flags.use_ddim);
    if (use_ddim && *use_ddim != value) throw InputError("--use_ddim " + flags.use_ddim + " contradicts the flag strings'");
    use_ddim = value;
  }
  if (use_ddim) take(flags.sampler, flags.sampler_option, std::string(*use_ddim ? "ddim" : "ddpm"), "use_ddim", *use_ddim ? "True" : "False");
  std::optional<bool> clip = inside.clip_denoised;
  if (!flags.clip_denoised.empty()) {
    const bool value = parse_words("clip_denoised", flags.clip_denoised);
    if (clip && *clip != value) throw InputError("--clip_denoised " + flags.clip_denoised + " contradicts the flag strings'");
    clip = value;
  }
  if (clip) {
    if ((*clip && flags.no_clip) || (!*clip && flags.clip)) {
      throw InputError(std::string(*clip ? "--no-clip" : "--clip") + " contradicts --clip_denoised");
    }
    flags.clip = *clip;
    flags.no_clip = !*clip;
  }
  if (inside.timestep_respacing) {
    take(flags.respacing, flags.respacing_option, *inside.timestep_respacing, "timestep_respacing", *inside.timestep_respacing);
  }
  if (inside.classifier_scale) {
    // --classifier-scale is text (a number or a per-sample .npy): compared as a number.
    const std::string& given_scale = flags.classifier_scale;
    char* end = nullptr;
    const double given_value = std::strtod(given_scale.c_str(), &end);
    const bool same = end != given_scale.c_str() && *end == '\0' && given_value == *inside.classifier_scale;
    if (given(flags.classifier_scale_option) && !same) {
      throw InputError(flags.classifier_scale_option->get_name() + " contradicts --classifier_scale " +
                       strings.text_of("classifier_scale"));
    }
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", *inside.classifier_scale);
    flags.classifier_scale = text;
    flags.classifier_scale_from_guided_diffusion = true;
  }
  // guided-diffusion's own defaults for its models: DDPM (use_ddim False) and, with a
  // classifier, classifier_scale 1.0.
  if (!flags.model_flags.empty()) {
    if (!use_ddim && !given(flags.sampler_option)) flags.sampler = "ddpm";
    if (!inside.classifier_scale && !given(flags.classifier_scale_option) && classifier_is_state_dict(flags)) {
      flags.classifier_scale = "1";
      flags.classifier_scale_from_guided_diffusion = true;
    }
  }
  if (inside.batch_size) take(flags.batch_size, flags.batch_size_option, *inside.batch_size, "batch_size", strings.text_of("batch_size"));
  if (inside.num_samples) {
    take(flags.num_samples, flags.num_samples_option, *inside.num_samples, "num_samples", strings.text_of("num_samples"));
  }
}

bool model_is_state_dict(const SamplingFlags& flags) {
  const bool described = !flags.model_flags.empty() || !flags.model_config.empty();
  if (described && !is_pt(flags.model)) {
    throw InputError(std::string(flags.model_config.empty() ? "--model-flags" : "--model-config") +
                     " describes a .pt state dict, but --model '" + flags.model + "' is not a .pt file");
  }
  if (!flags.model_flags.empty() && !flags.model_config.empty()) {
    throw InputError("give --model-flags or --model-config, not both");
  }
  return described;
}

bool classifier_is_state_dict(const SamplingFlags& flags) {
  if (!flags.classifier_flags.empty() && !flags.classifier_config.empty()) {
    throw InputError("give --classifier-flags or --classifier-config, not both");
  }
  if (flags.classifier.empty()) {
    if (!flags.classifier_flags.empty() || !flags.classifier_config.empty()) {
      throw InputError(std::string(flags.classifier_config.empty() ? "--classifier-flags" : "--classifier-config") +
                       " given without --classifier");
    }
    return false;
  }
  // guided-diffusion's classifiers are read with the model's flags too (one namespace).
  const bool described = !flags.classifier_flags.empty() || !flags.classifier_config.empty() || !flags.model_flags.empty();
  return described && is_pt(flags.classifier);
}

Model load_state_dict_model(const SamplingFlags& flags, const GuidedDiffusionFlags& strings, const torch::Device& device) {
  if (!flags.model_config.empty()) {
    return load_pt_model(flags.model, read_json_file("--model-config", flags.model_config), device);
  }
  const auto role = flags.super_resolution ? GuidedDiffusionRole::super_resolution : GuidedDiffusionRole::diffusion;
  return load_guided_diffusion_model(flags.model, strings, role, device);
}

Model load_state_dict_classifier(const SamplingFlags& flags, const GuidedDiffusionFlags& strings,
                                 const torch::Device& device) {
  if (!flags.classifier_config.empty()) {
    return load_pt_model(flags.classifier, read_json_file("--classifier-config", flags.classifier_config), device);
  }
  return load_guided_diffusion_model(flags.classifier, strings, GuidedDiffusionRole::classifier, device);
}

void apply_diffusion_settings(const Model& model, const SamplingFlags& flags, GenerationConfig& config) {
  if (!model.diffusion) return;
  const DiffusionSettings& trained = *model.diffusion;
  if (given(flags.schedule_option) && config.schedule != trained.schedule) {
    throw InputError("--schedule " + flags.schedule + " contradicts the model's " + to_string(trained.schedule) +
                     " schedule (it was trained with it)");
  }
  if (given(flags.timesteps_option) && config.timesteps != trained.timesteps) {
    throw InputError("--timesteps " + std::to_string(config.timesteps) + " contradicts the model's " +
                     std::to_string(trained.timesteps) + " diffusion steps");
  }
  config.schedule = trained.schedule;
  config.timesteps = trained.timesteps;
  if (!given(flags.variance_option)) config.fixed_variance = trained.fixed_variance;
}

void prepare_upsampling(const Model& model, const SamplingFlags& flags, GenerationConfig& config,
                        SamplingModels& models) {
  auto unet = std::dynamic_pointer_cast<UNetDenoiser>(model.denoiser);
  const bool super_resolution = unet && unet->network()->config().is_super_resolution();
  if (!flags.super_resolution) {
    if (super_resolution) {
      throw InputError("--model '" + flags.model + "' is a super-resolution model: use guidiff upsample --base-samples");
    }
    return;
  }
  if (!super_resolution) {
    throw InputError("guidiff upsample needs a super-resolution model (guided-diffusion's --large_size/--small_size); '" +
                     flags.model + "' is not one");
  }
  if (flags.base_samples.empty()) throw InputError("guidiff upsample needs --base-samples");
  const UNetConfig& network = unet->network()->config();
  const SampleBatchNpz base = read_sample_batch_npz(flags.base_samples);
  const auto& images = base.images;  // uint8 [N, h, w, C]
  if (images.size(3) != network.in_channels || images.size(1) != network.low_res_size ||
      images.size(2) != network.low_res_size) {
    throw InputError("--base-samples '" + flags.base_samples + "' holds " + std::to_string(images.size(1)) + "x" +
                     std::to_string(images.size(2)) + " images with " + std::to_string(images.size(3)) +
                     " channels; the upsampler takes " + std::to_string(network.low_res_size) + "x" +
                     std::to_string(network.low_res_size) + " with " + std::to_string(network.in_channels));
  }
  const int64_t available = images.size(0);
  if (available == 0)
    throw InputError("--base-samples '" + flags.base_samples + "' holds no images");
  if (given(flags.num_samples_option) && config.num_samples > available) {
    throw InputError("--num-samples " + std::to_string(config.num_samples) + " exceeds the " + std::to_string(available) +
                     " base samples");
  }
  if (!given(flags.num_samples_option)) config.num_samples = available;
  models.low_res = uint8_nhwc_to_images(images.slice(0, 0, config.num_samples));
  if (!flags.class_spec.empty()) {
    models.labels = labels_from_spec(flags.class_spec, config.num_samples, network.num_classes, config.seed);
  } else if (network.num_classes > 0) {
    if (!base.labels.defined()) {
      throw InputError("the upsampler is class-conditional: --base-samples '" + flags.base_samples +
                       "' has no labels (arr_1); give --class");
    }
    models.labels = base.labels.slice(0, 0, config.num_samples);
  }
  models.conditioned_on = [unet](const torch::Tensor& low_res) -> std::shared_ptr<Denoiser> {
    return unet->conditioned_on(low_res);
  };
}

}  // namespace guidiff::cli
