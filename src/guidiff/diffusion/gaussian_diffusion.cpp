// Pure tensor maths of the Gaussian diffusion process (see gaussian_diffusion.hpp).
// Schedule coefficients are float64; every formula is evaluated in float64 and the result
// returned in x's dtype, so float32 callers lose nothing to the coefficients' rounding.
#include "guidiff/diffusion/gaussian_diffusion.hpp"

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

// values[step_index] as float64 [N, 1, ...] on x's device (gather_for against a tiny
// float64 stand-in of x's rank, so x itself is not converted).
torch::Tensor coefficient(const torch::Tensor& values, const torch::Tensor& step_index,
                          const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  return gather_for(values, step_index, torch::empty(shape, x.options().dtype(torch::kFloat64)));
}

torch::Tensor as_float64(const torch::Tensor& x) { return x.to(torch::kFloat64); }

void require_same_shape(const torch::Tensor& a, const char* a_name, const torch::Tensor& b,
                        const char* b_name) {
  if (!a.defined() || !b.defined() || a.sizes() != b.sizes()) {
    throw InputError(std::string(a_name) + " and " + b_name +
                     " must be defined and of the same shape");
  }
}

// A [N, 1, ...] float64 variance / log-variance expanded over x's elements in x's dtype.
torch::Tensor over_elements(const torch::Tensor& per_sample, const torch::Tensor& x) {
  return per_sample.to(x.scalar_type()).expand_as(x);
}

}  // namespace

VarianceKind parse_variance_kind(const std::string& name) {
  if (name == "fixed-small") return VarianceKind::fixed_small;
  if (name == "fixed-large") return VarianceKind::fixed_large;
  if (name == "learned-range") return VarianceKind::learned_range;
  throw InputError("unknown variance kind '" + name +
                   "' (expected fixed-small, fixed-large or learned-range)");
}

torch::Tensor q_sample(const DiscreteSchedule& schedule, const torch::Tensor& x0,
                       const torch::Tensor& step_index, const torch::Tensor& noise) {
  require_same_shape(x0, "x0", noise, "noise");
  // DDPM eq. 4: q(x_t | x0) = N(sqrt(abar_t) x0, (1 - abar_t) I).
  const auto signal = coefficient(schedule.sqrt_alphas_cumprod, step_index, x0);
  const auto noise_scale = coefficient(schedule.sqrt_one_minus_alphas_cumprod, step_index, x0);
  return (signal * as_float64(x0) + noise_scale * as_float64(noise)).to(x0.scalar_type());
}

Gaussian q_posterior(const DiscreteSchedule& schedule, const torch::Tensor& x0,
                     const torch::Tensor& x_t, const torch::Tensor& step_index) {
  require_same_shape(x0, "x0", x_t, "x_t");
  // DDPM eqs. 6-7: mu~_t = coef1 x0 + coef2 x_t, variance beta~_t.
  const auto coef1 = coefficient(schedule.posterior_mean_coef1, step_index, x_t);
  const auto coef2 = coefficient(schedule.posterior_mean_coef2, step_index, x_t);
  Gaussian posterior;
  posterior.mean = (coef1 * as_float64(x0) + coef2 * as_float64(x_t)).to(x_t.scalar_type());
  posterior.variance =
      over_elements(coefficient(schedule.posterior_variance, step_index, x_t), x_t);
  posterior.log_variance =
      over_elements(coefficient(schedule.posterior_log_variance_clipped, step_index, x_t), x_t);
  return posterior;
}

torch::Tensor predict_x0_from_eps(const DiscreteSchedule& schedule, const torch::Tensor& x_t,
                                  const torch::Tensor& step_index, const torch::Tensor& eps) {
  require_same_shape(x_t, "x_t", eps, "eps");
  // DDPM eq. 4 solved for x0: x0 = x_t / sqrt(abar) - sqrt(1/abar - 1) eps.
  const auto recip = coefficient(schedule.sqrt_recip_alphas_cumprod, step_index, x_t);
  const auto recipm1 = coefficient(schedule.sqrt_recipm1_alphas_cumprod, step_index, x_t);
  return (recip * as_float64(x_t) - recipm1 * as_float64(eps)).to(x_t.scalar_type());
}

torch::Tensor predict_eps_from_x0(const DiscreteSchedule& schedule, const torch::Tensor& x_t,
                                  const torch::Tensor& step_index, const torch::Tensor& x0) {
  require_same_shape(x_t, "x_t", x0, "x0");
  // DDPM eq. 4 solved for eps: eps = (x_t / sqrt(abar) - x0) / sqrt(1/abar - 1).
  const auto recip = coefficient(schedule.sqrt_recip_alphas_cumprod, step_index, x_t);
  const auto recipm1 = coefficient(schedule.sqrt_recipm1_alphas_cumprod, step_index, x_t);
  return ((recip * as_float64(x_t) - as_float64(x0)) / recipm1).to(x_t.scalar_type());
}

torch::Tensor score_from_eps(const DiscreteSchedule& schedule, const torch::Tensor& step_index,
                             const torch::Tensor& eps) {
  // q(x_t | x0) has score -(x_t - sqrt(abar) x0)/(1 - abar) = -eps / sqrt(1 - abar); the
  // eps-prediction is the conditional mean of eps, hence grad log p_t = -eps / sqrt(1 - abar).
  const auto sigma = coefficient(schedule.sqrt_one_minus_alphas_cumprod, step_index, eps);
  return (-as_float64(eps) / sigma).to(eps.scalar_type());
}

torch::Tensor eps_from_score(const DiscreteSchedule& schedule, const torch::Tensor& step_index,
                             const torch::Tensor& score) {
  const auto sigma = coefficient(schedule.sqrt_one_minus_alphas_cumprod, step_index, score);
  return (-sigma * as_float64(score)).to(score.scalar_type());
}

ReverseStep p_mean_variance(const DiscreteSchedule& schedule, const torch::Tensor& x_t,
                            const torch::Tensor& step_index, const torch::Tensor& eps,
                            const torch::Tensor& variance_output, VarianceKind variance_kind,
                            bool clip_x0) {
  if (!eps.defined() || eps.sizes() != x_t.sizes()) {
    throw ModelError("model eps must have the shape of x_t");
  }
  ReverseStep step;
  // Predicted x0 (DDPM eq. 4 inverted), optionally clipped to the data range [-1, 1];
  // the reverse mean is the posterior mean at that x0 (DDPM eq. 7; equal to DDPM eq. 11
  // when nothing is clipped).
  auto pred_x0 = predict_x0_from_eps(schedule, x_t, step_index, eps);
  if (clip_x0) pred_x0 = pred_x0.clamp(-1.0, 1.0);
  const auto posterior = q_posterior(schedule, pred_x0, x_t, step_index);
  step.pred_x0 = pred_x0;
  step.gaussian.mean = posterior.mean;

  const int64_t T = schedule.num_steps();
  switch (variance_kind) {
    case VarianceKind::fixed_small:  // sigma_t^2 = beta~_t (DDPM Sec. 3.2)
      step.gaussian.variance = posterior.variance;
      step.gaussian.log_variance = posterior.log_variance;
      break;
    case VarianceKind::fixed_large: {
      // sigma_t^2 = beta_t, with beta~_1 at t = 0 (as guided-diffusion)
      const auto large = T > 1 ? torch::cat({schedule.posterior_variance.slice(0, 1, 2),
                                             schedule.betas.slice(0, 1, T)})
                               : schedule.betas;
      const auto variance = coefficient(large, step_index, x_t);
      step.gaussian.variance = over_elements(variance, x_t);
      step.gaussian.log_variance = over_elements(variance.log(), x_t);
      break;
    }
    case VarianceKind::learned_range: {
      // Improved DDPM eq. 15: log Sigma = v log beta_t + (1 - v) log beta~_t, where the model
      // output in [-1, 1] is mapped to v = (output + 1) / 2.
      if (!variance_output.defined() || variance_output.sizes() != x_t.sizes()) {
        throw ModelError("learned-range variance needs a model variance output of x_t's shape");
      }
      const auto min_log = coefficient(schedule.posterior_log_variance_clipped, step_index, x_t);
      const auto max_log = coefficient(schedule.betas, step_index, x_t).log();
      const auto frac = (as_float64(variance_output) + 1.0) / 2.0;
      const auto log_variance = frac * max_log + (1.0 - frac) * min_log;
      step.gaussian.log_variance = log_variance.to(x_t.scalar_type());
      step.gaussian.variance = log_variance.exp().to(x_t.scalar_type());
      break;
    }
  }
  return step;
}

}  // namespace guidiff
