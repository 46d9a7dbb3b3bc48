// The DPM-Solver family over the sigma-space view, in lambda = -log sigma where the
// probability-flow ODE is dx/dlambda = D - x, i.e. x(lambda_t) = e^{-h} x(lambda_s) +
// integral_{lambda_s}^{lambda_t} e^{lambda - lambda_t} D(lambda) dlambda, h = lambda_t - lambda_s
// (Lu et al. 2022, "DPM-Solver", eq. 3.4; "DPM-Solver++", eq. 8; in sigma form the alphas cancel):
//   DPM-Solver-2 (eps form, singlestep);
//   DPM-Solver++(2M) and (3M): multistep, D extrapolated from earlier steps;
//   SDE-DPM-Solver++(2M): the same for the reverse SDE, with fresh noise each step.
// A step to sigma = 0 (lambda = infinity) is the limit of the first-order step: x = D.
#include <cmath>

#include "guidiff/sampling/sigma_denoiser.hpp"
#include "guidiff/sampling/sigma_samplers.hpp"

namespace guidiff {
namespace {

using sigma_sampling::Denoised;
using sigma_sampling::lambda_of;
using sigma_sampling::SigmaRun;

// A model answer remembered by a multistep solver: D at lambda.
struct PastDenoised {
  double lambda;
  torch::Tensor denoised;
};

}  // namespace

SamplingResult sample_dpm_solver_2s(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                                    const SampleNoise& noise, const SamplerCommon& options) {
  SigmaRun run("dpm-2s", model, schedule, batch, noise, options, /*stochastic=*/false, /*allows_renoise=*/false);
  torch::Tensor x = run.start();
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma = run.sigma(i), sigma_next = run.sigma(i + 1);
    const Denoised first = run.denoise(x, sigma);  // eps(x_{i-1}, t_{i-1})
    if (sigma_next == 0.0) {
      x = first.denoised;  // x - sigma eps: the first-order step to sigma = 0
    } else {
      // Alg. 1 with r1 = 1/2: s_i = t_lambda(lambda_{i-1} + h_i / 2), the midpoint in lambda.
      const double h = lambda_of(sigma_next) - lambda_of(sigma);
      const double sigma_mid = sigma_sampling::sigma_of(lambda_of(sigma) + 0.5 * h);
      // u_i = x_{i-1} - sigma_{s_i} (e^{h/2} - 1) eps(x_{i-1}, t_{i-1})
      const torch::Tensor u = x - sigma_mid * std::expm1(0.5 * h) * first.eps;
      // x_i = x_{i-1} - sigma_{t_i} (e^h - 1) eps(u_i, s_i)
      x = x - sigma_next * std::expm1(h) * run.denoise(u, sigma_mid).eps;
    }
    run.step_done(i, x);
  }
  return run.finish(x);
}

SamplingResult sample_dpmpp_2m(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                               const SampleNoise& noise, const SamplerCommon& options) {
  SigmaRun run("dpmpp-2m", model, schedule, batch, noise, options, /*stochastic=*/false, /*allows_renoise=*/false);
  torch::Tensor x = run.start();
  torch::Tensor previous;  // D at the previous step (undefined at the first)
  double h_previous = 0.0;
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma = run.sigma(i), sigma_next = run.sigma(i + 1);
    const torch::Tensor denoised = run.denoise(x, sigma).denoised;
    if (sigma_next == 0.0) {
      x = denoised;
    } else {
      const double h = lambda_of(sigma_next) - lambda_of(sigma);
      // Alg. 2: D_i = (1 + 1/(2 r_i)) x0(x_i) - 1/(2 r_i) x0(x_{i-1}), r_i = h_{i-1} / h_i;
      // the first step is DPM-Solver++(1) (DDIM).
      torch::Tensor extrapolated = denoised;
      if (previous.defined()) {
        const double r = h_previous / h;
        extrapolated = (1.0 + 1.0 / (2.0 * r)) * denoised - (1.0 / (2.0 * r)) * previous;
      }
      // x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x - (e^{-h_i} - 1) D_i
      x = (sigma_next / sigma) * x - std::expm1(-h) * extrapolated;
      h_previous = h;
    }
    previous = denoised;
    run.step_done(i, x);
  }
  return run.finish(x);
}

SamplingResult sample_dpmpp_3m(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                               const SampleNoise& noise, const SamplerCommon& options) {
  SigmaRun run("dpmpp-3m", model, schedule, batch, noise, options, /*stochastic=*/false, /*allows_renoise=*/false);
  torch::Tensor x = run.start();
  std::vector<PastDenoised> past;  // the last two answers, most recent first
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma = run.sigma(i), sigma_next = run.sigma(i + 1);
    const double lambda = lambda_of(sigma);
    const torch::Tensor denoised = run.denoise(x, sigma).denoised;
    if (sigma_next == 0.0) {
      x = denoised;
    } else {
      // With D(lambda) = D + (lambda - lambda_i) D' + (lambda - lambda_i)^2 / 2 D'', the
      // integral is exact: x = e^{-h} x + (1 - e^{-h}) D + h phi_2 D' - h^2 phi_3 D'', with
      // phi_2 = (e^{-h} - 1)/h + 1 and phi_3 = phi_2 / h - 1/2.
      const double h = lambda_of(sigma_next) - lambda;
      const double phi_2 = std::expm1(-h) / h + 1.0;
      const double phi_3 = phi_2 / h - 0.5;
      x = (sigma_next / sigma) * x - std::expm1(-h) * denoised;
      if (past.size() >= 1) {
        // Backward differences in lambda: slope_1 is D' half a step back, slope_2 further back.
        const double h_1 = lambda - past[0].lambda;
        const torch::Tensor slope_1 = (denoised - past[0].denoised) / h_1;
        if (past.size() == 1) {
          x = x + h * phi_2 * slope_1;  // second order while only one earlier answer exists
        } else {
          const double h_2 = past[0].lambda - past[1].lambda;
          const torch::Tensor slope_2 = (past[0].denoised - past[1].denoised) / h_2;
          const torch::Tensor curvature = (slope_1 - slope_2) * (2.0 / (h_1 + h_2));  // D''
          const torch::Tensor slope = slope_1 + (0.5 * h_1) * curvature;              // D' at lambda_i
          // (k-diffusion's and diffusers' 3M give the curvature term half this weight, which
          // is exact only to second order; see docs/samplers.md.)
          x = x + h * phi_2 * slope - h * h * phi_3 * curvature;
        }
      }
    }
    past.insert(past.begin(), PastDenoised{lambda, denoised});
    if (past.size() > 2) past.pop_back();
    run.step_done(i, x);
  }
  return run.finish(x);
}

SamplingResult sample_dpmpp_2m_sde(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                                   const SampleNoise& noise, const SamplerCommon& options) {
  SigmaRun run("dpmpp-2m-sde", model, schedule, batch, noise, options, /*stochastic=*/true, /*allows_renoise=*/false);
  torch::Tensor x = run.start();
  torch::Tensor previous;
  double h_previous = 0.0;
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma = run.sigma(i), sigma_next = run.sigma(i + 1);
    const torch::Tensor denoised = run.denoise(x, sigma).denoised;
    if (sigma_next == 0.0) {
      x = denoised;
    } else {
      const double h = lambda_of(sigma_next) - lambda_of(sigma);
      // The reverse SDE's exponential integrator: the drift doubles the rate, so
      // x = (sigma_next / sigma) e^{-h} x + (1 - e^{-2h}) D + sigma_next sqrt(1 - e^{-2h}) z.
      const double decay = -std::expm1(-2.0 * h);  // 1 - e^{-2h}
      x = (sigma_next / sigma) * std::exp(-h) * x + decay * denoised;
      if (previous.defined()) {
        const double r = h_previous / h;
        x = x + 0.5 * decay * (1.0 / r) * (denoised - previous);  // second order, midpoint form
      }
      x = x + sigma_next * std::sqrt(decay) * run.noise(i);
      h_previous = h;
    }
    previous = denoised;
    run.step_done(i, x);
  }
  return run.finish(x);
}

}  // namespace guidiff
