// Training objectives (see losses.hpp).
#include "guidiff/training/losses.hpp"

#include <cmath>
#include <limits>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/random_order.hpp"
#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/sampling/sample_noise.hpp"

namespace guidiff {
namespace {

constexpr double kLog2 = 0.69314718055994530942;
constexpr double kSqrtHalf = 0.70710678118654752440;  // 1 / sqrt(2)

// The data_random_bits domains of the training draws (the data layer uses 1 and 2).
constexpr uint64_t kStepNoiseDomain = 16;
constexpr uint64_t kStepTimeDomain = 17;
constexpr uint64_t kStepDropoutDomain = 18;
constexpr double kTwoToMinus53 = 1.0 / 9007199254740992.0;

// A uniform double in [0, 1) from the top 53 of 64 random bits.
double uniform_from_bits(uint64_t bits) { return static_cast<double>(bits >> 11) * kTwoToMinus53; }

void require_draws(const StepDraws& draws, const torch::Tensor& x0) {
  if (!draws.noise.defined() || draws.noise.sizes() != x0.sizes() || !draws.time.defined() ||
      draws.time.numel() != x0.size(0) || !draws.dropout.defined() || draws.dropout.numel() != x0.size(0)) {
    throw InputError("the step's draws (noise " + (draws.noise.defined() ? c10::str(draws.noise.sizes()) : std::string("missing")) +
                     ") do not match the batch " + c10::str(x0.sizes()));
  }
}

void require_labels(const torch::Tensor& labels, const torch::Tensor& x0) {
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != x0.size(0) ||
      labels.scalar_type() != torch::kInt64) {
    throw InputError("labels must be int64 [" + std::to_string(x0.size(0)) + "] for a class-conditional model");
  }
}

// The labels the model sees: dropped to the null class for a conditional model, nothing
// (and no draw) for an unconditional one.
torch::Tensor conditioning_labels(const Denoiser& model, const torch::Tensor& x0, const torch::Tensor& labels,
                                  double p_uncond, const StepDraws& draws) {
  if (model.num_classes() == 0) {
    if (p_uncond > 0.0) throw InputError("p_uncond > 0 needs a class-conditional model (num_classes > 0)");
    return {};
  }
  require_labels(labels, x0);
  return drop_labels(labels.to(torch::kCPU), p_uncond, model.num_classes(), draws.dropout).to(x0.device());
}

torch::Tensor squared_error(const torch::Tensor& a, const torch::Tensor& b) { return mean_over_sample((a - b).pow(2)); }

}  // namespace

torch::Tensor normal_kl(const torch::Tensor& mean1, const torch::Tensor& log_var1, const torch::Tensor& mean2,
                        const torch::Tensor& log_var2) {
  return 0.5 * (-1.0 + log_var2 - log_var1 + torch::exp(log_var1 - log_var2) +
                (mean1 - mean2).pow(2) * torch::exp(-log_var2));
}

torch::Tensor standard_normal_cdf(const torch::Tensor& x) { return 0.5 * (1.0 + torch::erf(x * kSqrtHalf)); }

torch::Tensor discretized_gaussian_log_likelihood(const torch::Tensor& x, const torch::Tensor& mean,
                                                  const torch::Tensor& log_scale) {
  // DDPM eq. 13: the bin [x - 1/255, x + 1/255] of N(mean, scale^2), with the bins of the
  // extreme values -1 and 1 reaching to -inf and +inf.
  constexpr double kHalfBin = 1.0 / 255.0;
  constexpr double kFloor = 1e-12;
  const auto centred = x - mean;
  const auto inverse_scale = torch::exp(-log_scale);
  const auto cdf_upper = standard_normal_cdf(inverse_scale * (centred + kHalfBin));
  const auto cdf_lower = standard_normal_cdf(inverse_scale * (centred - kHalfBin));
  const auto log_below_upper = torch::log(cdf_upper.clamp_min(kFloor));      // bin (-inf, x + 1/255]
  const auto log_above_lower = torch::log((1.0 - cdf_lower).clamp_min(kFloor));  // bin [x - 1/255, inf)
  const auto log_in_bin = torch::log((cdf_upper - cdf_lower).clamp_min(kFloor));
  return torch::where(x < -0.999, log_below_upper, torch::where(x > 0.999, log_above_lower, log_in_bin));
}

torch::Tensor mean_over_sample(const torch::Tensor& x) { return x.reshape({x.size(0), -1}).mean(1); }

StepDraws draw_step(uint64_t seed, int64_t step, const torch::Tensor& slots, torch::IntArrayRef sample_shape) {
  if (!slots.defined() || slots.dim() != 1 || slots.scalar_type() != torch::kInt64) {
    throw InputError("draw_step: slots must be int64 [N]");
  }
  const torch::Tensor where = slots.to(torch::kCPU).contiguous();
  const int64_t n = where.size(0);
  StepDraws draws;
  draws.time = torch::empty({n}, torch::kFloat64);
  draws.dropout = torch::empty({n}, torch::kFloat64);
  const auto* slot = where.data_ptr<int64_t>();
  auto* time = draws.time.data_ptr<double>();
  auto* dropout = draws.dropout.data_ptr<double>();
  for (int64_t i = 0; i < n; ++i) {
    const auto a = static_cast<uint64_t>(step), b = static_cast<uint64_t>(slot[i]);
    time[i] = uniform_from_bits(data_random_bits(seed, kStepTimeDomain, a, b));
    dropout[i] = uniform_from_bits(data_random_bits(seed, kStepDropoutDomain, a, b));
  }
  const SampleNoise noise(data_random_bits(seed, kStepNoiseDomain, static_cast<uint64_t>(step), 0));
  draws.noise = noise.normal(where, 0, sample_shape);
  return draws;
}

torch::Tensor timesteps_from_uniform(const torch::Tensor& u, int64_t num_timesteps, double power) {
  // floor(u^p T) < T for u < 1; the clamp only guards against u rounding up to 1. p = 1 skips
  // pow so the uniform draws stay bit-identical to those of runs made before the power existed.
  torch::Tensor v = u.to(torch::kFloat64);
  if (power != 1.0) v = v.pow(power);
  return (v * static_cast<double>(num_timesteps)).floor().to(torch::kInt64).clamp_max(num_timesteps - 1);
}

torch::Tensor drop_labels(const torch::Tensor& labels, double p_uncond, int64_t num_classes,
                          const torch::Tensor& uniform) {
  if (!(p_uncond >= 0.0 && p_uncond <= 1.0)) {
    throw InputError("p_uncond must lie in [0, 1], got " + std::to_string(p_uncond));
  }
  if (!uniform.defined() || uniform.numel() != labels.size(0)) {
    throw InputError("drop_labels: one uniform draw per label is needed");
  }
  return torch::where(uniform.to(labels.device()) < p_uncond, torch::full_like(labels, num_classes), labels);
}

DiffusionObjective parse_objective(const std::string& name) {
  if (name == "eps") return DiffusionObjective::eps;
  if (name == "hybrid") return DiffusionObjective::hybrid;
  if (name == "cfg-continuous") return DiffusionObjective::cfg_continuous;
  throw InputError("unknown --objective '" + name + "' (expected eps, hybrid or cfg-continuous)");
}

std::string to_string(DiffusionObjective objective) {
  switch (objective) {
    case DiffusionObjective::eps: return "eps";
    case DiffusionObjective::hybrid: return "hybrid";
    case DiffusionObjective::cfg_continuous: return "cfg-continuous";
  }
  return "unknown";
}

torch::Tensor vlb_terms(const DiscreteSchedule& schedule, const torch::Tensor& x0, const torch::Tensor& x_t,
                        const torch::Tensor& step_index, const torch::Tensor& eps,
                        const torch::Tensor& variance_output) {
  // Improved DDPM eqs. 4-6: L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) and
  // L_0 = -log p(x0 | x1); both as means over dimensions, in bits.
  const Gaussian truth = q_posterior(schedule, x0, x_t, step_index);
  const ReverseStep model =
      p_mean_variance(schedule, x_t, step_index, eps, variance_output, VarianceKind::learned_range, false);
  const auto kl = mean_over_sample(
                      normal_kl(truth.mean, truth.log_variance, model.gaussian.mean, model.gaussian.log_variance)) /
                  kLog2;
  const auto decoder_nll =
      -mean_over_sample(discretized_gaussian_log_likelihood(x0, model.gaussian.mean, 0.5 * model.gaussian.log_variance)) /
      kLog2;
  return torch::where(step_index.to(x0.device()) == 0, decoder_nll, kl);
}

DiffusionLoss discrete_diffusion_loss(Denoiser& model, const DiscreteSchedule& schedule, DiffusionObjective objective,
                                      const torch::Tensor& x0, const torch::Tensor& labels, double p_uncond,
                                      double vlb_weight, const StepDraws& draws) {
  if (model.time_kind() != TimeKind::discrete_timestep) {
    throw ModelError("objective " + to_string(objective) + " trains a discrete-time model; this one takes log-SNR time (use cfg-continuous)");
  }
  if (objective == DiffusionObjective::cfg_continuous) {
    throw InputError("discrete_diffusion_loss: cfg-continuous is continuous_diffusion_loss's objective");
  }
  if (objective == DiffusionObjective::hybrid && !model.learns_variance()) {
    throw ModelError("objective hybrid trains a learned variance; the model has learn_sigma off (use eps)");
  }
  if (objective == DiffusionObjective::eps && model.learns_variance()) {
    throw ModelError("objective eps leaves the learned variance untrained; the model has learn_sigma on (use hybrid)");
  }
  require_draws(draws, x0);
  const auto t = timesteps_from_uniform(draws.time, schedule.num_steps()).to(x0.device());
  const auto noise = draws.noise.to(x0.device(), x0.scalar_type());
  const auto y = conditioning_labels(model, x0, labels, p_uncond, draws);

  const auto x_t = q_sample(schedule, x0, t, noise);  // DDPM eq. 4
  const DenoiserOutput out = model.predict(x_t, t, y);
  DiffusionLoss result;
  const auto mse = squared_error(noise, out.eps);  // DDPM eq. 14
  result.mse = mse.mean();
  result.loss = result.mse;
  if (objective == DiffusionObjective::hybrid) {
    // Improved DDPM Sec. 3.1: the stop-gradient on the mean lets L_vlb guide only Sigma.
    const auto vlb = vlb_terms(schedule, x0, x_t, t, out.eps.detach(), out.variance_output);
    result.vlb = vlb.mean();
    result.loss = (mse + vlb_weight * static_cast<double>(schedule.num_steps()) * vlb).mean();
  }
  return result;
}

DiffusionLoss continuous_diffusion_loss(Denoiser& model, const LogSnrSchedule& schedule, const torch::Tensor& x0,
                                        const torch::Tensor& labels, double p_uncond, const StepDraws& draws) {
  if (model.time_kind() != TimeKind::log_snr) {
    throw ModelError("objective cfg-continuous trains a log-SNR-time model; this one takes discrete timesteps (use eps or hybrid)");
  }
  if (model.learns_variance()) throw ModelError("objective cfg-continuous does not train a learned variance (learn_sigma must be off)");
  require_draws(draws, x0);
  const int64_t batch = x0.size(0);
  // Ho & Salimans 2022 Algorithm 1, one line each.
  const auto u = draws.time.to(torch::kFloat64);
  const auto noise = draws.noise.to(x0.device(), x0.scalar_type());
  const auto y = conditioning_labels(model, x0, labels, p_uncond, draws);
  const auto lambda = schedule.lambda_of_u(u).to(x0.device());
  std::vector<int64_t> per_sample(static_cast<size_t>(x0.dim()), 1);
  per_sample[0] = batch;
  const auto alpha = alpha_squared_of_log_snr(lambda).sqrt().reshape(per_sample);
  const auto sigma = sigma_squared_of_log_snr(lambda).sqrt().reshape(per_sample);
  const auto z = (alpha * x0.to(torch::kFloat64) + sigma * noise.to(torch::kFloat64)).to(x0.scalar_type());
  const DenoiserOutput out = model.predict(z, lambda.to(torch::kFloat32), y);
  DiffusionLoss result;
  result.mse = squared_error(noise, out.eps).mean();
  result.loss = result.mse;
  return result;
}

ClassifierLoss classifier_loss(Classifier& classifier, const DiscreteSchedule& schedule, const torch::Tensor& x0,
                               const torch::Tensor& labels, int64_t max_t, double t_power,
                               const StepDraws& draws) {
  if (classifier.time_kind() != TimeKind::discrete_timestep) {
    throw ModelError("classifier training needs a discrete-time classifier (time_input discrete_timestep)");
  }
  if (max_t < 1 || max_t > schedule.num_steps()) {
    throw InputError("--max-t must lie in [1, " + std::to_string(schedule.num_steps()) + "], got " + std::to_string(max_t));
  }
  require_labels(labels, x0);
  require_draws(draws, x0);
  ClassifierLoss result;
  result.timesteps = timesteps_from_uniform(draws.time, max_t, t_power).to(x0.device());
  const auto noise = draws.noise.to(x0.device(), x0.scalar_type());
  const auto x_t = q_sample(schedule, x0, result.timesteps, noise);
  const auto logits = classifier.logits(x_t, result.timesteps);
  const auto y = labels.to(logits.device());
  result.loss = torch::nn::functional::cross_entropy(logits, y);
  result.correct = logits.detach().argmax(1) == y;
  return result;
}

BucketAccuracy::BucketAccuracy(int64_t max_t, int64_t buckets) : max_t_(max_t) {
  if (max_t < 1 || buckets < 1) {
    throw InputError("accuracy buckets need max_t >= 1 and buckets >= 1 (got " + std::to_string(max_t) + ", " +
                     std::to_string(buckets) + ")");
  }
  correct_.assign(static_cast<size_t>(buckets), 0);
  total_.assign(static_cast<size_t>(buckets), 0);
}

int64_t BucketAccuracy::bucket_of(int64_t t) const {
  const int64_t bucket = t * buckets() / max_t_;
  return std::min(std::max<int64_t>(bucket, 0), buckets() - 1);
}

void BucketAccuracy::add(const torch::Tensor& timesteps, const torch::Tensor& correct) {
  const auto t = timesteps.to(torch::kCPU, torch::kInt64).contiguous();
  const auto hit = correct.to(torch::kCPU, torch::kBool).contiguous();
  const auto* t_data = t.data_ptr<int64_t>();
  const auto* hit_data = hit.data_ptr<bool>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    const auto bucket = static_cast<size_t>(bucket_of(t_data[i]));
    ++total_[bucket];
    if (hit_data[i]) ++correct_[bucket];
  }
}

void BucketAccuracy::add(const BucketAccuracy& other) {
  if (other.max_t_ != max_t_ || other.buckets() != buckets()) {
    throw InputError("accuracy tallies with different buckets cannot be added");
  }
  for (size_t b = 0; b < total_.size(); ++b) {
    correct_[b] += other.correct_[b];
    total_[b] += other.total_[b];
  }
}

void BucketAccuracy::clear() {
  std::fill(correct_.begin(), correct_.end(), 0);
  std::fill(total_.begin(), total_.end(), 0);
}

double BucketAccuracy::overall() const {
  int64_t hits = 0, count = 0;
  for (size_t i = 0; i < total_.size(); ++i) {
    hits += correct_[i];
    count += total_[i];
  }
  return count == 0 ? std::numeric_limits<double>::quiet_NaN() : static_cast<double>(hits) / static_cast<double>(count);
}

nlohmann::json BucketAccuracy::to_json() const {
  nlohmann::json rows = nlohmann::json::array();
  for (int64_t b = 0; b < buckets(); ++b) {
    // The t of bucket b are those with floor(t B / max_t) = b.
    const int64_t t_min = (b * max_t_ + buckets() - 1) / buckets();
    const int64_t t_max = ((b + 1) * max_t_ + buckets() - 1) / buckets() - 1;
    nlohmann::json row = {{"t_min", t_min}, {"t_max", t_max}, {"count", total(b)}};
    row["accuracy"] = total(b) == 0 ? nlohmann::json(nullptr)
                                    : nlohmann::json(static_cast<double>(correct(b)) / static_cast<double>(total(b)));
    rows.push_back(row);
  }
  return rows;
}

nlohmann::json BucketAccuracy::counts_json() const { return {{"correct", correct_}, {"total", total_}}; }

void BucketAccuracy::restore_counts(const nlohmann::json& counts) {
  auto correct = counts.at("correct").get<std::vector<int64_t>>();
  auto total = counts.at("total").get<std::vector<int64_t>>();
  if (correct.size() != total_.size() || total.size() != total_.size()) {
    throw InputError("accuracy counts have " + std::to_string(total.size()) + " buckets, expected " +
                     std::to_string(total_.size()));
  }
  correct_ = std::move(correct);
  total_ = std::move(total);
}

}  // namespace guidiff
