// Pure tensor maths of the Gaussian diffusion process (no models, no I/O).
// Equation numbers: Ho et al. 2020 (DDPM), Nichol & Dhariwal 2021 (Improved DDPM),
// Song et al. 2021 (DDIM). step_index is the schedule's (possibly respaced) index, int64 [N].
#pragma once
#include <torch/torch.h>

#include <string>

#include "guidiff/schedule/discrete_schedule.hpp"

namespace guidiff {

// A diagonal Gaussian over x's elements.
struct Gaussian {
  torch::Tensor mean;
  torch::Tensor variance;
  torch::Tensor log_variance;
};

// How the reverse-step variance Sigma_theta is chosen.
enum class VarianceKind {
  fixed_small,    // beta~_t, the true posterior variance (DDPM eq. 7)
  fixed_large,    // beta_t (with beta~_1 at the first step, as guided-diffusion does)
  learned_range,  // exp(v log beta_t + (1 - v) log beta~_t), Improved DDPM eq. 15,
                  // with the model output mapped from [-1, 1] to v in [0, 1]
};
VarianceKind parse_variance_kind(const std::string& name);  // "fixed-small" | "fixed-large" | "learned-range"

// x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (DDPM eq. 4)
torch::Tensor q_sample(const DiscreteSchedule& schedule, const torch::Tensor& x0,
                       const torch::Tensor& step_index, const torch::Tensor& noise);

// q(x_{t-1} | x_t, x0) = N(mu~_t, beta~_t I)   (DDPM eqs. 6-7)
Gaussian q_posterior(const DiscreteSchedule& schedule, const torch::Tensor& x0,
                     const torch::Tensor& x_t, const torch::Tensor& step_index);

// x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)   (DDPM eq. 4 solved for x0)
torch::Tensor predict_x0_from_eps(const DiscreteSchedule& schedule, const torch::Tensor& x_t,
                                  const torch::Tensor& step_index, const torch::Tensor& eps);
// eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)
torch::Tensor predict_eps_from_x0(const DiscreteSchedule& schedule, const torch::Tensor& x_t,
                                  const torch::Tensor& step_index, const torch::Tensor& x0);
// grad_x log p_t(x) = -eps / sqrt(1 - abar)   (Song et al. 2021, score-based SDEs, eq. 11 view)
torch::Tensor score_from_eps(const DiscreteSchedule& schedule, const torch::Tensor& step_index,
                             const torch::Tensor& eps);
torch::Tensor eps_from_score(const DiscreteSchedule& schedule, const torch::Tensor& step_index,
                             const torch::Tensor& score);

// The reverse-step Gaussian p_theta(x_{t-1} | x_t) from a model's eps (and, for
// learned_range, its raw variance output in [-1, 1]). When clip_x0 is set the predicted x0
// is clamped to [-1, 1] before the posterior mean is formed. pred_x0 is returned too.
struct ReverseStep {
  Gaussian gaussian;
  torch::Tensor pred_x0;
};
ReverseStep p_mean_variance(const DiscreteSchedule& schedule, const torch::Tensor& x_t,
                            const torch::Tensor& step_index, const torch::Tensor& eps,
                            const torch::Tensor& variance_output, VarianceKind variance_kind,
                            bool clip_x0);

}  // namespace guidiff
