// DDPM ancestral sampling: Ho et al. 2020, Algorithm 2, with the classifier mean shift of
// Dhariwal & Nichol 2021, Algorithm 1.
#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/sampler_support.hpp"
#include "guidiff/sampling/samplers.hpp"

namespace guidiff {

SamplingResult sample_ddpm(Denoiser& model, const DiscreteSchedule& schedule,
                           const SampleBatch& batch, const SampleNoise& noise,
                           const DdpmOptions& options) {
  namespace support = sampler_support;
  const std::string name = "ddpm";
  support::check_time_kind(model, TimeKind::discrete_timestep, name);
  support::check_schedule(schedule, name);
  support::check_batch(batch, /*needs_noise=*/true, name);
  const VarianceKind variance_kind =
      model.learns_variance() ? VarianceKind::learned_range : options.fixed_variance;
  if (variance_kind == VarianceKind::learned_range && !model.learns_variance()) {
    throw ModelError("ddpm sampler: learned-range variance needs a model that learns its variance");
  }

  // No autograd graph through the loop; the classifier's gradient re-enables it locally.
  c10::InferenceMode inference;
  const int64_t num_steps = schedule.num_steps();
  support::StepRecorder recorder(options, num_steps, batch);
  torch::Tensor x = batch.x_T;
  for (int64_t i = num_steps - 1; i >= 0; --i) {
    const torch::Tensor step_index = support::step_index_for(i, x);
    const torch::Tensor t = support::model_timestep_for(schedule, i, x);
    // eps_theta(x_t, t) -> p_theta(x_{t-1} | x_t) = N(mu, Sigma)   (DDPM eqs. 11-12)
    const DenoiserOutput out = support::predict_checked(model, x, t, batch.labels, name);
    const ReverseStep reverse = p_mean_variance(schedule, x, step_index, out.eps,
                                                out.variance_output, variance_kind, options.clip_x0);
    torch::Tensor mean = reverse.gaussian.mean.to(x.options());
    // Algorithm 1: mu + s Sigma grad_x log p_phi(y | x_t), gradient at x_t and original t.
    if (options.mean_shift != nullptr) {
      mean = mean + options.mean_shift->shift(x, t, batch.labels, reverse.gaussian.variance)
                        .to(x.options());
    }
    if (i > 0) {
      // x_{t-1} = mu + sigma z, z ~ N(0, I) from the stream of step i.
      const torch::Tensor z = support::step_noise(noise, batch.sample_indices, i, x);
      x = mean + torch::exp(0.5 * reverse.gaussian.log_variance).to(x.options()) * z;
    } else {
      x = mean;  // Algorithm 2, last line: no noise at t = 1
    }
    recorder.step_done(x);
  }
  return recorder.finish(x, name);
}

}  // namespace guidiff
