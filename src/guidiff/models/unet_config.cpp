// UNet and classifier configurations: validation and JSON (see unet_config.hpp).
#include "guidiff/models/unet_config.hpp"

#include <algorithm>
#include <cmath>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

[[noreturn]] void field_fails(const std::string& context, const char* field,
                              const std::string& what) {
  throw InputError(context + ": field \"" + field + "\" " + what);
}

// JSON's spelling of a number ("0.5", "1.0"), as the config file writes it.
std::string json_number(double value) { return nlohmann::json(value).dump(); }

template <typename Number>
std::string list_string(const std::vector<Number>& values) {
  std::string text = "[";
  for (size_t i = 0; i < values.size(); ++i) text += (i ? ", " : "") + json_number(values[i]);
  return text + "]";
}

// Whole multipliers as JSON integers, so configs written before fractions were allowed stay
// byte for byte the same.
nlohmann::json multipliers_json(const std::vector<double>& values) {
  nlohmann::json list = nlohmann::json::array();
  for (const double value : values) {
    if (value == std::floor(value) && std::abs(value) < 1e15) {
      list.push_back(static_cast<int64_t>(value));
    } else {
      list.push_back(value);
    }
  }
  return list;
}

void require_positive(const std::string& context, const char* field, int64_t value) {
  if (value <= 0) field_fails(context, field, "must be > 0, got " + std::to_string(value));
}

}  // namespace

int64_t UNetBackboneConfig::level_channels(int64_t level) const {
  return static_cast<int64_t>(channel_mult[static_cast<size_t>(level)] * static_cast<double>(model_channels));
}

std::vector<int64_t> UNetBackboneConfig::attention_downsample_rates() const {
  std::vector<int64_t> rates;
  for (const int64_t resolution : attention_resolutions) {
    if (resolution > 0 && image_size % resolution == 0) rates.push_back(image_size / resolution);
  }
  return rates;
}

void UNetBackboneConfig::validate(const std::string& context) const {
  require_positive(context, "image_size", image_size);
  require_positive(context, "in_channels", in_channels);
  require_positive(context, "model_channels", model_channels);
  require_positive(context, "num_res_blocks", num_res_blocks);
  if (channel_mult.empty()) field_fails(context, "channel_mult", "must list at least one level");
  for (const double mult : channel_mult) {
    const double channels = mult * static_cast<double>(model_channels);
    if (!(mult > 0) || !std::isfinite(mult) || channels != std::floor(channels)) {
      field_fails(context, "channel_mult",
                  "must hold positive multipliers giving whole channel counts with model_channels " +
                      std::to_string(model_channels) + ", got " + list_string(channel_mult));
    }
  }
  // Every level but the last halves the image; the up path must land on the same sizes.
  const int64_t bottom_rate = int64_t{1} << (num_levels() - 1);
  if (image_size % bottom_rate != 0) {
    field_fails(context, "image_size",
                std::to_string(image_size) + " is not divisible by " + std::to_string(bottom_rate) +
                    " (2^(levels-1) for channel_mult " + list_string(channel_mult) + ")");
  }
  for (const int64_t resolution : attention_resolutions) {
    const bool divides = resolution > 0 && image_size % resolution == 0;
    const int64_t rate = divides ? image_size / resolution : 0;
    if (!divides || (rate & (rate - 1)) != 0 || rate > bottom_rate) {
      field_fails(context, "attention_resolutions",
                  "holds " + std::to_string(resolution) +
                      ", which is not a feature-map side of this model (" +
                      std::to_string(image_size) + " halved up to " +
                      std::to_string(num_levels() - 1) + " times)");
    }
  }
  if (!(dropout >= 0.0 && dropout < 1.0))
    field_fails(context, "dropout", "must be in [0, 1), got " + std::to_string(dropout));
  require_positive(context, "num_heads", num_heads);
  if (num_head_channels != -1 && num_head_channels <= 0) {
    field_fails(context, "num_head_channels",
                "must be -1 (use num_heads) or > 0, got " + std::to_string(num_head_channels));
  }
  require_positive(context, "norm_groups", norm_groups);
  try {
    time.validate();
  } catch (const InputError& error) {
    throw InputError(context + ": fields \"lambda_min\"/\"lambda_max\": " + error.what());
  }
}

void UNetBackboneConfig::read(ConfigFields& fields) {
  fields.read("image_size", image_size);
  fields.read("in_channels", in_channels);
  fields.read("model_channels", model_channels);
  fields.read("channel_mult", channel_mult);
  fields.read("num_res_blocks", num_res_blocks);
  fields.read("attention_resolutions", attention_resolutions);
  fields.read("dropout", dropout);
  fields.read("conv_resample", conv_resample);
  fields.read("num_heads", num_heads);
  fields.read("num_head_channels", num_head_channels);
  fields.read("use_scale_shift_norm", use_scale_shift_norm);
  fields.read("resblock_updown", resblock_updown);
  fields.read("use_new_attention_order", use_new_attention_order);
  fields.read("norm_groups", norm_groups);
  time.read(fields);
}

void UNetBackboneConfig::write(nlohmann::json& object) const {
  object["image_size"] = image_size;
  object["in_channels"] = in_channels;
  object["model_channels"] = model_channels;
  object["channel_mult"] = multipliers_json(channel_mult);
  object["num_res_blocks"] = num_res_blocks;
  object["attention_resolutions"] = attention_resolutions;
  object["dropout"] = dropout;
  object["conv_resample"] = conv_resample;
  object["num_heads"] = num_heads;
  object["num_head_channels"] = num_head_channels;
  object["use_scale_shift_norm"] = use_scale_shift_norm;
  object["resblock_updown"] = resblock_updown;
  object["use_new_attention_order"] = use_new_attention_order;
  object["norm_groups"] = norm_groups;
  time.write(object);
}

void UNetConfig::validate() const {
  const std::string context = "unet config";
  UNetBackboneConfig::validate(context);
  if (num_classes < 0)
    field_fails(context, "num_classes",
                "must be >= 0 (0: unconditional), got " + std::to_string(num_classes));
  if (num_heads_upsample != -1 && num_heads_upsample <= 0) {
    field_fails(context, "num_heads_upsample",
                "must be -1 (use num_heads) or > 0, got " + std::to_string(num_heads_upsample));
  }
  if (low_res_size < 0) {
    field_fails(context, "low_res_size",
                "must be >= 0 (0: not a super-resolution model), got " + std::to_string(low_res_size));
  }
}

void ClassifierConfig::validate() const {
  const std::string context = "classifier config";
  UNetBackboneConfig::validate(context);
  require_positive(context, "num_classes", num_classes);
  if (pool != "attention" && pool != "adaptive" && pool != "spatial" && pool != "spatial_v2") {
    field_fails(context, "pool",
                "must be \"attention\", \"adaptive\", \"spatial\" or \"spatial_v2\", got \"" + pool + "\"");
  }
}

void to_json(nlohmann::json& object, const UNetConfig& config) {
  object = nlohmann::json::object();
  config.write(object);
  object["num_classes"] = config.num_classes;
  object["learn_sigma"] = config.learn_sigma;
  // Fields added for guided-diffusion's models, written only when they differ from the
  // defaults so guidiff's own configs keep their exact text.
  if (!config.null_class) object["null_class"] = false;
  if (config.num_heads_upsample != -1) object["num_heads_upsample"] = config.num_heads_upsample;
  if (config.low_res_size != 0) object["low_res_size"] = config.low_res_size;
}

void from_json(const nlohmann::json& object, UNetConfig& config) {
  ConfigFields fields(object, "unet config");
  UNetConfig result;
  result.read(fields);
  fields.read("num_classes", result.num_classes);
  fields.read("learn_sigma", result.learn_sigma);
  fields.read("null_class", result.null_class);
  fields.read("num_heads_upsample", result.num_heads_upsample);
  fields.read("low_res_size", result.low_res_size);
  fields.reject_unknown();
  result.validate();
  config = std::move(result);
}

void to_json(nlohmann::json& object, const ClassifierConfig& config) {
  object = nlohmann::json::object();
  config.write(object);
  object["num_classes"] = config.num_classes;
  object["pool"] = config.pool;
}

void from_json(const nlohmann::json& object, ClassifierConfig& config) {
  ConfigFields fields(object, "classifier config");
  ClassifierConfig result;
  result.read(fields);
  fields.read("num_classes", result.num_classes);
  fields.read("pool", result.pool);
  fields.reject_unknown();
  result.validate();
  config = std::move(result);
}

}  // namespace guidiff
