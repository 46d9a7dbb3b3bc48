// Diffusion settings and their JSON form (see diffusion_settings.hpp).
#include "guidiff/models/diffusion_settings.hpp"

#include "guidiff/core/errors.hpp"
#include "guidiff/core/json_integer.hpp"

namespace guidiff {
namespace {

const char* variance_name(VarianceKind kind) {
  switch (kind) {
    case VarianceKind::fixed_small: return "fixed-small";
    case VarianceKind::fixed_large: return "fixed-large";
    case VarianceKind::learned_range: return "learned-range";
  }
  return "fixed-large";
}

}  // namespace

nlohmann::json DiffusionSettings::to_json() const {
  return {{"noise_schedule", to_string(schedule)},
          {"diffusion_steps", timesteps},
          {"fixed_variance", variance_name(fixed_variance)}};
}

DiffusionSettings DiffusionSettings::from_json(const nlohmann::json& object, const std::string& context) {
  const auto field_error = [&](const char* field, const std::string& what) {
    return InputError(context + ": diffusion field \"" + field + "\" " + what);
  };
  if (!object.is_object()) throw InputError(context + ": \"diffusion\" must be an object");
  DiffusionSettings settings;
  for (const auto& item : object.items()) {
    const std::string& key = item.key();
    const auto& value = item.value();
    if (key == "noise_schedule") {
      if (!value.is_string()) throw field_error("noise_schedule", "must be a string");
      try {
        settings.schedule = parse_beta_schedule(value.get<std::string>());
      } catch (const InputError& error) {
        throw field_error("noise_schedule", error.what());
      }
    } else if (key == "diffusion_steps") {
      if (!json_integer_fits<int64_t>(value) || value.get<int64_t>() < 1) throw field_error("diffusion_steps", "must be an integer >= 1");
      settings.timesteps = value.get<int64_t>();
    } else if (key == "fixed_variance") {
      if (!value.is_string()) throw field_error("fixed_variance", "must be a string");
      const auto kind = parse_variance_kind(value.get<std::string>());
      if (kind == VarianceKind::learned_range) throw field_error("fixed_variance", "must be fixed-small or fixed-large");
      settings.fixed_variance = kind;
    } else {
      throw InputError(context + ": unknown diffusion field \"" + key + "\"");
    }
  }
  return settings;
}

}  // namespace guidiff
