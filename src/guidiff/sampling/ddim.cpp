// DDIM sampling and inversion: Song et al. 2021 ("Denoising Diffusion Implicit Models"),
// eq. 12 with sigma_t(eta) of eq. 16, in the form of guided-diffusion's ddim_sample and
// ddim_reverse_sample.
#include <algorithm>
#include <cmath>

#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/sampler_support.hpp"
#include "guidiff/sampling/samplers.hpp"

namespace guidiff {
namespace {

namespace support = sampler_support;

// pred_x0 from eps (clamped to [-1, 1] when asked), and eps recomputed from that x0 so the
// update stays consistent with the clamp (guided-diffusion's ddim_sample). Under CFG++
// (Chung et al. 2024, DDIM form) the step re-noises with the guidance's own eps instead.
struct Prediction {
  torch::Tensor x0;
  torch::Tensor eps;
};

Prediction predict_x0_and_eps(Denoiser& model, const DiscreteSchedule& schedule,
                              const torch::Tensor& x, int64_t step, const torch::Tensor& labels,
                              bool clip_x0) {
  const torch::Tensor step_index = support::step_index_for(step, x);
  const torch::Tensor t = support::model_timestep_for(schedule, step, x);
  const DenoiserOutput out = support::predict_checked(model, x, t, labels, "ddim", /*allows_renoise=*/true);
  torch::Tensor x0 = predict_x0_from_eps(schedule, x, step_index, out.eps).to(x.options());
  if (clip_x0) x0 = x0.clamp(-1.0, 1.0);
  if (out.renoise_eps.defined()) return {x0, out.renoise_eps};
  const torch::Tensor eps = predict_eps_from_x0(schedule, x, step_index, x0).to(x.options());
  return {x0, eps};
}

double alpha_bar_at(const DiscreteSchedule& schedule, int64_t step) {
  return schedule.alphas_cumprod[step].item<double>();
}

}  // namespace

SamplingResult sample_ddim(Denoiser& model, const DiscreteSchedule& schedule,
                           const SampleBatch& batch, const SampleNoise& noise,
                           const DdimOptions& options) {
  const std::string name = "ddim";
  support::check_time_kind(model, TimeKind::discrete_timestep, name);
  support::check_schedule(schedule, name);
  if (!std::isfinite(options.eta) || options.eta < 0.0) {
    throw InputError("ddim sampler: eta must be finite and >= 0, got " + std::to_string(options.eta));
  }
  const bool stochastic = options.eta > 0.0;
  support::check_batch(batch, /*needs_noise=*/stochastic, name);

  c10::InferenceMode inference;  // classifier gradients turn autograd back on locally
  const int64_t num_steps = schedule.num_steps();
  support::StepRecorder recorder(options, num_steps, batch);
  torch::Tensor x = batch.x_T;
  for (int64_t i = num_steps - 1; i >= 0; --i) {
    const Prediction pred = predict_x0_and_eps(model, schedule, x, i, batch.labels, options.clip_x0);
    const double abar = alpha_bar_at(schedule, i);
    const double abar_prev = schedule.alphas_cumprod_prev[i].item<double>();
    // eq. 16: sigma_t(eta) = eta sqrt((1 - abar_{t-1}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t-1})
    const double sigma = options.eta * std::sqrt((1.0 - abar_prev) / (1.0 - abar)) *
                         std::sqrt(1.0 - abar / abar_prev);
    // eq. 12: x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1} - sigma^2) eps + sigma z
    const double direction = std::sqrt(std::max(0.0, 1.0 - abar_prev - sigma * sigma));
    x = pred.x0 * std::sqrt(abar_prev) + direction * pred.eps;
    if (stochastic && i > 0) {
      x = x + sigma * support::step_noise(noise, batch.sample_indices, i, x);
    }
    recorder.step_done(x);
  }
  return recorder.finish(x, name);
}

torch::Tensor ddim_invert(Denoiser& model, const DiscreteSchedule& schedule,
                          const torch::Tensor& x0, const torch::Tensor& labels,
                          const SamplerCommon& options) {
  const std::string name = "ddim inversion";
  support::check_time_kind(model, TimeKind::discrete_timestep, name);
  support::check_schedule(schedule, name);
  support::check_start(x0, labels, "x0", name);

  c10::InferenceMode inference;
  // As guided-diffusion's ddim_reverse_sample_loop, the data is taken as x at step 0; each
  // update runs eq. 12 (eta = 0) from step i to i + 1 with eps evaluated at (x_i, t_i):
  //   x_{i+1} = sqrt(abar_{i+1}) x0_pred + sqrt(1 - abar_{i+1}) eps.
  // It stops at the last step, the x_T that sample_ddim starts from.
  const int64_t num_steps = schedule.num_steps();
  SamplerCommon progress_only = options;  // the inversion returns x_T alone
  progress_only.keep_trajectory = false;
  support::StepRecorder recorder(progress_only, num_steps - 1, x0);
  torch::Tensor x = x0;
  for (int64_t i = 0; i + 1 < num_steps; ++i) {
    const Prediction pred = predict_x0_and_eps(model, schedule, x, i, labels, options.clip_x0);
    const double abar_next = alpha_bar_at(schedule, i + 1);
    x = pred.x0 * std::sqrt(abar_next) + std::sqrt(1.0 - abar_next) * pred.eps;
    recorder.step_done(x);
  }
  support::check_finite_result(x, name);
  return x;
}

}  // namespace guidiff
