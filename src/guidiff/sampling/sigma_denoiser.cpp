// The sigma-space view of a Denoiser (see sigma_denoiser.hpp).
#include "guidiff/sampling/sigma_denoiser.hpp"

#include <algorithm>
#include <cmath>

#include "guidiff/core/errors.hpp"

namespace guidiff::sigma_sampling {
namespace {

namespace support = sampler_support;

// Every check before the first step; returns the name for the member initialiser.
std::string checked(const std::string& name, const Denoiser& model, const SigmaSchedule& schedule,
                    const SampleBatch& batch, bool stochastic) {
  schedule.validate(name);
  support::check_time_kind(model, schedule.model.kind(), name);
  support::check_batch(batch, stochastic, name);
  return name;
}

}  // namespace

double lambda_of(double sigma) { return -std::log(sigma); }
double sigma_of(double lambda) { return std::exp(-lambda); }

AncestralStep ancestral_step(double sigma_from, double sigma_to, double eta) {
  const double up = std::min(sigma_to, eta * std::sqrt(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) /
                                                       (sigma_from * sigma_from)));
  return {std::sqrt(sigma_to * sigma_to - up * up), up};
}

double churned_sigma(const ChurnOptions& churn, double sigma, int64_t num_steps) {
  const bool inside = churn.s_tmin <= sigma && sigma <= churn.s_tmax;
  const double gamma = inside ? std::min(churn.s_churn / double(num_steps), std::sqrt(2.0) - 1.0) : 0.0;
  return (1.0 + gamma) * sigma;
}

SigmaRun::SigmaRun(std::string name, Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                   const SampleNoise& noise, const SamplerCommon& options, bool stochastic, bool allows_renoise)
    : name_(checked(name, model, schedule, batch, stochastic)),
      model_(model),
      schedule_(schedule),
      batch_(batch),
      noise_(noise),
      options_(options),
      allows_renoise_(allows_renoise),
      recorder_(options, schedule.num_steps(), batch) {}

torch::Tensor SigmaRun::start() const {
  return batch_.x_T.to(torch::kFloat64) * std::sqrt(1.0 + sigma(0) * sigma(0));
}

Denoised SigmaRun::denoise(const torch::Tensor& x, double sigma) {
  // The model sees the VP state x / sqrt(1 + sigma^2) = sqrt(abar) x at its own time, in
  // x_T's dtype (float32 for networks); the sampler keeps x in float64.
  const torch::Tensor model_input = (x / std::sqrt(1.0 + sigma * sigma)).to(batch_.x_T.scalar_type());
  const torch::Tensor time =
      schedule_.model.time_for(sigma, x.size(0), batch_.x_T.scalar_type()).to(x.device());
  const DenoiserOutput out = support::predict_checked(model_, model_input, time, batch_.labels, name_, allows_renoise_);
  Denoised result;
  result.eps = out.eps.to(torch::kFloat64);
  result.denoised = x - sigma * result.eps;  // D = x - sigma eps
  if (options_.clip_x0) {
    result.denoised = result.denoised.clamp(-1.0, 1.0);
    result.eps = (x - result.denoised) / sigma;  // keep d consistent with the clamped D
  }
  result.renoise_eps = out.renoise_eps.defined() ? out.renoise_eps.to(torch::kFloat64) : result.eps;
  return result;
}

torch::Tensor SigmaRun::noise(int64_t step) const {
  return support::step_noise(noise_, batch_.sample_indices, num_steps() - 1 - step,
                             batch_.x_T.to(torch::kFloat64));
}

void SigmaRun::step_done(int64_t step, const torch::Tensor& x) {
  if (!options_.keep_trajectory) {
    recorder_.step_done(x);  // progress only: the VP copy would be thrown away
    return;
  }
  const double next = sigma(step + 1);
  recorder_.step_done((x / std::sqrt(1.0 + next * next)).to(batch_.x_T.scalar_type()));
}

SamplingResult SigmaRun::finish(const torch::Tensor& x) {
  return recorder_.finish(x.to(batch_.x_T.scalar_type()), name_);
}

}  // namespace guidiff::sigma_sampling
