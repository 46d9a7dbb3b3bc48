// Guidance strengths, intervals and the combination rules (see guidance_rules.hpp and
// docs/guidance.md). Everything is computed in float64 and returned in eps's dtype.
#include "guidiff/guidance/guidance_rules.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {
namespace {

// Sums over every dimension but the batch, keeping them (so the result broadcasts).
torch::Tensor per_sample_sum(const torch::Tensor& x) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < x.dim(); ++d) dims.push_back(d);
  return x.sum(dims, /*keepdim=*/true);
}

torch::Tensor per_sample_norm(const torch::Tensor& x) { return per_sample_sum(x * x).sqrt(); }

// Per-sample standard deviation over all elements, [N, 1, ..., 1] (the n - 1 form; only
// ratios of two of them are used, so the normalisation cancels).
torch::Tensor per_sample_std(const torch::Tensor& x) {
  const int64_t count = x[0].numel();
  const torch::Tensor centred = x - per_sample_sum(x) / double(count);
  return (per_sample_sum(centred * centred) / double(std::max<int64_t>(count - 1, 1))).sqrt();
}

// sqrt(abar) and sqrt(1 - abar) of each row as float64 [N, 1, ..., 1].
std::pair<torch::Tensor, torch::Tensor> signal_and_noise(const NoiseLevelMap& levels, const torch::Tensor& time,
                                                         const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  const torch::Tensor t = per_sample_time(time, x.size(0), "guidance");
  const torch::Tensor abar = levels.alpha_squared(t).to(x.device(), torch::kFloat64).view(shape);
  return {abar.sqrt(), levels.sigma(t).to(x.device(), torch::kFloat64).view(shape)};
}

}  // namespace

torch::Tensor per_sample_time(const torch::Tensor& time, int64_t n, const char* who) {
  if (!time.defined()) throw InputError(std::string(who) + ": time is undefined");
  auto values = time.reshape({-1});
  if (values.numel() == 1 && n != 1) values = values.expand({n});
  if (values.numel() != n) {
    throw InputError(std::string(who) + ": time must have one value per sample (" + std::to_string(n) + "), got " +
                     std::to_string(values.numel()));
  }
  return values;
}

torch::Tensor broadcastable_mask(const torch::Tensor& mask, const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = mask.size(0);
  return mask.to(x.device()).view(shape);
}

GuidanceScale::GuidanceScale(double value) : value_(value) {}

GuidanceScale GuidanceScale::per_sample(const torch::Tensor& values) {
  if (!values.defined() || values.dim() != 1 || !values.is_floating_point()) {
    throw InputError("per-sample guidance scales must be a 1-D floating-point tensor");
  }
  if (!torch::isfinite(values).all().item<bool>()) throw InputError("per-sample guidance scales must be finite");
  GuidanceScale scale;
  scale.per_sample_ = values.to(torch::kCPU, torch::kFloat64).contiguous();
  return scale;
}

bool GuidanceScale::is_zero() const {
  return per_sample_.defined() ? per_sample_.eq(0).all().item<bool>() : value_ == 0.0;
}

void GuidanceScale::check_finite(const std::string& what) const {
  const bool finite = per_sample_.defined() ? torch::isfinite(per_sample_).all().item<bool>() : std::isfinite(value_);
  if (!finite) throw InputError(what + " must be finite");
}

torch::Tensor GuidanceScale::over(const torch::Tensor& x) const {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  if (!per_sample_.defined()) return torch::full(shape, value_, x.options().dtype(torch::kFloat64));
  if (per_sample_.size(0) != x.size(0)) {
    throw InputError("per-sample guidance scales: " + std::to_string(per_sample_.size(0)) + " values for a batch of " +
                     std::to_string(x.size(0)));
  }
  return per_sample_.to(x.device()).view(shape);
}

torch::Tensor GuidanceInterval::contains(const torch::Tensor& time, const NoiseLevelMap* levels) const {
  torch::Tensor level;
  if (unit == Unit::sigma) {
    if (levels == nullptr) throw InputError("a guidance interval in sigma needs the model's noise levels");
    level = levels->edm_sigma(time.detach()).reshape({-1});
  } else {
    level = time.detach().to(torch::kFloat64).reshape({-1});
  }
  return level.ge(low).logical_and(level.le(high));
}

bool GuidanceInterval::is_everything() const {
  return std::isinf(low) && low < 0 && std::isinf(high) && high > 0;
}

void ApgOptions::validate() const {
  if (!std::isfinite(eta) || !std::isfinite(momentum) || !std::isfinite(norm_threshold) || norm_threshold < 0) {
    throw InputError("APG needs finite --apg-eta and --apg-momentum and --apg-threshold >= 0 (got eta " +
                     number_string(eta) + ", momentum " + number_string(momentum) + ", threshold " +
                     number_string(norm_threshold) + ")");
  }
}

void CfgRules::validate() const {
  if (!std::isfinite(rescale_phi) || rescale_phi < 0.0 || rescale_phi > 1.0) {
    throw InputError("--cfg-rescale phi must be in [0, 1], got " + number_string(rescale_phi));
  }
  if (apg) apg->validate();
}

torch::Tensor rescale_guided_x0(const torch::Tensor& guided_x0, const torch::Tensor& positive_x0, double phi) {
  const torch::Tensor guided_std = per_sample_std(guided_x0);
  // std(x_pos) / std(x_cfg); a constant x_cfg (std 0) is left as it is.
  const torch::Tensor ratio =
      torch::where(guided_std > 0, per_sample_std(positive_x0) / guided_std, torch::ones_like(guided_std));
  return guided_x0 * (phi * ratio + (1.0 - phi));
}

torch::Tensor ApgMomentum::update(const torch::Tensor& delta) {
  if (running_.defined() && running_.sizes() != delta.sizes()) {
    throw ModelError("APG momentum: the batch changed between calls (one guidance wrapper per batch)");
  }
  running_ = running_.defined() ? delta + beta_ * running_ : delta;
  return running_;
}

torch::Tensor apg_update(const torch::Tensor& positive_x0, const torch::Tensor& negative_x0, const ApgOptions& options,
                         ApgMomentum& momentum) {
  torch::Tensor delta = momentum.update(positive_x0 - negative_x0);
  if (options.norm_threshold > 0.0) {
    // scale = min(1, r / ||delta||); r / 0 = inf keeps a zero difference at 0.
    delta = delta * torch::clamp_max(options.norm_threshold / per_sample_norm(delta), 1.0);
  }
  // Project onto the unit vector along x0_pos (a zero x0_pos has no parallel part).
  const torch::Tensor norm = per_sample_norm(positive_x0);
  const torch::Tensor unit = torch::where(norm > 0, positive_x0 / norm, torch::zeros_like(positive_x0));
  const torch::Tensor parallel = per_sample_sum(delta * unit) * unit;
  const torch::Tensor orthogonal = delta - parallel;
  return orthogonal + options.eta * parallel;
}

torch::Tensor dynamic_threshold(const torch::Tensor& x0, double percentile) {
  if (!(percentile > 0.0 && percentile <= 1.0)) {
    throw InputError("--dynamic-threshold percentile must be in (0, 1], got " + number_string(percentile));
  }
  std::vector<int64_t> shape(static_cast<size_t>(x0.dim()), 1);
  shape[0] = x0.size(0);
  const torch::Tensor magnitudes = x0.abs().reshape({x0.size(0), -1}).to(torch::kFloat64);
  const torch::Tensor s = torch::quantile(magnitudes, percentile, 1, /*keepdim=*/false, "linear").clamp_min(1.0).view(shape);
  const torch::Tensor x = x0.to(torch::kFloat64);
  return (torch::max(torch::min(x, s), -s) / s).to(x0.scalar_type());
}

GuidanceCombination::GuidanceCombination(GuidanceScale weight, GuidanceInterval interval, CfgRules rules,
                                         std::optional<NoiseLevelMap> levels)
    : weight_(std::move(weight)),
      interval_(interval),
      rules_(std::move(rules)),
      levels_(std::move(levels)),
      momentum_(rules_.apg ? rules_.apg->momentum : 0.0) {
  rules_.validate();
  const bool needs_levels = rules_.works_on_x0() || interval_.unit == GuidanceInterval::Unit::sigma;
  if (needs_levels && !levels_) {
    throw ModelError("guidance: APG, CFG rescale and an interval in sigma need the model's noise levels");
  }
}

bool GuidanceCombination::is_off() const { return weight_.is_zero() && !rules_.cfg_pp; }

torch::Tensor GuidanceCombination::guided_rows(const torch::Tensor& time, int64_t n) const {
  if (interval_.is_everything()) return {};
  return interval_.contains(per_sample_time(time, n, "guidance interval"), levels_ ? &*levels_ : nullptr);
}

DenoiserOutput GuidanceCombination::combine(const torch::Tensor& x_t, const torch::Tensor& time,
                                            DenoiserOutput positive, const torch::Tensor& negative_eps,
                                            const torch::Tensor& guided_rows) {
  const torch::Tensor eps_pos = positive.eps.to(torch::kFloat64);
  const torch::Tensor eps_neg = negative_eps.to(torch::kFloat64);
  const torch::Tensor w = weight_.over(eps_pos);
  torch::Tensor guided;
  if (!rules_.works_on_x0()) {
    guided = eps_pos + w * (eps_pos - eps_neg);  // Ho & Salimans eq. 6: (1 + w) eps_c - w eps_u
  } else {
    // x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) for both branches; the same eq. 6 there
    // (its weights sum to 1, so it commutes with the map), then APG and/or rescale.
    const auto [signal, noise] = signal_and_noise(*levels_, time, eps_pos);
    const torch::Tensor x = x_t.to(torch::kFloat64);
    const torch::Tensor x0_pos = (x - noise * eps_pos) / signal;
    const torch::Tensor x0_neg = (x - noise * eps_neg) / signal;
    torch::Tensor x0 = rules_.apg ? x0_pos + w * apg_update(x0_pos, x0_neg, *rules_.apg, momentum_)
                                  : x0_pos + w * (x0_pos - x0_neg);
    if (rules_.rescale_phi != 0.0) x0 = rescale_guided_x0(x0, x0_pos, rules_.rescale_phi);
    guided = (x - signal * x0) / noise;
  }
  if (guided_rows.defined()) guided = torch::where(broadcastable_mask(guided_rows, guided), guided, eps_pos);
  DenoiserOutput result = std::move(positive);
  result.eps = guided.to(result.eps.scalar_type());
  if (rules_.cfg_pp) {
    // CFG++ (Chung et al. 2024): x0 from the guided eps, re-noising with the negative branch.
    torch::Tensor renoise = eps_neg;
    if (guided_rows.defined()) renoise = torch::where(broadcastable_mask(guided_rows, renoise), renoise, eps_pos);
    result.renoise_eps = renoise.to(result.eps.scalar_type());
  }
  return result;
}

DynamicThresholding::DynamicThresholding(std::shared_ptr<Denoiser> base, NoiseLevelMap levels, double percentile)
    : base_(std::move(base)), levels_(std::move(levels)), percentile_(percentile) {
  if (!base_) throw ModelError("dynamic thresholding: no model");
  if (levels_.kind() != base_->time_kind()) {
    throw ModelError("dynamic thresholding: the noise levels and the model use different time inputs");
  }
  dynamic_threshold(torch::zeros({1, 1}), percentile_);  // checks the percentile now
}

DenoiserOutput DynamicThresholding::predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) {
  DenoiserOutput output = base_->predict(x_t, time, y);
  const auto [signal, noise] = signal_and_noise(levels_, time, x_t);
  const torch::Tensor x = x_t.to(torch::kFloat64);
  const torch::Tensor x0 = dynamic_threshold((x - noise * output.eps.to(torch::kFloat64)) / signal, percentile_);
  output.eps = ((x - signal * x0) / noise).to(output.eps.scalar_type());
  return output;
}

}  // namespace guidiff
