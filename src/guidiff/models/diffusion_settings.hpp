// What sampling needs to know of the diffusion process a model was trained with: the beta
// schedule, its length, and the DDPM variance when the model does not learn it. Stored in a
// model's JSON config file under "diffusion".
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"

namespace guidiff {

// The diffusion process a model was trained with, as far as sampling needs it (known for
// guided-diffusion's models, from their flags).
struct DiffusionSettings {
  BetaScheduleKind schedule = BetaScheduleKind::linear;  // --noise_schedule
  int64_t timesteps = 1000;                               // --diffusion_steps
  // DDPM variance of a model that does not learn it: guided-diffusion's FIXED_LARGE. (With
  // learn_sigma the model's output is used, learned range.)
  VarianceKind fixed_variance = VarianceKind::fixed_large;

  // {"noise_schedule", "diffusion_steps", "fixed_variance"}; from_json throws InputError
  // naming the field.
  nlohmann::json to_json() const;
  static DiffusionSettings from_json(const nlohmann::json& object, const std::string& context);
};

}  // namespace guidiff
