// The one map from a model's time input to its noise level abar = alpha^2.
#pragma once
#include <torch/torch.h>

#include "guidiff/schedule/discrete_schedule.hpp"

namespace guidiff {

// What a model's time input means.
enum class TimeKind {
  discrete_timestep,  // int64 [N], original timesteps in [0, T) (respacing maps to these)
  log_snr,            // float32 [N], lambda of the continuous-time process (Ho & Salimans)
};

// The time kind as error messages name it.
inline std::string time_kind_name(TimeKind kind) {
  return kind == TimeKind::discrete_timestep ? "discrete timesteps" : "log-SNR (continuous) time";
}

class NoiseLevelMap {
 public:
  // Discrete time: abar = original.alphas_cumprod[t]. `original` must be unrespaced.
  static NoiseLevelMap discrete(const DiscreteSchedule& original);
  // Continuous time: abar = sigmoid(lambda).
  static NoiseLevelMap log_snr();

  TimeKind kind() const { return kind_; }
  // abar per sample, float64 [N] on time's device. Throws InputError for a timestep
  // outside [0, T) or a non-finite lambda.
  torch::Tensor alpha_squared(const torch::Tensor& time) const;
  // sqrt(1 - abar) per sample, float64 [N]: the factor of Algorithm 2 / the score view.
  torch::Tensor sigma(const torch::Tensor& time) const;
  // sqrt((1 - abar) / abar) per sample, float64 [N]: the EDM noise level (Karras et al. 2022)
  // the few-step samplers and the guidance interval in sigma use.
  torch::Tensor edm_sigma(const torch::Tensor& time) const;

 private:
  TimeKind kind_ = TimeKind::discrete_timestep;
  torch::Tensor alphas_cumprod_;  // float64 [T], discrete only
};

}  // namespace guidiff
