// How a network is conditioned. Time: the model's time input (a discrete timestep or a
// log-SNR lambda) becomes one number per sample, which the sinusoidal embedding turns into
// features. Class: labels 0..C-1 plus the null class C (one extra embedding row).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>

#include "guidiff/models/config_fields.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"
#include "guidiff/schedule/noise_level.hpp"

namespace guidiff {

struct TimeInputConfig {
  TimeKind kind = TimeKind::discrete_timestep;
  LogSnrSchedule log_snr;  // the lambda range mapped onto [0, 1000]; log_snr only

  // Throws InputError naming lambda_min / lambda_max for an empty or non-finite range.
  void validate() const;

  // The embedding's time t', float32 [N], on time's device: a discrete timestep as is; a
  // log-SNR lambda as t' = 1000 (lambda_max - lambda) / (lambda_max - lambda_min), so the
  // cleanest level maps to 0 and the noisiest to 1000, the range of the timesteps that the
  // sinusoidal embedding was designed for. Throws InputError naming "time" unless it is
  // [batch] with an integer dtype (discrete) or a floating dtype (log-SNR).
  torch::Tensor embedding_time(const torch::Tensor& time, int64_t batch) const;

  // JSON fields "time_input" ("discrete_timestep" | "log_snr"), "lambda_min", "lambda_max".
  void read(ConfigFields& fields);
  void write(nlohmann::json& object) const;
};

// The transformer / DDPM sinusoidal embedding of t' (float [N]) -> [N, dim]:
// [cos(t' f_0), ..., cos(t' f_{h-1}), sin(t' f_0), ..., sin(t' f_{h-1})] with h = dim / 2,
// f_i = max_period^(-i / h), and a zero column appended when dim is odd (the layout of
// guided-diffusion's timestep_embedding, so its weights fit).
torch::Tensor sinusoidal_embedding(const torch::Tensor& t, int64_t dim,
                                   double max_period = 10000.0);

// The class labels a conditional network embeds, int64 [batch] on `device`: y itself
// (checked to be [batch] integers in [0, num_classes]), or all num_classes (the null class)
// when y is undefined. A network without a null class (has_null_class false, e.g.
// guided-diffusion's) needs y, in [0, num_classes). Throws InputError naming "y".
torch::Tensor class_labels_or_null(const torch::Tensor& y, int64_t num_classes, int64_t batch,
                                   const torch::Device& device, bool has_null_class = true);

}  // namespace guidiff
