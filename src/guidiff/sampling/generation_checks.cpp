// The checks of generate() (see generation_checks.hpp).
#include "guidiff/sampling/generation_checks.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"

namespace guidiff::generation_checks {

bool any_nonzero(double scale, const torch::Tensor& per_sample) {
  return per_sample.defined() ? per_sample.ne(0).any().item<bool>() : scale != 0.0;
}

namespace {

void check_scale(double scale, const torch::Tensor& per_sample, const std::string& flag, int64_t num_samples) {
  if (!std::isfinite(scale)) throw InputError(flag + " must be finite, got " + number_string(scale));
  if (!per_sample.defined()) return;
  if (per_sample.dim() != 1 || per_sample.size(0) != num_samples || !per_sample.is_floating_point()) {
    throw InputError(flag + " per-sample values must be floating point [" + std::to_string(num_samples) + "], got " +
                     shape_string(per_sample.sizes()) + " " + std::string(c10::toString(per_sample.scalar_type())));
  }
  if (!torch::isfinite(per_sample).all().item<bool>()) throw InputError(flag + " per-sample values must be finite");
}

// Which sampler runs which rule: the few-step options, CFG++ and the x0 rules.
void check_sampler_and_rules(const GenerationConfig& config) {
  const std::string sampler = to_string(config.sampler);
  config.churn.validate();
  if (config.churn.active() && config.sampler != SamplerKind::euler && config.sampler != SamplerKind::heun) {
    throw InputError("--s-churn applies to the euler and heun samplers (sampler is " + sampler + ")");
  }
  config.cfg_rules.validate();
  if (config.cfg_rules.cfg_pp) {
    if (!supports_cfg_pp(config.sampler)) {
      throw InputError("--cfg-pp (CFG++) runs with the ddim and euler samplers only (sampler is " + sampler + ")");
    }
    if (config.eta != 0.0) throw InputError("--cfg-pp (CFG++) is defined for deterministic DDIM (--eta 0)");
  }
  if (config.cfg_rules.works_on_x0() && !uses_cfg(config)) {
    throw InputError("--cfg-rescale and --apg change classifier-free guidance: give --cfg-scale too");
  }
  if (config.dynamic_threshold != 0.0 && !(config.dynamic_threshold > 0.0 && config.dynamic_threshold <= 1.0)) {
    throw InputError("--dynamic-threshold percentile must be in (0, 1], got " + number_string(config.dynamic_threshold));
  }
}

}  // namespace

void check_config(const GenerationConfig& config) {
  if (config.num_samples < 1) throw InputError("--num-samples must be >= 1, got " + std::to_string(config.num_samples));
  if (config.batch_size < 1) throw InputError("--batch-size must be >= 1, got " + std::to_string(config.batch_size));
  if (config.shard_count < 1 || config.shard_index < 0 || config.shard_index >= config.shard_count) {
    throw InputError("shard " + std::to_string(config.shard_index) + " of " + std::to_string(config.shard_count) +
                     " does not exist");
  }
  if (config.first_sample_index < 0) {
    throw InputError("the first sample index must be >= 0, got " + std::to_string(config.first_sample_index));
  }
  if (config.sample_shape.empty() ||
      std::any_of(config.sample_shape.begin(), config.sample_shape.end(), [](int64_t size) { return size < 1; })) {
    throw InputError("the sample shape must be non-empty with every size >= 1, got " + shape_string(config.sample_shape));
  }
  if (config.steps < 0) throw InputError("--steps must be >= 0, got " + std::to_string(config.steps));
  check_scale(config.classifier_scale, config.classifier_scales, "--classifier-scale", config.num_samples);
  check_scale(config.cfg_scale, config.cfg_scales, "--cfg-scale", config.num_samples);
  // DDIM's eta (Song et al. 2021, eq. 16) runs from 0 (deterministic) to 1 (DDPM's variance);
  // above 1 the noise sigma_t exceeds what sqrt(1 - abar_{t-1} - sigma_t^2) leaves room for.
  if (!(config.eta >= 0.0 && config.eta <= 1.0)) {
    throw InputError("--eta must be in [0, 1], got " + number_string(config.eta));
  }
  if (config.eta != 0.0 && config.sampler != SamplerKind::ddim) {
    throw InputError("--eta applies only to the ddim sampler (sampler is " + to_string(config.sampler) + ")");
  }
  if (std::isnan(config.interval.low) || std::isnan(config.interval.high) || config.interval.low > config.interval.high) {
    throw InputError("the guidance interval [" + number_string(config.interval.low) + ", " +
                     number_string(config.interval.high) + "] is empty");
  }
  if (config.interval.unit == GuidanceInterval::Unit::sigma && config.interval.low < 0.0) {
    throw InputError("--guidance-interval-sigma: noise levels sigma are >= 0, got " +
                     number_string(config.interval.low));
  }
  check_sampler_and_rules(config);
  // Checked whatever the sampler, so a bad value never passes unnoticed where it is unused.
  const double v = config.variance_exponent;
  if (!std::isfinite(v) || v < 0.0 || v > 1.0) {
    throw InputError("the variance exponent v must be in [0, 1], got " + number_string(v));
  }
  if (config.sampler == SamplerKind::cfg_continuous) {
    if (!config.respacing.empty()) {
      throw InputError("--respacing applies only to the discrete samplers; use --steps with cfg-continuous");
    }
  } else {
    check_timestep_count(config.timesteps, "--timesteps");
    if (config.steps > 0 && !config.respacing.empty()) {
      throw InputError("give either --steps or --respacing, not both (steps " + std::to_string(config.steps) +
                       ", respacing '" + config.respacing + "')");
    }
    if (!config.respacing.empty() && is_sigma_sampler(config.sampler) && config.sigmas != SigmaSpacing::timesteps) {
      throw InputError("--respacing applies to --sigmas timesteps (sigmas are " + to_string(config.sigmas) + ")");
    }
  }
  config.log_snr.validate();
}

int64_t check_models(const GenerationModels& models, const GenerationConfig& config) {
  const Denoiser* model = models.denoiser.get();
  const Classifier* classifier = models.classifier.get();
  if (model == nullptr) throw InputError("no model to sample from");
  const std::string sampler = to_string(config.sampler);
  if (!is_sigma_sampler(config.sampler)) {
    const TimeKind wanted = config.sampler == SamplerKind::cfg_continuous ? TimeKind::log_snr : TimeKind::discrete_timestep;
    if (model->time_kind() != wanted) {
      throw ModelError("the " + sampler + " sampler needs a model taking " + time_kind_name(wanted) +
                       ", but the model takes " + time_kind_name(model->time_kind()));
    }
  }
  if (model->time_kind() == TimeKind::discrete_timestep && config.steps > config.timesteps) {
    throw InputError("--steps " + std::to_string(config.steps) + " exceeds the model's " +
                     std::to_string(config.timesteps) + " timesteps");
  }
  if (model->time_kind() == TimeKind::log_snr && !config.respacing.empty()) {
    throw InputError("--respacing applies to discrete-time models; this one takes log-SNR time");
  }
  if (config.fixed_variance == VarianceKind::learned_range && !model->learns_variance() &&
      config.sampler == SamplerKind::ddpm) {
    throw ModelError("learned-range variance needs a model that learns its variance");
  }
  if (models.guide) {
    if (!uses_cfg(config)) throw InputError("--guide-model needs --cfg-scale w, the autoguidance weight");
    if (models.guide->time_kind() != model->time_kind()) {
      throw ModelError("the guide model takes " + time_kind_name(models.guide->time_kind()) + " but the model takes " +
                       time_kind_name(model->time_kind()));
    }
    if (models.guide->num_classes() > 0 && model->num_classes() > 0 &&
        models.guide->num_classes() != model->num_classes()) {
      throw ModelError("the guide model has " + std::to_string(models.guide->num_classes()) +
                       " classes but the model has " + std::to_string(model->num_classes()));
    }
  } else if (uses_cfg(config) && model->num_classes() < 1) {
    throw ModelError("--cfg-scale needs a class-conditional model (this model is unconditional)");
  } else if (uses_cfg(config) && !model->has_null_class()) {
    throw ModelError("--cfg-scale needs a model with a null class; this class-conditional model has none "
                     "(guided-diffusion's models: use classifier guidance, --classifier-scale)");
  }
  if (uses_classifier(config) && classifier == nullptr) throw InputError("--classifier-scale needs a classifier");
  if (classifier != nullptr) {
    if (classifier->time_kind() != model->time_kind()) {
      throw ModelError("the classifier takes " + time_kind_name(classifier->time_kind()) + " but the model takes " +
                       time_kind_name(model->time_kind()));
    }
    if (classifier->num_classes() < 1) throw ModelError("the classifier has no classes");
    if (model->num_classes() > 0 && classifier->num_classes() != model->num_classes()) {
      throw ModelError("the classifier has " + std::to_string(classifier->num_classes()) +
                       " classes but the model has " + std::to_string(model->num_classes()));
    }
  }
  return model->num_classes() > 0 ? model->num_classes() : (classifier != nullptr ? classifier->num_classes() : 0);
}

torch::Tensor check_labels(const torch::Tensor& labels, int64_t num_classes, const GenerationModels& models,
                           const GenerationConfig& config) {
  if (!labels.defined()) {
    // Autoguidance needs no labels: an unconditional model (or a conditional one's null class) is guided too.
    if (uses_cfg(config) && !models.guide) throw InputError("--cfg-scale needs class labels (--class)");
    if (uses_classifier(config)) throw InputError("--classifier-scale needs class labels (--class)");
    const Denoiser& model = *models.denoiser;
    if (model.num_classes() > 0 && !model.has_null_class()) {
      throw InputError("this class-conditional model has no null class, so it cannot sample unconditionally: "
                       "give --class");
    }
    return labels;
  }
  if (num_classes < 1) {
    throw InputError("class labels were given, but the model is unconditional and there is no classifier");
  }
  if (labels.dim() != 1 || labels.size(0) != config.num_samples ||
      !(labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt)) {
    throw InputError("class labels must be int64 [" + std::to_string(config.num_samples) + "], got " +
                     shape_string(labels.sizes()) + " " + std::string(c10::toString(labels.scalar_type())));
  }
  torch::Tensor result = labels.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t low = result.min().item<int64_t>();
  const int64_t high = result.max().item<int64_t>();
  if (low < 0 || high >= num_classes) {
    throw InputError("class " + std::to_string(low < 0 ? low : high) + " is outside [0, " +
                     std::to_string(num_classes) + ")");
  }
  return result;
}

std::vector<int64_t> rows_shape(int64_t rows, const std::vector<int64_t>& sample_shape) {
  std::vector<int64_t> shape{rows};
  shape.insert(shape.end(), sample_shape.begin(), sample_shape.end());
  return shape;
}

torch::Tensor check_initial_noise(const torch::Tensor& noise, const GenerationConfig& config) {
  if (!noise.defined()) return noise;
  const std::vector<int64_t> expected = rows_shape(config.num_samples, config.sample_shape);
  if (noise.sizes() != torch::IntArrayRef(expected) || !noise.is_floating_point()) {
    throw InputError("the initial noise x_T must be floating point " + shape_string(expected) + ", got " +
                     shape_string(noise.sizes()) + " " + std::string(c10::toString(noise.scalar_type())));
  }
  if (!torch::isfinite(noise).all().item<bool>()) throw NumericError("the initial noise x_T contains NaN or infinity");
  return noise.to(torch::kCPU, torch::kFloat);
}

void check_outputs_fit_in_memory(const GenerationConfig& config, int64_t trajectory_states) {
  // In double: --shape takes any size, and the product is only compared.
  double sample_bytes = 4.0;
  for (const int64_t size : config.sample_shape) sample_bytes *= static_cast<double>(size);
  const double per_sample =
      sample_bytes * (1.0 + 2.0 * static_cast<double>(std::max<int64_t>(trajectory_states, 0))) +
      8.0;
  check_fits_in_memory(saturated_bytes(per_sample * static_cast<double>(config.num_samples)),
                       "--num-samples " + std::to_string(config.num_samples) + ": the samples" +
                           (trajectory_states > 0 ? " and their trajectories" : "") +
                           ", kept until they are written,",
                       "; ask for fewer per run (with a different --seed each)");
}

}  // namespace guidiff::generation_checks

namespace guidiff {

bool uses_cfg(const GenerationConfig& config) {
  return generation_checks::any_nonzero(config.cfg_scale, config.cfg_scales) || config.cfg_rules.cfg_pp;
}

bool uses_classifier(const GenerationConfig& config) {
  return generation_checks::any_nonzero(config.classifier_scale, config.classifier_scales);
}

}  // namespace guidiff
