// Samplers: small free functions over a Denoiser. Guidance arrives already applied through
// the guidance wrappers (guidance/guidance.hpp), except Algorithm 1's DDPM mean shift,
// which DdpmOptions carries. Each loop body follows its paper's algorithm line by line.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/models/denoiser.hpp"
#include "guidiff/sampling/sample_noise.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"

namespace guidiff {

// One batch to sample: where it starts, which classes, and which global sample indices
// (these choose the per-sample noise streams).
struct SampleBatch {
  torch::Tensor x_T;             // float32 [N, ...]
  torch::Tensor labels;          // int64 [N], or undefined for unconditional sampling
  torch::Tensor sample_indices;  // int64 [N]
};

// Called after each step with (steps done, total steps).
using StepCallback = std::function<void(int64_t, int64_t)>;

struct SamplerCommon {
  bool clip_x0 = false;          // clamp predicted x0 to [-1, 1] (images)
  bool keep_trajectory = false;  // return x at every step (x_T first, the result last)
  StepCallback on_step;
};

struct SamplingResult {
  torch::Tensor samples;
  std::vector<torch::Tensor> trajectory;
};

struct DdpmOptions : SamplerCommon {
  // Used when the model does not learn its variance; learned_range otherwise.
  VarianceKind fixed_variance = VarianceKind::fixed_small;
  // Classifier guidance, Algorithm 1; null for none.
  const ClassifierMeanShift* mean_shift = nullptr;
};

// DDPM ancestral sampling (Ho et al. 2020, Algorithm 2; with Algorithm 1 of Dhariwal &
// Nichol when mean_shift is set): x_{t-1} ~ N(mu + s Sigma grad, Sigma), no noise at the
// last step. Noise at step index i comes from stream i of `noise`.
SamplingResult sample_ddpm(Denoiser& model, const DiscreteSchedule& schedule,
                           const SampleBatch& batch, const SampleNoise& noise,
                           const DdpmOptions& options);

struct DdimOptions : SamplerCommon {
  double eta = 0.0;  // 0: deterministic ODE; 1: DDPM-like variance
};

// DDIM (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16).
SamplingResult sample_ddim(Denoiser& model, const DiscreteSchedule& schedule,
                           const SampleBatch& batch, const SampleNoise& noise,
                           const DdimOptions& options);

// DDIM inversion: x0 -> x_T by running the eta = 0 update forwards in time (Song et al.
// eq. 13 read from t to t+1, eps evaluated at the current, less noisy point).
torch::Tensor ddim_invert(Denoiser& model, const DiscreteSchedule& schedule,
                          const torch::Tensor& x0, const torch::Tensor& labels,
                          const SamplerCommon& options);

struct CfgContinuousOptions : SamplerCommon {
  int64_t steps = 256;
  double variance_exponent = 0.3;  // v: interpolates log variance between the two choices
  LogSnrSchedule schedule;
};

// The continuous-time sampler of Ho & Salimans 2022 (Algorithm 2) over a log-SNR model
// (wrap it in ClassifierFreeGuidance for w != 0). Steps at u_i = 1 - i/steps; the posterior
// variance is (sigma~^2_{lambda'|lambda})^(1-v) (sigma^2_{lambda|lambda'})^v; the last step
// returns the predicted x. Throws ModelError for a discrete-time model.
SamplingResult sample_cfg_continuous(Denoiser& model, const SampleBatch& batch,
                                     const SampleNoise& noise, const CfgContinuousOptions& options);

}  // namespace guidiff
