// Training objectives: the denoiser losses of DDPM / Improved DDPM / classifier-free guidance
// and the noisy classifier's cross-entropy, with the small named formulas they are built from.
// Every random input comes from the caller's StepDraws, so a training step is a pure function
// of (weights, batch, draws), and the draws of a sample depend on (seed, step, slot) alone.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"

namespace guidiff {

// ---- Formulas -------------------------------------------------------------------------

// KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) per element, in nats:
// 0.5 (-1 + log_var2 - log_var1 + exp(log_var1 - log_var2) + (mean1 - mean2)^2 exp(-log_var2)).
// Arguments broadcast against each other.
torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& log_var1,
                        const torch::Tensor& mean2, const torch::Tensor& log_var2);

// Phi(x) = (1 + erf(x / sqrt 2)) / 2, the standard normal CDF.
torch::Tensor standard_normal_cdf(const torch::Tensor& x);

// log p(x) per element under the discretised Gaussian decoder of DDPM Sec. 3.3 (eq. 13): data
// in [-1, 1] quantised to 256 levels, each level the bin x +- 1/255 of N(mean, exp(log_scale)^2),
// the two outermost bins extended to -inf / +inf. Probabilities are floored at 1e-12.
torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                  const torch::Tensor& log_scale);

// The mean over every dimension but the first: [N, ...] -> [N].
torch::Tensor mean_over_sample(const torch::Tensor& x);

// ---- Draws ----------------------------------------------------------------------------

// The random inputs of one training step for some samples of its global batch (the batch
// all processes of a data-parallel run train on together). Sample k's draws are a function
// of (seed, step, slot k) alone, its slot being its position in the global batch, so how the
// global batch is split across processes changes nothing.
struct StepDraws {
  torch::Tensor time;     // float64 [N] in [0, 1): t = floor(time T) (discrete) or u (continuous)
  torch::Tensor noise;    // float32 [N, sample_shape...] ~ N(0, I)
  torch::Tensor dropout;  // float64 [N] in [0, 1): the label is dropped when dropout < p_uncond
  int64_t size() const { return noise.size(0); }
};

// The draws of step `step` for the samples in global slots `slots` (int64 [N]): time and
// dropout from 53 bits of data_random_bits(seed, domain, step, slot) each, noise from the
// counter-based SampleNoise keyed by (seed, step) and the slot.
StepDraws draw_step(uint64_t seed, int64_t step, const torch::Tensor& slots, torch::IntArrayRef sample_shape);

// t = floor(u^power T), int64 [N], for u = StepDraws::time. power 1: uniform on {0, ..., T - 1}
// (53-bit u: each t's probability is 1/T within T / 2^53). Otherwise P(t < k) = (k / T)^(1/power).
torch::Tensor timesteps_from_uniform(const torch::Tensor& u, int64_t num_timesteps, double power = 1.0);

// Label dropout of classifier-free guidance (Ho & Salimans 2022, Algorithm 1): each label is
// replaced by the null class `num_classes` where its uniform draw is below p_uncond.
// labels: int64 [N]; uniform: float64 [N] in [0, 1). Throws InputError unless 0 <= p_uncond <= 1.
torch::Tensor drop_labels(const torch::Tensor& labels, double p_uncond, int64_t num_classes,
                          const torch::Tensor& uniform);

// ---- Denoiser losses ------------------------------------------------------------------

enum class DiffusionObjective {
  eps,             // DDPM eq. 14, L_simple: || eps - eps_theta(x_t, t) ||^2, t uniform
  hybrid,          // Improved DDPM Sec. 3.1: L_simple + lambda L_vlb (learned variance)
  cfg_continuous,  // Ho & Salimans 2022 Algorithm 1: eps MSE at lambda(u), u ~ U[0, 1]
};
DiffusionObjective parse_objective(const std::string& name);  // "eps" | "hybrid" | "cfg-continuous"
std::string to_string(DiffusionObjective objective);

// Scalars averaged over the batch. mse is the per-sample mean of (eps - eps_theta)^2; vlb is
// the per-sample L_t in bits per dimension (defined for hybrid only); loss is what is
// minimised.
struct DiffusionLoss {
  torch::Tensor loss;
  torch::Tensor mse;
  torch::Tensor vlb;
};

// The VLB term L_t per sample, in bits per dimension (Improved DDPM eqs. 4-6; guided-diffusion's
// _vb_terms_bpd): KL(q(x_{t-1} | x_t, x0) || p_theta(x_{t-1} | x_t)) for t > 0, and the decoder
// NLL -log p_theta(x0 | x1) (discretised Gaussian) at t = 0. p_theta has the learned-range
// variance of Improved DDPM eq. 15 and the mean implied by `eps`, without clipping. Pass
// eps.detach() for the stop-gradient of Sec. 3.1 (then only the variance learns from L_vlb).
// step_index indexes `schedule`, which must be the unrespaced training schedule.
torch::Tensor vlb_terms(const DiscreteSchedule& schedule, const torch::Tensor& x0,
                        const torch::Tensor& x_t, const torch::Tensor& step_index,
                        const torch::Tensor& eps, const torch::Tensor& variance_output);

// One batch of the discrete-time objective (eps or hybrid), with t = timesteps_from_uniform(
// draws.time), the noise eps = draws.noise and the label dropout from draws.dropout
// (conditional models only). Then x_t = q_sample(x0, t, eps) (DDPM eq. 4) and, for hybrid,
//   loss = mse + vlb_weight * T * L_t,
// the uniform-t estimate of lambda L_vlb with L_vlb = sum_t L_t (Improved DDPM Sec. 3.1,
// lambda = 0.001), the KL computed with the model's eps detached. labels: int64 [N], ignored
// by an unconditional model (num_classes() == 0). Throws ModelError when the objective does
// not fit the model (hybrid without a learned variance, eps with one, a log-SNR-time model).
DiffusionLoss discrete_diffusion_loss(Denoiser& model, const DiscreteSchedule& schedule,
                                      DiffusionObjective objective, const torch::Tensor& x0,
                                      const torch::Tensor& labels, double p_uncond,
                                      double vlb_weight, const StepDraws& draws);

// One batch of Ho & Salimans 2022 Algorithm 1 for a log-SNR-time model: u = draws.time,
// eps = draws.noise, the label dropout from draws.dropout (conditional models only). Then
// lambda = schedule.lambda_of_u(u), z = alpha_lambda x0 + sigma_lambda eps with
// alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda), and loss = mse of eps_theta(z, lambda).
// Throws ModelError for a discrete-time model.
DiffusionLoss continuous_diffusion_loss(Denoiser& model, const LogSnrSchedule& schedule,
                                        const torch::Tensor& x0, const torch::Tensor& labels,
                                        double p_uncond, const StepDraws& draws);

// ---- Classifier loss ------------------------------------------------------------------

struct ClassifierLoss {
  torch::Tensor loss;       // mean cross-entropy, scalar
  torch::Tensor timesteps;  // int64 [N], the t each sample was noised to
  torch::Tensor correct;    // bool [N], argmax logits == label
};

// The noise-aware classifier of Dhariwal & Nichol 2021 (Sec. 4.1): t = timesteps_from_uniform(
// draws.time, max_t, t_power) (t_power 1: uniform on {0, ..., max_t - 1}, as in the paper),
// eps = draws.noise, x_t = q_sample(x0, t, eps), loss = cross-entropy(classifier(x_t, t), y).
// Throws ModelError for a log-SNR-time classifier and InputError unless 1 <= max_t <= T.
ClassifierLoss classifier_loss(Classifier& classifier, const DiscreteSchedule& schedule,
                               const torch::Tensor& x0, const torch::Tensor& labels, int64_t max_t,
                               double t_power, const StepDraws& draws);

// Accuracy per noise-level bucket: [0, max_t) cut into `buckets` equal ranges of t.
class BucketAccuracy {
 public:
  BucketAccuracy(int64_t max_t, int64_t buckets);  // InputError unless both >= 1
  void add(const torch::Tensor& timesteps, const torch::Tensor& correct);
  // Adds another tally's counts (e.g. those of the other processes). InputError unless it has
  // the same buckets.
  void add(const BucketAccuracy& other);
  void clear();
  int64_t bucket_of(int64_t t) const;
  int64_t buckets() const { return static_cast<int64_t>(total_.size()); }
  int64_t total(int64_t bucket) const { return total_.at(static_cast<size_t>(bucket)); }
  int64_t correct(int64_t bucket) const { return correct_.at(static_cast<size_t>(bucket)); }
  double overall() const;  // NaN when empty
  // [{"t_min", "t_max" (inclusive), "count", "accuracy" (null when count is 0)}, ...]
  nlohmann::json to_json() const;
  // Counts as saved by counts_json() / restored by restore_counts() (for resume files).
  nlohmann::json counts_json() const;
  void restore_counts(const nlohmann::json& counts);  // InputError if the shape differs

 private:
  int64_t max_t_;
  std::vector<int64_t> correct_;
  std::vector<int64_t> total_;
};

}  // namespace guidiff
