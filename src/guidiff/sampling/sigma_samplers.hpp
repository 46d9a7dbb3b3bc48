// The few-step samplers: free functions over the sigma-space view of a Denoiser (see
// sigma_denoiser.hpp and docs/samplers.md), for discrete-time eps models and log-SNR models
// alike. Each takes the SigmaSchedule to step through (schedule/sigma_schedule.hpp), starts
// from the batch's x_T (N(0, I), as DDIM does) and returns the samples at sigma = 0.
// Guidance arrives already applied through the guidance wrappers: a sampler never knows
// which guidance runs. Stochastic samplers draw step i's noise from the per-sample stream
// num_steps - 1 - i, so results do not depend on batch size.
#pragma once
#include <torch/torch.h>

#include <limits>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/sampling/sample_noise.hpp"
#include "guidiff/sampling/samplers.hpp"
#include "guidiff/schedule/sigma_schedule.hpp"

namespace guidiff {

// EDM's stochastic "churn" (Karras et al. 2022, Alg. 2 lines 4-6): before step i, noise is
// added to raise sigma_i to (1 + gamma_i) sigma_i, gamma_i = min(S_churn / N, sqrt(2) - 1)
// for sigma_i in [S_tmin, S_tmax]; the added noise is scaled by S_noise. S_churn = 0: none.
struct ChurnOptions {
  double s_churn = 0.0;
  double s_tmin = 0.0;
  double s_tmax = std::numeric_limits<double>::infinity();
  double s_noise = 1.0;
  bool active() const { return s_churn > 0.0; }
  // Throws InputError unless every value is finite (S_tmax may be +inf) and non-negative.
  void validate() const;
};

struct EulerOptions : SamplerCommon {
  ChurnOptions churn;
};

// Euler steps (Karras et al. 2022, Alg. 2 without the second-order correction):
// x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d_i, d_i = (x_hat - D(x_hat; sigma_hat)) / sigma_hat.
// With the timesteps spacing and no churn it is DDIM at eta = 0. Runs CFG++.
SamplingResult sample_euler(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                            const SampleNoise& noise, const EulerOptions& options);

// Heun steps (Karras et al. 2022, Alg. 1; Alg. 2 with churn): the Euler step, then the
// trapezoidal correction x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) (d_i + d'_i) / 2 with d'_i
// at the Euler point; the last step (to sigma = 0) is Euler. 2 N - 1 model calls.
SamplingResult sample_heun(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                           const SampleNoise& noise, const EulerOptions& options);

// Euler ancestral: an Euler step to sigma_down, then fresh noise of size sigma_up (the
// ancestral split of DDPM's posterior; see sigma_denoiser.hpp). On the timesteps spacing it
// is DDIM at eta = 1.
SamplingResult sample_euler_ancestral(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                                      const SampleNoise& noise, const SamplerCommon& options);

// DPM-Solver-2 (Lu et al. 2022, "DPM-Solver", Alg. 1 with r1 = 1/2), the singlestep
// second-order solver in eps form: an eps step to the midpoint in lambda, and the full step
// with the eps there. 2 N - 1 model calls (the last step, to sigma = 0, is first order).
SamplingResult sample_dpm_solver_2s(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                                    const SampleNoise& noise, const SamplerCommon& options);

// DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2): multistep second order in the
// data prediction, one model call per step.
SamplingResult sample_dpmpp_2m(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                               const SampleNoise& noise, const SamplerCommon& options);

// DPM-Solver++(3M): the same exponential integrator with D extrapolated quadratically in
// lambda from the last three steps; third order, one model call per step.
SamplingResult sample_dpmpp_3m(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                               const SampleNoise& noise, const SamplerCommon& options);

// SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Sec. 5 / App. B, the midpoint form
// k-diffusion uses): the reverse SDE's exponential integrator with fresh noise every step.
SamplingResult sample_dpmpp_2m_sde(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                                   const SampleNoise& noise, const SamplerCommon& options);

struct UniPcOptions : SamplerCommon {
  int order = 2;  // 1..3; Zhao et al. recommend 2 for guided sampling
};

// UniPC with B(h) = e^h - 1 ("bh2"; Zhao et al. 2023, "UniPC", Sec. 3): the UniP-p predictor
// and the UniC-p corrector, which reuses the next step's model call, so one call per step and
// order p + 1. The first steps warm up at lower order; the last step (to sigma = 0) is first order.
SamplingResult sample_unipc(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                            const SampleNoise& noise, const UniPcOptions& options);

}  // namespace guidiff
