// The map from a model's time input to its noise level abar (see noise_level.hpp).
#include "guidiff/schedule/noise_level.hpp"

#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"

namespace guidiff {
namespace {

// lambda as float64, or InputError if any entry is NaN or infinite.
torch::Tensor checked_log_snr(const torch::Tensor& time) {
  const auto lambda = time.to(torch::kFloat64);
  if (!torch::isfinite(lambda).all().item<bool>()) {
    throw InputError("log-SNR time (lambda) contains a non-finite value");
  }
  return lambda;
}

}  // namespace

NoiseLevelMap NoiseLevelMap::discrete(const DiscreteSchedule& original) {
  // Models see original timesteps, so the lookup table must be the unrespaced schedule.
  if (!original.alphas_cumprod.defined() ||
      original.num_steps() != original.original_num_timesteps) {
    throw InputError("NoiseLevelMap::discrete needs the unrespaced schedule (got " +
                     std::to_string(original.alphas_cumprod.defined() ? original.num_steps() : 0) +
                     " of " + std::to_string(original.original_num_timesteps) + " steps)");
  }
  NoiseLevelMap map;
  map.kind_ = TimeKind::discrete_timestep;
  map.alphas_cumprod_ = original.alphas_cumprod.to(torch::kCPU, torch::kFloat64).contiguous();
  return map;
}

NoiseLevelMap NoiseLevelMap::log_snr() {
  NoiseLevelMap map;
  map.kind_ = TimeKind::log_snr;
  return map;
}

torch::Tensor NoiseLevelMap::alpha_squared(const torch::Tensor& time) const {
  if (!time.defined()) throw InputError("model time tensor is undefined");
  if (kind_ == TimeKind::log_snr) {
    return alpha_squared_of_log_snr(checked_log_snr(time));  // Ho & Salimans: sigmoid(lambda)
  }
  if (!alphas_cumprod_.defined()) {
    throw InputError("NoiseLevelMap was default-constructed: use discrete(schedule) or log_snr()");
  }
  if (time.is_floating_point() || time.is_complex()) {
    throw InputError("discrete timestep tensor must be integer (got " +
                     std::string(c10::toString(time.scalar_type())) + ")");
  }
  const auto t = time.to(torch::kCPU, torch::kInt64);
  const int64_t T = alphas_cumprod_.size(0);
  if (t.numel() > 0) {
    const int64_t low = t.min().item<int64_t>();
    const int64_t high = t.max().item<int64_t>();
    if (low < 0 || high >= T) {
      throw InputError("timestep " + std::to_string(low < 0 ? low : high) + " is outside [0, " +
                       std::to_string(T) + ")");
    }
  }
  return alphas_cumprod_.index_select(0, t.flatten()).reshape(t.sizes()).to(time.device());
}

torch::Tensor NoiseLevelMap::sigma(const torch::Tensor& time) const {
  if (kind_ == TimeKind::log_snr) {
    // sigma^2 = sigmoid(-lambda) directly: no cancellation in 1 - abar when abar -> 1.
    if (!time.defined()) throw InputError("model time tensor is undefined");
    return sigma_squared_of_log_snr(checked_log_snr(time)).sqrt();
  }
  return (1.0 - alpha_squared(time)).sqrt();
}

torch::Tensor NoiseLevelMap::edm_sigma(const torch::Tensor& time) const {
  if (kind_ == TimeKind::log_snr) {
    // sigma^2 / alpha^2 = exp(-lambda): exact at both ends of the range.
    if (!time.defined()) throw InputError("model time tensor is undefined");
    return (-0.5 * checked_log_snr(time)).exp();
  }
  const auto abar = alpha_squared(time);
  return ((1.0 - abar) / abar).sqrt();
}

}  // namespace guidiff
