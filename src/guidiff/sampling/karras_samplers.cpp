// Euler, Heun (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
// Generative Models", Algorithms 1 and 2) and Euler ancestral, over the sigma-space view.
#include <cmath>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/sigma_denoiser.hpp"
#include "guidiff/sampling/sigma_samplers.hpp"

namespace guidiff {
namespace {

using sigma_sampling::Denoised;
using sigma_sampling::SigmaRun;

// EDM Alg. 2 lines 4-6: sigma_hat = (1 + gamma_i) sigma_i and x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) S_noise e.
double apply_churn(SigmaRun& run, const ChurnOptions& churn, int64_t i, torch::Tensor& x) {
  const double sigma = run.sigma(i);
  const double sigma_hat = sigma_sampling::churned_sigma(churn, sigma, run.num_steps());
  if (sigma_hat > sigma) x = x + churn.s_noise * std::sqrt(sigma_hat * sigma_hat - sigma * sigma) * run.noise(i);
  return sigma_hat;
}

}  // namespace

void ChurnOptions::validate() const {
  const auto fail = [](const std::string& flag, double value) {
    std::ostringstream message;
    message << flag << " must be finite and >= 0, got " << value;
    throw InputError(message.str());
  };
  if (!std::isfinite(s_churn) || s_churn < 0) fail("--s-churn", s_churn);
  if (!std::isfinite(s_tmin) || s_tmin < 0) fail("--s-tmin", s_tmin);
  if (std::isnan(s_tmax) || s_tmax < 0) fail("--s-tmax", s_tmax);
  // EDM (Karras et al. 2022, Table 5) uses S_noise 1.003 to 1.007; far above 1 it only adds
  // noise the schedule never removes.
  if (!std::isfinite(s_noise) || s_noise < 0 || s_noise > 2) {
    std::ostringstream message;
    message << "--s-noise must be in [0, 2] (EDM uses 1 to 1.01), got " << s_noise;
    throw InputError(message.str());
  }
}

SamplingResult sample_euler(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                            const SampleNoise& noise, const EulerOptions& options) {
  options.churn.validate();
  SigmaRun run("euler", model, schedule, batch, noise, options, options.churn.active(), /*allows_renoise=*/true);
  torch::Tensor x = run.start();
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma_hat = apply_churn(run, options.churn, i, x);
    const Denoised d = run.denoise(x, sigma_hat);  // line 7: d_i = (x_hat - D(x_hat; sigma_hat)) / sigma_hat
    // line 8: x_{i+1} = x_hat + (sigma_{i+1} - sigma_hat) d_i = D + sigma_{i+1} d_i, the form in
    // which CFG++ re-noises with its own eps.
    x = d.denoised + run.sigma(i + 1) * d.renoise_eps;
    run.step_done(i, x);
  }
  return run.finish(x);
}

SamplingResult sample_heun(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                           const SampleNoise& noise, const EulerOptions& options) {
  options.churn.validate();
  SigmaRun run("heun", model, schedule, batch, noise, options, options.churn.active(), /*allows_renoise=*/false);
  torch::Tensor x = run.start();
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma_hat = apply_churn(run, options.churn, i, x);
    const double sigma_next = run.sigma(i + 1);
    const Denoised first = run.denoise(x, sigma_hat);               // d_i
    const torch::Tensor x_euler = x + (sigma_next - sigma_hat) * first.eps;  // Alg. 2 line 8
    if (sigma_next == 0.0) {
      x = x_euler;  // no correction at sigma = 0 (Alg. 1 line 8: "if sigma_{i+1} != 0")
    } else {
      const Denoised second = run.denoise(x_euler, sigma_next);    // line 10: d'_i
      x = x + (sigma_next - sigma_hat) * 0.5 * (first.eps + second.eps);  // line 11
    }
    run.step_done(i, x);
  }
  return run.finish(x);
}

SamplingResult sample_euler_ancestral(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                                      const SampleNoise& noise, const SamplerCommon& options) {
  SigmaRun run("euler-a", model, schedule, batch, noise, options, /*stochastic=*/true, /*allows_renoise=*/false);
  torch::Tensor x = run.start();
  for (int64_t i = 0; i < run.num_steps(); ++i) {
    const double sigma = run.sigma(i);
    const Denoised d = run.denoise(x, sigma);
    const auto [sigma_down, sigma_up] = sigma_sampling::ancestral_step(sigma, run.sigma(i + 1));
    x = x + (sigma_down - sigma) * d.eps;                // Euler step to sigma_down
    if (sigma_up > 0.0) x = x + sigma_up * run.noise(i);  // then back up to sigma_{i+1}
    run.step_done(i, x);
  }
  return run.finish(x);
}

}  // namespace guidiff
