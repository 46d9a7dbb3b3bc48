// The parts every guidance wrapper shares: the strength (one value or one per sample), the
// interval where guidance acts (in model time or in sigma), and the rules published since
// classifier-free guidance that change how its two predictions are combined -- CFG rescale,
// APG, CFG++ -- plus dynamic thresholding of x0. docs/guidance.md has each equation.
#pragma once
#include <torch/torch.h>

#include <limits>
#include <memory>
#include <optional>
#include <string>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/schedule/noise_level.hpp"

namespace guidiff {

// A guidance strength: one value for every sample, or one per sample of the batch.
class GuidanceScale {
 public:
  GuidanceScale(double value = 0.0);  // NOLINT(google-explicit-constructor): a plain number is a scale
  // One value per sample, float [N]; throws InputError unless finite and 1-D.
  static GuidanceScale per_sample(const torch::Tensor& values);
  bool is_zero() const;  // every value is exactly 0
  // Throws InputError naming `what` unless every value is finite.
  void check_finite(const std::string& what) const;
  bool is_per_sample() const { return per_sample_.defined(); }
  // Each row's value as float64 [N, 1, ..., 1] for x [N, ...] (per-sample N must match).
  torch::Tensor over(const torch::Tensor& x) const;

 private:
  double value_ = 0.0;
  torch::Tensor per_sample_;  // float64 [N], or undefined
};

// Guidance applies only where low <= level <= high. The level is the model's time input
// (original timesteps, or lambda for log-SNR models), or the EDM noise level
// sigma = sqrt((1 - abar)/abar) (Kynkaanniemi et al. 2024, "Applying Guidance in a Limited
// Interval Improves Sample and Distribution Quality"). The default is everything.
struct GuidanceInterval {
  enum class Unit { model_time, sigma };
  double low = -std::numeric_limits<double>::infinity();
  double high = std::numeric_limits<double>::infinity();
  Unit unit = Unit::model_time;
  // bool [N]: which samples are inside at this time. `levels` maps time to sigma and is
  // required for Unit::sigma (InputError otherwise).
  torch::Tensor contains(const torch::Tensor& time, const NoiseLevelMap* levels = nullptr) const;
  bool is_everything() const;
};

// Adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of
// High Guidance Scales in Diffusion Models", Alg. 1), on the x0 predictions.
struct ApgOptions {
  double eta = 0.0;             // weight of the update's component parallel to x0_cond
  double momentum = -0.5;       // beta: the running difference is delta + beta * previous
  double norm_threshold = 0.0;  // r: the difference is scaled to norm <= r (0: no limit)
  void validate() const;        // InputError unless every value is finite, r >= 0
};

// How classifier-free guidance (and autoguidance) combines its two predictions.
struct CfgRules {
  double rescale_phi = 0.0;       // Lin et al. 2024 CFG rescale, phi in [0, 1]; 0: off
  std::optional<ApgOptions> apg;  // unset: Ho & Salimans eq. 6
  bool cfg_pp = false;            // Chung et al. 2024: re-noise with the negative branch's eps
  bool works_on_x0() const { return rescale_phi != 0.0 || apg.has_value(); }
  void validate() const;
};

// Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps Are Flawed", Sec. 3.4):
// x = phi * x_cfg * std(x_pos) / std(x_cfg) + (1 - phi) * x_cfg, std over each sample.
torch::Tensor rescale_guided_x0(const torch::Tensor& guided_x0, const torch::Tensor& positive_x0, double phi);

// APG's running difference (per sample, one per guidance wrapper and batch).
class ApgMomentum {
 public:
  explicit ApgMomentum(double beta) : beta_(beta) {}
  // running <- delta + beta * running (running starts at 0); returns running.
  torch::Tensor update(const torch::Tensor& delta);

 private:
  double beta_;
  torch::Tensor running_;
};

// APG's update (Sadat et al. Alg. 1): delta = x0_pos - x0_neg through the momentum, scaled to
// norm <= r, split into the parts parallel and orthogonal to x0_pos; returns
// delta_orthogonal + eta * delta_parallel. The guided x0 is x0_pos + w * update.
torch::Tensor apg_update(const torch::Tensor& positive_x0, const torch::Tensor& negative_x0,
                         const ApgOptions& options, ApgMomentum& momentum);

// Dynamic thresholding (Saharia et al. 2022, "Imagen", Sec. 2.3): s = the `percentile`
// quantile of |x0| over each sample (linear interpolation), s = max(s, 1), x0 -> clamp(x0, -s, s) / s.
torch::Tensor dynamic_threshold(const torch::Tensor& x0, double percentile);

// eps~ from a positive and a negative prediction: Ho & Salimans eq. 6,
// eps~ = eps_pos + w (eps_pos - eps_neg), or in x0 space when APG or rescale is on; rows
// outside the interval keep eps_pos. With CFG++ the result carries renoise_eps = eps_neg.
class GuidanceCombination {
 public:
  // `levels` (time -> abar) is needed when the rules work on x0 or the interval is in sigma.
  GuidanceCombination(GuidanceScale weight, GuidanceInterval interval, CfgRules rules,
                      std::optional<NoiseLevelMap> levels);
  // No guidance at all: the weight is 0 and CFG++ is off.
  bool is_off() const;
  // bool [N] of the rows guided at `time`, or undefined when every row is.
  torch::Tensor guided_rows(const torch::Tensor& time, int64_t n) const;
  DenoiserOutput combine(const torch::Tensor& x_t, const torch::Tensor& time, DenoiserOutput positive,
                         const torch::Tensor& negative_eps, const torch::Tensor& guided_rows);

 private:
  GuidanceScale weight_;
  GuidanceInterval interval_;
  CfgRules rules_;
  std::optional<NoiseLevelMap> levels_;
  ApgMomentum momentum_;
};

// Dynamic thresholding as a wrapper: eps -> x0 -> dynamic_threshold -> eps, so every
// sampler gets it. `levels` maps the model's time to abar.
class DynamicThresholding : public Denoiser {
 public:
  DynamicThresholding(std::shared_ptr<Denoiser> base, NoiseLevelMap levels, double percentile);
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  bool learns_variance() const override { return base_->learns_variance(); }

 private:
  std::shared_ptr<Denoiser> base_;
  NoiseLevelMap levels_;
  double percentile_;
};

// time as one value per sample [N] (a single value is broadcast); InputError naming `who`.
torch::Tensor per_sample_time(const torch::Tensor& time, int64_t n, const char* who);
// bool [N] -> [N, 1, ..., 1] on x's device, to broadcast against x ([N, ...]).
torch::Tensor broadcastable_mask(const torch::Tensor& mask, const torch::Tensor& x);

}  // namespace guidiff
