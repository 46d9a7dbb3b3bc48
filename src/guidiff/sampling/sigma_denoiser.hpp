// The one sigma-space view of a Denoiser that every few-step sampler runs on, and the
// helpers its loops share. Internal to sampling/ (the public contract is sigma_samplers.hpp).
//
// Karras et al. 2022 ("EDM", Sec. 2 and Table 1, VP column) write a diffusion model's state
// as x = x0 + sigma n, sigma = sqrt((1 - abar) / abar): the VP state divided by sqrt(abar).
// An eps model is then the denoiser
//     D(x; sigma) = x - sigma eps(x / sqrt(1 + sigma^2), t(sigma)),
// and sampling solves the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma (EDM
// eq. 3 with sigma(t) = t, s(t) = 1) from x = x_T sqrt(1 + sigma_max^2) (x_T ~ N(0, I), the
// same x_T as DDIM's) down to sigma = 0, where x is the sample. The DPM-Solver family writes
// the same ODE in lambda = -log sigma (the log of alpha/sigma in VP terms):
// dx/dlambda = D - x.
#pragma once
#include <torch/torch.h>

#include <string>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/sampling/sampler_support.hpp"
#include "guidiff/sampling/sigma_samplers.hpp"

namespace guidiff::sigma_sampling {

// The denoiser's answer at one (x, sigma), float64 like x.
struct Denoised {
  torch::Tensor denoised;     // D(x; sigma), clamped to [-1, 1] when clip_x0
  torch::Tensor eps;          // (x - D) / sigma: the ODE derivative d of EDM Alg. 1-2
  torch::Tensor renoise_eps;  // eps, or CFG++'s unconditional eps (samplers that allow it)
};

// lambda = -log sigma, and back.
double lambda_of(double sigma);
double sigma_of(double lambda);

// The ancestral split of a step sigma_from -> sigma_to (DDPM's posterior in sigma form, as
// DDIM eq. 16 at eta = 1): sigma_up^2 = eta^2 sigma_to^2 (sigma_from^2 - sigma_to^2) /
// sigma_from^2 (at most sigma_to^2), sigma_down^2 = sigma_to^2 - sigma_up^2.
struct AncestralStep {
  double down;
  double up;
};
AncestralStep ancestral_step(double sigma_from, double sigma_to, double eta = 1.0);

// EDM Alg. 2 "churn": gamma_i = min(S_churn / N, sqrt(2) - 1) for sigma_i in [S_tmin, S_tmax],
// else 0. Returns sigma_hat = (1 + gamma_i) sigma_i.
double churned_sigma(const ChurnOptions& churn, double sigma, int64_t num_steps);

// One sampler run over a SigmaSchedule: validation, the view of the model, the per-step
// noise, the trajectory (recorded in VP scale x / sqrt(1 + sigma^2), so x_T comes first as
// for every sampler) and progress. Holds an InferenceMode guard for the run.
class SigmaRun {
 public:
  // `stochastic`: the sampler draws noise (needs sample_indices). `allows_renoise`: it moves
  // to the next level as D + sigma_next renoise_eps (DDIM / Euler), so CFG++ can run in it.
  SigmaRun(std::string name, Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
           const SampleNoise& noise, const SamplerCommon& options, bool stochastic, bool allows_renoise);

  int64_t num_steps() const { return schedule_.num_steps(); }
  double sigma(int64_t i) const { return schedule_.sigmas[static_cast<size_t>(i)]; }
  // x at sigmas[0]: x_T sqrt(1 + sigma_0^2), float64.
  torch::Tensor start() const;
  // The model at (x, sigma) for every row; sigma may lie between the schedule's levels.
  Denoised denoise(const torch::Tensor& x, double sigma);
  // Standard normal noise of step i (0 = the noisiest), from stream num_steps - 1 - i: the
  // step-index stream DDPM and DDIM use, so euler-a on the timesteps spacing is DDIM eta = 1.
  torch::Tensor noise(int64_t step) const;
  // After step i: x is at sigmas[i + 1].
  void step_done(int64_t step, const torch::Tensor& x);
  // x at sigma = 0, in x_T's dtype, checked finite.
  SamplingResult finish(const torch::Tensor& x);

 private:
  c10::InferenceMode inference_;  // classifier gradients turn autograd back on locally
  std::string name_;
  Denoiser& model_;
  const SigmaSchedule& schedule_;
  const SampleBatch& batch_;
  const SampleNoise& noise_;
  const SamplerCommon& options_;
  bool allows_renoise_;
  sampler_support::StepRecorder recorder_;
};

}  // namespace guidiff::sigma_sampling
