// Noise levels in sigma and sigma spacings (see sigma_schedule.hpp and docs/samplers.md).
#include "guidiff/schedule/sigma_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {
namespace {

// EDM eq. 5: rho-spaced from sigma_max down to sigma_min.
std::vector<double> karras_levels(double sigma_min, double sigma_max, int64_t steps, double rho) {
  const double min_inv_rho = std::pow(sigma_min, 1.0 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> levels;
  for (int64_t i = 0; i < steps; ++i) {
    const double ramp = steps == 1 ? 0.0 : double(i) / double(steps - 1);
    levels.push_back(std::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho));
  }
  return levels;
}

// Uniform in lambda = -log sigma from sigma_max down to sigma_min.
std::vector<double> log_snr_levels(double sigma_min, double sigma_max, int64_t steps) {
  std::vector<double> levels;
  for (int64_t i = 0; i < steps; ++i) {
    const double ramp = steps == 1 ? 0.0 : double(i) / double(steps - 1);
    levels.push_back(std::exp(std::log(sigma_max) + ramp * (std::log(sigma_min) - std::log(sigma_max))));
  }
  return levels;
}

// The model's own grid: respaced timesteps (discrete) or the continuous sampler's u_i.
std::vector<double> timestep_levels(const ModelSigmas& model, int64_t steps, const std::string& respacing) {
  std::vector<double> levels;
  if (model.kind() == TimeKind::discrete_timestep) {
    const int64_t T = static_cast<int64_t>(model.timestep_sigmas().size());
    const std::vector<int64_t> kept = parse_respacing(respacing.empty() ? std::to_string(steps) : respacing, T);
    for (auto t = kept.rbegin(); t != kept.rend(); ++t) levels.push_back(model.timestep_sigmas()[*t]);
    return levels;
  }
  // lambda(u_i) with u_i = 1 - i/steps, i = 0..steps-1: sigma = exp(-lambda / 2).
  const torch::Tensor u = 1.0 - torch::arange(steps, torch::kDouble) / static_cast<double>(steps);
  const torch::Tensor lambdas = model.log_snr_range().lambda_of_u(u).contiguous();
  for (int64_t i = 0; i < steps; ++i) levels.push_back(std::exp(-0.5 * lambdas[i].item<double>()));
  return levels;
}

}  // namespace

double sigma_of_alpha_bar(double alpha_bar) { return std::sqrt((1.0 - alpha_bar) / alpha_bar); }

ModelSigmas ModelSigmas::discrete(const DiscreteSchedule& original) {
  if (!original.alphas_cumprod.defined() || original.num_steps() != original.original_num_timesteps) {
    throw InputError("ModelSigmas::discrete needs the unrespaced schedule");
  }
  ModelSigmas sigmas;
  sigmas.kind_ = TimeKind::discrete_timestep;
  const auto abar = original.alphas_cumprod.to(torch::kDouble).contiguous();
  for (int64_t t = 0; t < abar.size(0); ++t) sigmas.sigmas_.push_back(sigma_of_alpha_bar(abar[t].item<double>()));
  return sigmas;
}

ModelSigmas ModelSigmas::log_snr(const LogSnrSchedule& range) {
  range.validate();
  ModelSigmas sigmas;
  sigmas.kind_ = TimeKind::log_snr;
  sigmas.range_ = range;
  return sigmas;
}

// lambda = log(alpha^2 / sigma_vp^2) = -2 log sigma, so sigma = exp(-lambda / 2).
double ModelSigmas::sigma_min() const {
  return kind_ == TimeKind::log_snr ? std::exp(-0.5 * range_.lambda_max) : sigmas_.front();
}
double ModelSigmas::sigma_max() const {
  return kind_ == TimeKind::log_snr ? std::exp(-0.5 * range_.lambda_min) : sigmas_.back();
}

int64_t ModelSigmas::nearest_timestep(double sigma) const {
  if (kind_ != TimeKind::discrete_timestep) throw InputError("nearest_timestep: the model takes log-SNR time");
  if (!(sigma > 0.0) || !std::isfinite(sigma)) {
    throw InputError("nearest_timestep: sigma must be positive and finite, got " + number_string(sigma));
  }
  // sigma_t increases with t: the neighbours of sigma in the sorted list, compared in log sigma.
  const auto upper = std::lower_bound(sigmas_.begin(), sigmas_.end(), sigma);
  if (upper == sigmas_.begin()) return 0;
  if (upper == sigmas_.end()) return static_cast<int64_t>(sigmas_.size()) - 1;
  const auto lower = upper - 1;
  const bool take_upper = std::log(*upper) - std::log(sigma) < std::log(sigma) - std::log(*lower);
  return static_cast<int64_t>((take_upper ? upper : lower) - sigmas_.begin());
}

torch::Tensor ModelSigmas::time_for(double sigma, int64_t rows, torch::ScalarType lambda_dtype) const {
  if (kind_ == TimeKind::discrete_timestep) return torch::full({rows}, nearest_timestep(sigma), torch::kLong);
  return torch::full({rows}, -2.0 * std::log(sigma), torch::dtype(lambda_dtype));
}

double ModelSigmas::snap(double sigma) const {
  return kind_ == TimeKind::discrete_timestep ? sigmas_[static_cast<size_t>(nearest_timestep(sigma))] : sigma;
}

SigmaSpacing parse_sigma_spacing(const std::string& name) {
  if (name == "karras") return SigmaSpacing::karras;
  if (name == "timesteps") return SigmaSpacing::timesteps;
  if (name == "log-snr") return SigmaSpacing::log_snr;
  throw InputError("unknown --sigmas '" + name + "' (expected karras, timesteps or log-snr)");
}

std::string to_string(SigmaSpacing spacing) {
  switch (spacing) {
    case SigmaSpacing::karras: return "karras";
    case SigmaSpacing::timesteps: return "timesteps";
    case SigmaSpacing::log_snr: return "log-snr";
  }
  return "unknown";
}

std::pair<double, double> spaced_range(const ModelSigmas& model) {
  const double low = std::max(model.sigma_min(), kEdmSigmaMin), high = std::min(model.sigma_max(), kEdmSigmaMax);
  return low < high ? std::make_pair(low, high) : std::make_pair(model.sigma_min(), model.sigma_max());
}

std::vector<double> make_sigmas(SigmaSpacing spacing, const ModelSigmas& model, int64_t steps,
                                const std::string& respacing, double rho) {
  if (!respacing.empty() && (spacing != SigmaSpacing::timesteps || model.kind() != TimeKind::discrete_timestep)) {
    throw InputError("--respacing applies to --sigmas timesteps with a discrete-time model");
  }
  if (respacing.empty() && steps < 1) throw InputError("--steps must be >= 1, got " + std::to_string(steps));
  if (!(rho > 0.0) || !std::isfinite(rho)) throw InputError("the Karras rho must be positive, got " + number_string(rho));
  const auto [low, high] = spaced_range(model);
  std::vector<double> levels;
  switch (spacing) {
    case SigmaSpacing::karras: levels = karras_levels(low, high, steps, rho); break;
    case SigmaSpacing::log_snr: levels = log_snr_levels(low, high, steps); break;
    case SigmaSpacing::timesteps: levels = timestep_levels(model, steps, respacing); break;
  }
  std::vector<double> sigmas;
  for (const double level : levels) {
    const double snapped = model.snap(level);
    if (sigmas.empty() || snapped < sigmas.back()) sigmas.push_back(snapped);
  }
  sigmas.push_back(0.0);
  return sigmas;
}

void SigmaSchedule::validate(const std::string& sampler) const {
  if (sigmas.size() < 2 || sigmas.back() != 0.0) {
    throw InputError(sampler + " sampler: the sigmas must be at least one level followed by 0");
  }
  for (size_t i = 0; i + 1 < sigmas.size(); ++i) {
    if (!(sigmas[i] > sigmas[i + 1]) || !std::isfinite(sigmas[i])) {
      throw InputError(sampler + " sampler: the sigmas must be finite and strictly decreasing (" +
                       number_string(sigmas[i]) + " then " + number_string(sigmas[i + 1]) + ")");
    }
  }
  if (model.kind() == TimeKind::discrete_timestep && model.timestep_sigmas().empty()) {
    throw InputError(sampler + " sampler: the model's discrete noise levels are missing");
  }
}

}  // namespace guidiff
