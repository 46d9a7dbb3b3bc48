// Noise levels as sigma, the few-step samplers' time: x / sqrt(abar) = x0 + sigma n with
// sigma = sqrt((1 - abar) / abar) (Karras et al. 2022, "EDM", Table 1, VP column), and the
// spacings of the sigmas a sampler steps through.
#pragma once
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"
#include "guidiff/schedule/noise_level.hpp"

namespace guidiff {

// sigma = sqrt((1 - abar) / abar).
double sigma_of_alpha_bar(double alpha_bar);

// The noise levels a model was trained on and the map from a sigma to the model's time input.
class ModelSigmas {
 public:
  // A discrete-time model trained on `original` (unrespaced): sigma_t for t in [0, T).
  static ModelSigmas discrete(const DiscreteSchedule& original);
  // A log-SNR model over [lambda_min, lambda_max]: sigma = exp(-lambda / 2).
  static ModelSigmas log_snr(const LogSnrSchedule& range);

  TimeKind kind() const { return kind_; }
  double sigma_min() const;
  double sigma_max() const;
  // Discrete: the timestep whose sigma_t is nearest in log sigma, k-diffusion's
  // DiscreteSchedule.sigma_to_t(quantize=True) (a discrete model takes integer t only).
  int64_t nearest_timestep(double sigma) const;
  // The model's time at `sigma` for `rows` samples: discrete, int64 nearest_timestep(sigma);
  // log-SNR, lambda = -2 log sigma in `lambda_dtype` (the model input's float type).
  torch::Tensor time_for(double sigma, int64_t rows, torch::ScalarType lambda_dtype) const;
  // Discrete: sigma_t of the nearest timestep; log-SNR: sigma itself.
  double snap(double sigma) const;
  // Discrete: sigma_t, ascending in t. Empty for log-SNR.
  const std::vector<double>& timestep_sigmas() const { return sigmas_; }
  const LogSnrSchedule& log_snr_range() const { return range_; }

 private:
  TimeKind kind_ = TimeKind::discrete_timestep;
  std::vector<double> sigmas_;
  LogSnrSchedule range_;
};

enum class SigmaSpacing { karras, timesteps, log_snr };

// EDM's sampling range (Karras et al. 2022, Sec. 5): the karras and log-snr spacings run over
// [max(sigma_min, 0.002), min(sigma_max, 80)] of the model. A model's training range can be far
// wider (log-SNR models: lambda in [-20, 20], sigma from 4.5e-5 to 22026; the cosine schedule's
// last timestep), and spreading few steps over it wastes them where nothing changes and makes
// the last steps so long in log sigma that multistep extrapolation breaks down.
constexpr double kEdmSigmaMin = 0.002;
constexpr double kEdmSigmaMax = 80.0;
// The range the karras and log-snr spacings use (the model's own where it lies inside EDM's).
std::pair<double, double> spaced_range(const ModelSigmas& model);
SigmaSpacing parse_sigma_spacing(const std::string& name);  // "karras" | "timesteps" | "log-snr"
std::string to_string(SigmaSpacing spacing);

// The levels a sampler steps through, noisiest first, ending with 0 (steps + 1 values):
//   karras:    EDM eq. 5, (s_max^(1/rho) + i/(steps-1) (s_min^(1/rho) - s_max^(1/rho)))^rho
//              over spaced_range;
//   timesteps: discrete, the timesteps of guided-diffusion's respacing (`respacing`, or
//              `steps` evenly spaced with both ends, the section rule "N"); log-SNR, the
//              levels lambda(u_i), u_i = 1 - i/steps, of the continuous sampler;
//   log-snr:   uniform in lambda = -log sigma over spaced_range (Lu et al. 2022).
// For a discrete model every level is snapped to the nearest sigma_t, and a level repeated
// by the snapping is kept once (so a discrete model gets at most T steps).
// Throws InputError for steps < 1, a respacing with another spacing or model, or rho <= 0.
std::vector<double> make_sigmas(SigmaSpacing spacing, const ModelSigmas& model, int64_t steps,
                                const std::string& respacing = "", double rho = 7.0);

// What a sigma-space sampler runs over: the model's levels and the sigmas to step through.
struct SigmaSchedule {
  ModelSigmas model;
  std::vector<double> sigmas;  // strictly decreasing, positive, then a final 0
  int64_t num_steps() const { return static_cast<int64_t>(sigmas.size()) - 1; }
  // Throws InputError unless sigmas is as described (named for `sampler`).
  void validate(const std::string& sampler) const;
};

}  // namespace guidiff
