// guided-diffusion's flags and their mapping onto guidiff's configs (see
// guided_diffusion_flags.hpp). Defaults and channel multipliers are those of
// guided_diffusion/script_util.py (model_and_diffusion_defaults, classifier_defaults,
// sr_model_and_diffusion_defaults, create_model, create_classifier, sr_create_model) and of
// scripts/{image,classifier,super_res}_sample.py.
#include "guidiff/models/guided_diffusion_flags.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"

namespace guidiff {
namespace {

enum class FlagType { integer, number, boolean, text, int_list };
// Which of guided-diffusion's parsers the flag belongs to; training-only flags of the model
// and diffusion parsers are accepted (they do not change sampling) and only recorded.
enum class FlagGroup { model, super_resolution, classifier, diffusion, sampling, path };

struct FlagSpec {
  const char* name;
  const char* default_value;
  FlagType type;
  FlagGroup group;
  const char* maps_to;  // what guidiff makes of it
};

// THE mapping table: every flag guided-diffusion's sampling scripts take.
constexpr FlagSpec kFlags[] = {
    // model_and_diffusion_defaults() -> create_model()
    {"image_size", "64", FlagType::integer, FlagGroup::model, "image_size (UNet and classifier)"},
    {"num_channels", "128", FlagType::integer, FlagGroup::model, "model_channels"},
    {"num_res_blocks", "2", FlagType::integer, FlagGroup::model, "num_res_blocks"},
    {"num_heads", "4", FlagType::integer, FlagGroup::model, "num_heads"},
    {"num_heads_upsample", "-1", FlagType::integer, FlagGroup::model, "num_heads_upsample"},
    {"num_head_channels", "-1", FlagType::integer, FlagGroup::model, "num_head_channels"},
    {"attention_resolutions", "16,8", FlagType::int_list, FlagGroup::model, "attention_resolutions"},
    {"channel_mult", "", FlagType::text, FlagGroup::model,
     "channel_mult; empty: by image size (512: 0.5,1,1,2,2,4,4; 256: 1,1,2,2,4,4; 128: 1,1,2,3,4; 64: 1,2,3,4)"},
    {"dropout", "0.0", FlagType::number, FlagGroup::model, "dropout (inactive when sampling)"},
    {"class_cond", "False", FlagType::boolean, FlagGroup::model, "num_classes 1000, null_class false"},
    {"use_checkpoint", "False", FlagType::boolean, FlagGroup::model, "(gradient checkpointing: no effect)"},
    {"use_scale_shift_norm", "True", FlagType::boolean, FlagGroup::model, "use_scale_shift_norm"},
    {"resblock_updown", "False", FlagType::boolean, FlagGroup::model, "resblock_updown"},
    {"use_fp16", "False", FlagType::boolean, FlagGroup::model, "(weights computed in float32, or bf16 with --bf16)"},
    {"use_new_attention_order", "False", FlagType::boolean, FlagGroup::model,
     "use_new_attention_order (super-resolution models: always legacy)"},
    // sr_model_and_diffusion_defaults() -> sr_create_model()
    {"large_size", "256", FlagType::integer, FlagGroup::super_resolution,
     "image_size of the upsampler (channel_mult 1,1,2,2,4,4 for 256 and 512; 1,2,3,4 for 64)"},
    {"small_size", "64", FlagType::integer, FlagGroup::super_resolution, "low_res_size"},
    // classifier_defaults() -> create_classifier()
    {"classifier_use_fp16", "False", FlagType::boolean, FlagGroup::classifier, "(weights computed in float32)"},
    {"classifier_width", "128", FlagType::integer, FlagGroup::classifier, "classifier model_channels"},
    {"classifier_depth", "2", FlagType::integer, FlagGroup::classifier, "classifier num_res_blocks"},
    {"classifier_attention_resolutions", "32,16,8", FlagType::int_list, FlagGroup::classifier,
     "classifier attention_resolutions"},
    {"classifier_use_scale_shift_norm", "True", FlagType::boolean, FlagGroup::classifier,
     "classifier use_scale_shift_norm"},
    {"classifier_resblock_updown", "True", FlagType::boolean, FlagGroup::classifier, "classifier resblock_updown"},
    {"classifier_pool", "attention", FlagType::text, FlagGroup::classifier,
     "classifier pool (attention, adaptive, spatial, spatial_v2)"},
    // diffusion_defaults() -> create_gaussian_diffusion()
    {"learn_sigma", "False", FlagType::boolean, FlagGroup::diffusion,
     "learn_sigma (DDPM: learned-range variance; else fixed-large)"},
    {"diffusion_steps", "1000", FlagType::integer, FlagGroup::diffusion, "--timesteps"},
    {"noise_schedule", "linear", FlagType::text, FlagGroup::diffusion, "--schedule (linear, cosine)"},
    {"timestep_respacing", "", FlagType::text, FlagGroup::diffusion, "--respacing"},
    {"use_kl", "False", FlagType::boolean, FlagGroup::diffusion, "(training loss: no effect)"},
    {"predict_xstart", "False", FlagType::boolean, FlagGroup::diffusion, "must be False (guidiff models predict eps)"},
    {"rescale_timesteps", "False", FlagType::boolean, FlagGroup::diffusion,
     "model time t * 1000 / diffusion_steps (True only with 1000 steps)"},
    {"rescale_learned_sigmas", "False", FlagType::boolean, FlagGroup::diffusion, "(training loss: no effect)"},
    // scripts/*_sample.py
    {"use_ddim", "False", FlagType::boolean, FlagGroup::sampling, "--sampler ddim (True) or ddpm (False)"},
    {"classifier_scale", "1.0", FlagType::number, FlagGroup::sampling, "--classifier-scale"},
    {"clip_denoised", "True", FlagType::boolean, FlagGroup::sampling, "--clip / --no-clip"},
    {"batch_size", "16", FlagType::integer, FlagGroup::sampling, "--batch-size"},
    {"num_samples", "10000", FlagType::integer, FlagGroup::sampling, "--num-samples"},
    {"model_path", "", FlagType::text, FlagGroup::path, "--model"},
    {"classifier_path", "", FlagType::text, FlagGroup::path, "--classifier"},
    {"base_samples", "", FlagType::text, FlagGroup::path, "--base-samples"},
};

constexpr int64_t kImageNetClasses = 1000;    // script_util.NUM_CLASSES
constexpr int64_t kClassifierHeadChannels = 64;  // create_classifier's num_head_channels

const FlagSpec* find_flag(const std::string& name) {
  for (const auto& spec : kFlags) {
    if (name == spec.name) return &spec;
  }
  return nullptr;
}

const FlagSpec& flag_spec(const std::string& name) {
  const FlagSpec* spec = find_flag(name);
  if (spec == nullptr) throw std::logic_error("guided-diffusion flag '" + name + "' is not in the table");
  return *spec;
}

// Levenshtein distance, for "did you mean".
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string unknown_flag_message(const std::string& name, const std::string& source) {
  std::string message = source + ": --" + name + " is not a guided-diffusion sampling flag";
  const FlagSpec* best = nullptr;
  size_t best_distance = 4;
  for (const auto& spec : kFlags) {
    const size_t distance = edit_distance(name, spec.name);
    if (distance < best_distance) {
      best_distance = distance;
      best = &spec;
    }
  }
  if (best != nullptr) message += " (did you mean --" + std::string(best->name) + "?)";
  return message;
}

std::optional<bool> parse_bool(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  if (text == "yes" || text == "true" || text == "t" || text == "y" || text == "1") return true;
  if (text == "no" || text == "false" || text == "f" || text == "n" || text == "0") return false;
  return std::nullopt;
}

std::optional<int64_t> parse_integer(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (*end != '\0' || errno != 0) return std::nullopt;
  return value;
}

std::optional<double> parse_number(const std::string& text) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (*end != '\0' || errno != 0 || !std::isfinite(value)) return std::nullopt;
  return value;
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  std::string part;
  while (std::getline(stream, part, separator)) parts.push_back(part);
  if (!text.empty() && text.back() == separator) parts.push_back("");
  return parts;
}

std::optional<std::vector<int64_t>> parse_int_list(const std::string& text) {
  std::vector<int64_t> values;
  for (const auto& part : split(text, ',')) {
    const auto value = parse_integer(part);
    if (!value) return std::nullopt;
    values.push_back(*value);
  }
  if (values.empty()) return std::nullopt;
  return values;
}

const char* type_words(FlagType type) {
  switch (type) {
    case FlagType::integer: return "an integer";
    case FlagType::number: return "a number";
    case FlagType::boolean: return "True or False";
    case FlagType::int_list: return "comma-separated integers";
    case FlagType::text: return "text";
  }
  return "a value";
}

void check_value(const FlagSpec& spec, const std::string& value, const std::string& source) {
  bool ok = true;
  switch (spec.type) {
    case FlagType::integer: ok = parse_integer(value).has_value(); break;
    case FlagType::number: ok = parse_number(value).has_value(); break;
    case FlagType::boolean: ok = parse_bool(value).has_value(); break;
    case FlagType::int_list: ok = parse_int_list(value).has_value(); break;
    case FlagType::text: break;
  }
  if (!ok) {
    throw InputError(source + ": --" + spec.name + " '" + value + "' must be " + type_words(spec.type));
  }
}

// guided-diffusion's channel_mult for an image size (create_model / create_classifier).
std::vector<double> channel_mult_for(int64_t image_size, const char* flag) {
  switch (image_size) {
    case 512: return {0.5, 1, 1, 2, 2, 4, 4};
    case 256: return {1, 1, 2, 2, 4, 4};
    case 128: return {1, 1, 2, 3, 4};
    case 64: return {1, 2, 3, 4};
    default:
      throw InputError(std::string("--") + flag + " " + std::to_string(image_size) +
                       " has no default channel_mult in guided-diffusion (512, 256, 128 or 64); give --channel_mult");
  }
}

// sr_create_model's channel_mult for the upsampler's (large) size.
std::vector<double> super_resolution_channel_mult(int64_t large_size) {
  switch (large_size) {
    case 512:
    case 256: return {1, 1, 2, 2, 4, 4};
    case 64: return {1, 2, 3, 4};
    default:
      throw InputError("--large_size " + std::to_string(large_size) +
                       " has no channel_mult in guided-diffusion's upsamplers (512, 256 or 64)");
  }
}

// Pixel sides (attention_resolutions flags) are kept as sides: guidiff's config takes them so.
std::vector<int64_t> int_list(const GuidedDiffusionFlags& flags, const std::string& name) {
  return *parse_int_list(flags.text_of(name));
}

// Validates a config built from flags, naming the flags that led to it.
template <typename Config>
void validate_from_flags(const Config& config, const std::string& what) {
  try {
    config.validate();
  } catch (const InputError& error) {
    throw InputError("guided-diffusion flags give an invalid " + what + ": " + error.what());
  }
}

void check_diffusion_flags(const GuidedDiffusionFlags& flags) {
  if (flags.boolean("predict_xstart")) {
    throw InputError("--predict_xstart True: guidiff's denoisers predict eps; such a model cannot be sampled");
  }
  if (flags.boolean("rescale_timesteps") && flags.integer("diffusion_steps") != 1000) {
    throw InputError("--rescale_timesteps True with --diffusion_steps " + std::to_string(flags.integer("diffusion_steps")) +
                     " is not supported (with 1000 steps it changes nothing)");
  }
}

}  // namespace

GuidedDiffusionFlags GuidedDiffusionFlags::parse(const std::string& text, const std::string& source) {
  std::vector<std::string> words;
  {
    std::istringstream stream(text);
    std::string word;
    while (stream >> word) words.push_back(word);
  }
  GuidedDiffusionFlags flags;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& word = words[i];
    if (word.rfind("--", 0) != 0 || word.size() == 2) {
      throw InputError(source + ": expected a flag like --image_size, got '" + word + "'");
    }
    std::string name = word.substr(2);
    std::string value;
    const auto equals = name.find('=');
    if (equals != std::string::npos) {
      value = name.substr(equals + 1);
      name = name.substr(0, equals);
    } else {
      if (i + 1 >= words.size() || words[i + 1].rfind("--", 0) == 0) {
        // argparse would take "--x" as a missing value too (every flag takes one).
        throw InputError(source + ": --" + name + " needs a value");
      }
      value = words[++i];
    }
    const FlagSpec* spec = find_flag(name);
    if (spec == nullptr) throw InputError(unknown_flag_message(name, source));
    if (spec->group == FlagGroup::path) {
      throw InputError(source + ": --" + name + " is a path; give it to guidiff as " + spec->maps_to);
    }
    check_value(*spec, value, source);
    GuidedDiffusionFlags single;
    single.values_[name] = {value, source};
    flags.merge(single);
  }
  return flags;
}

void GuidedDiffusionFlags::merge(const GuidedDiffusionFlags& other) {
  for (const auto& [name, given] : other.values_) {
    const auto existing = values_.find(name);
    if (existing == values_.end()) {
      values_[name] = given;
    } else if (existing->second.value != given.value) {
      throw InputError("--" + name + " is given twice with different values: '" + existing->second.value + "' (" +
                       existing->second.source + ") and '" + given.value + "' (" + given.source + ")");
    }
  }
}

std::string GuidedDiffusionFlags::text() const {
  std::string text;
  for (const auto& spec : kFlags) {
    const auto it = values_.find(spec.name);
    if (it == values_.end()) continue;
    text += (text.empty() ? "--" : " --") + std::string(spec.name) + " " + it->second.value;
  }
  return text;
}

std::string GuidedDiffusionFlags::text_of(const std::string& name) const {
  const FlagSpec& spec = flag_spec(name);
  const auto it = values_.find(name);
  return it == values_.end() ? spec.default_value : it->second.value;
}

int64_t GuidedDiffusionFlags::integer(const std::string& name) const { return *parse_integer(text_of(name)); }
double GuidedDiffusionFlags::number(const std::string& name) const { return *parse_number(text_of(name)); }
bool GuidedDiffusionFlags::boolean(const std::string& name) const { return *parse_bool(text_of(name)); }

UNetConfig unet_config_from_flags(const GuidedDiffusionFlags& flags, bool super_resolution) {
  check_diffusion_flags(flags);
  UNetConfig config;
  config.in_channels = 3;
  if (super_resolution) {
    if (flags.given("image_size")) {
      throw InputError("--image_size does not apply to an upsampler: give --large_size and --small_size");
    }
    if (flags.given("channel_mult") || flags.given("use_new_attention_order")) {
      throw InputError(std::string("--") + (flags.given("channel_mult") ? "channel_mult" : "use_new_attention_order") +
                       " is not a flag of guided-diffusion's upsamplers (sr_create_model fixes it)");
    }
    config.image_size = flags.integer("large_size");
    config.low_res_size = flags.integer("small_size");
    config.channel_mult = super_resolution_channel_mult(config.image_size);
  } else {
    if (flags.given("large_size") || flags.given("small_size")) {
      throw InputError("--large_size / --small_size are an upsampler's flags (guidiff upsample)");
    }
    config.image_size = flags.integer("image_size");
    const std::string mult = flags.text_of("channel_mult");
    if (mult.empty()) {
      config.channel_mult = channel_mult_for(config.image_size, "image_size");
    } else {
      // create_model: int(ch_mult) for each.
      const auto values = parse_int_list(mult);
      if (!values) throw InputError("--channel_mult '" + mult + "' must be comma-separated integers");
      config.channel_mult.assign(values->begin(), values->end());
    }
    config.use_new_attention_order = flags.boolean("use_new_attention_order");
  }
  config.model_channels = flags.integer("num_channels");
  config.num_res_blocks = flags.integer("num_res_blocks");
  config.attention_resolutions = int_list(flags, "attention_resolutions");
  config.dropout = flags.number("dropout");
  config.num_heads = flags.integer("num_heads");
  config.num_head_channels = flags.integer("num_head_channels");
  config.num_heads_upsample = flags.integer("num_heads_upsample");
  config.use_scale_shift_norm = flags.boolean("use_scale_shift_norm");
  config.resblock_updown = flags.boolean("resblock_updown");
  config.conv_resample = true;
  config.norm_groups = 32;  // guided-diffusion's normalization(): GroupNorm32(32, channels)
  config.num_classes = flags.boolean("class_cond") ? kImageNetClasses : 0;
  config.null_class = false;
  config.learn_sigma = flags.boolean("learn_sigma");
  validate_from_flags(config, "UNet");
  return config;
}

ClassifierConfig classifier_config_from_flags(const GuidedDiffusionFlags& flags) {
  ClassifierConfig config;
  config.image_size = flags.integer("image_size");
  config.in_channels = 3;
  config.channel_mult = channel_mult_for(config.image_size, "image_size");
  config.model_channels = flags.integer("classifier_width");
  config.num_res_blocks = flags.integer("classifier_depth");
  config.attention_resolutions = int_list(flags, "classifier_attention_resolutions");
  config.num_heads = 1;  // EncoderUNetModel's default, unused with num_head_channels
  config.num_head_channels = kClassifierHeadChannels;
  config.use_scale_shift_norm = flags.boolean("classifier_use_scale_shift_norm");
  config.resblock_updown = flags.boolean("classifier_resblock_updown");
  config.use_new_attention_order = false;
  config.conv_resample = true;
  config.dropout = 0.0;
  config.norm_groups = 32;
  config.num_classes = kImageNetClasses;
  config.pool = flags.text_of("classifier_pool");
  validate_from_flags(config, "classifier");
  return config;
}

DiffusionSettings diffusion_settings_from_flags(const GuidedDiffusionFlags& flags) {
  check_diffusion_flags(flags);
  DiffusionSettings settings;
  try {
    settings.schedule = parse_beta_schedule(flags.text_of("noise_schedule"));
  } catch (const InputError& error) {
    throw InputError("--noise_schedule: " + std::string(error.what()));
  }
  settings.timesteps = flags.integer("diffusion_steps");
  check_timestep_count(settings.timesteps, "--diffusion_steps");
  settings.fixed_variance = VarianceKind::fixed_large;  // create_gaussian_diffusion: sigma_small False
  return settings;
}

GuidedDiffusionSampling sampling_from_flags(const GuidedDiffusionFlags& flags) {
  GuidedDiffusionSampling sampling;
  if (flags.given("timestep_respacing")) sampling.timestep_respacing = flags.text_of("timestep_respacing");
  if (flags.given("use_ddim")) sampling.use_ddim = flags.boolean("use_ddim");
  if (flags.given("classifier_scale")) sampling.classifier_scale = flags.number("classifier_scale");
  if (flags.given("clip_denoised")) sampling.clip_denoised = flags.boolean("clip_denoised");
  if (flags.given("batch_size")) sampling.batch_size = flags.integer("batch_size");
  if (flags.given("num_samples")) sampling.num_samples = flags.integer("num_samples");
  return sampling;
}

std::vector<std::vector<std::string>> guided_diffusion_flag_table() {
  std::vector<std::vector<std::string>> rows;
  for (const auto& spec : kFlags) rows.push_back({spec.name, spec.default_value, spec.maps_to});
  return rows;
}

}  // namespace guidiff
