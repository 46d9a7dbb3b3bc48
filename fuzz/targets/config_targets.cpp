// Fuzz targets of the JSON configs: model configs (every kind) and training options.
#include <nlohmann/json.hpp>
#include <string_view>

#include "../fuzz_target.hpp"
#include "guidiff/models/cnn_classifier.hpp"
#include "guidiff/models/mlp.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/unet_config.hpp"
#include "guidiff/training/trainer.hpp"

namespace guidiff::fuzz {
namespace {

// Whether the network a config asks for is small enough to build for every input (building
// allocates and initialises what the config asks for: a valid config of a huge network is
// the user's request, not a reader bug). Fields of the wrong type count as small: the
// config reader rejects them before anything is allocated.
bool small_network(const nlohmann::json& config) {
  if (!config.is_object()) return true;
  const auto at_most = [&](const char* key, int64_t limit) {
    const auto it = config.find(key);
    if (it == config.end() || !it->is_number_integer()) return true;
    return it->get<int64_t>() <= limit;
  };
  const auto list_at_most = [&](const char* key, size_t length, int64_t limit) {
    const auto it = config.find(key);
    if (it == config.end() || !it->is_array()) return true;
    if (it->size() > length) return false;
    for (const auto& item : *it) {
      if (item.is_number_integer() && item.get<int64_t>() > limit) return false;
    }
    return true;
  };
  // Defaults above these bounds (the UNet's 64 channels, the MLP's 128) must be overridden.
  const auto given = [&](const char* key) { return config.contains(key); };
  const auto kind_field = config.find("kind");
  const std::string kind = kind_field != config.end() && kind_field->is_string() ? kind_field->get<std::string>() : "";
  if (kind == "unet" || kind == "encoder_unet") {
    return given("model_channels") && at_most("model_channels", 32) && list_at_most("channel_mult", 4, 4) &&
           at_most("num_res_blocks", 2) && at_most("image_size", 64) && at_most("num_classes", 1000) &&
           at_most("in_channels", 16);
  }
  if (kind == "mlp_denoiser" || kind == "mlp_classifier") {
    return at_most("hidden_channels", 256) && at_most("num_blocks", 8) && at_most("time_channels", 256) &&
           at_most("data_dim", 1024) && at_most("num_classes", 1000);
  }
  if (kind == "cnn_classifier") {
    return list_at_most("channels", 4, 64) && at_most("convs_per_stage", 2) && at_most("image_size", 64) &&
           at_most("num_classes", 1000) && at_most("in_channels", 16);
  }
  return true;  // an unknown kind is rejected before building
}

// What build_model checks before it allocates, for configs too large to build per input.
void parse_and_validate(const nlohmann::json& config) {
  const std::string kind = config.at("kind").get<std::string>();
  nlohmann::json fields = config;
  fields.erase("kind");
  if (kind == "unet") {
    fields.get<UNetConfig>();
  } else if (kind == "encoder_unet") {
    fields.get<ClassifierConfig>();
  } else if (kind == "cnn_classifier") {
    fields.get<CnnClassifierConfig>().validate();
  } else {
    fields.get<MlpConfig>().validate(kind + " config", kind == "mlp_classifier");
  }
}

}  // namespace

// The config file of a saved model, read as `guidiff sample --model` reads it: load_model
// parses it, builds the network and only then looks for the (absent) weights.
void fuzz_model_config(std::string_view input) {
  const std::string prefix = scratch_path("model");
  write_scratch_file(prefix + ".json", input);
  const nlohmann::json parsed = nlohmann::json::parse(input.begin(), input.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded() || small_network(parsed)) {
    load_model(prefix);  // FileError at the latest for the missing weights
    return;
  }
  parse_and_validate(parsed);
}

void fuzz_training_options(std::string_view input) {
  const nlohmann::json parsed = nlohmann::json::parse(input.begin(), input.end(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) return;  // nlohmann's parser is fuzzed upstream
  TrainingOptions options = TrainingOptions::from_json(parsed);
  options.out_dir = "unused";
  options.validate();
}

}  // namespace guidiff::fuzz
