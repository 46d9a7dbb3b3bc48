// The continuous-time sampler of Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance"),
// Algorithm 2, over a log-SNR model. Notation: alpha_l^2 = sigmoid(l), sigma_l^2 =
// sigmoid(-l); a step goes from l = lambda_i to the less noisy l' = lambda_{i+1} > l.
#include <cmath>

#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/sampler_support.hpp"
#include "guidiff/sampling/samplers.hpp"

namespace guidiff {
namespace {

// The schedule quantities at one log-SNR level, in float64.
struct LogSnrLevel {
  double lambda;
  double alpha;
  double sigma_squared;
};

// lambda_i = lambda(u_i) with u_i = 1 - i/steps, i = 0..steps (lambda_0 = lambda_min).
std::vector<LogSnrLevel> log_snr_levels(const LogSnrSchedule& schedule, int64_t steps) {
  const torch::Tensor u = 1.0 - torch::arange(steps + 1, torch::kDouble) / static_cast<double>(steps);
  const torch::Tensor lambdas = schedule.lambda_of_u(u);
  const torch::Tensor alpha_squared = alpha_squared_of_log_snr(lambdas);
  const torch::Tensor sigma_squared = sigma_squared_of_log_snr(lambdas);
  std::vector<LogSnrLevel> levels;
  for (int64_t i = 0; i <= steps; ++i) {
    levels.push_back({lambdas[i].item<double>(), std::sqrt(alpha_squared[i].item<double>()),
                      sigma_squared[i].item<double>()});
  }
  return levels;
}

}  // namespace

SamplingResult sample_cfg_continuous(Denoiser& model, const SampleBatch& batch,
                                     const SampleNoise& noise, const CfgContinuousOptions& options) {
  namespace support = sampler_support;
  const std::string name = "cfg-continuous";
  support::check_time_kind(model, TimeKind::log_snr, name);
  options.schedule.validate();
  if (options.steps < 1) {
    throw InputError("cfg-continuous sampler: steps must be >= 1, got " + std::to_string(options.steps));
  }
  const double v = options.variance_exponent;
  if (!std::isfinite(v) || v < 0.0 || v > 1.0) {
    throw InputError("cfg-continuous sampler: the variance exponent v must be in [0, 1], got " +
                     std::to_string(v));
  }
  support::check_batch(batch, /*needs_noise=*/options.steps > 1, name);

  c10::InferenceMode inference;  // classifier gradients turn autograd back on locally
  const std::vector<LogSnrLevel> levels = log_snr_levels(options.schedule, options.steps);
  support::StepRecorder recorder(options, options.steps, batch);
  torch::Tensor z = batch.x_T;
  for (int64_t i = 0; i < options.steps; ++i) {
    const LogSnrLevel& now = levels[i];
    const torch::Tensor time =
        torch::full({z.size(0)}, now.lambda, torch::dtype(torch::kFloat).device(z.device()));
    const torch::Tensor eps = support::predict_checked(model, z, time, batch.labels, name).eps;
    // x~ = (z - sigma_l eps~) / alpha_l
    torch::Tensor x_pred = (z - std::sqrt(now.sigma_squared) * eps) / now.alpha;
    if (options.clip_x0) x_pred = x_pred.clamp(-1.0, 1.0);
    if (i + 1 == options.steps) {
      z = x_pred;  // the last step returns the predicted x
    } else {
      const LogSnrLevel& next = levels[i + 1];
      const double decay = std::exp(now.lambda - next.lambda);  // e^{l - l'} < 1
      // mu~_{l'|l}(z, x) = e^{l-l'} (alpha_l' / alpha_l) z + (1 - e^{l-l'}) alpha_l' x
      const torch::Tensor mean =
          decay * (next.alpha / now.alpha) * z + (1.0 - decay) * next.alpha * x_pred;
      // sigma~^2_{l'|l} = (1 - e^{l-l'}) sigma_l'^2 ; sigma^2_{l|l'} = (1 - e^{l-l'}) sigma_l^2
      const double forward_variance = (1.0 - decay) * next.sigma_squared;
      const double reverse_variance = (1.0 - decay) * now.sigma_squared;
      // Algorithm 2: variance (sigma~^2_{l'|l})^{1-v} (sigma^2_{l|l'})^v
      const double variance = std::pow(forward_variance, 1.0 - v) * std::pow(reverse_variance, v);
      z = mean + std::sqrt(variance) * support::step_noise(noise, batch.sample_indices, i, z);
    }
    recorder.step_done(z);
  }
  return recorder.finish(z, name);
}

}  // namespace guidiff
