// Generation end to end (see generate.hpp): validate, build the schedule, wrap the model
// in the requested guidance, and sample in batches with per-sample noise streams.
#include "guidiff/sampling/generate.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/npy.hpp"

namespace guidiff {
namespace {

// The noise stream of random class labels (x_T uses SampleNoise::initial_stream, step i
// stream i >= 0).
constexpr int64_t kClassStream = -2;

std::string shape_string(torch::IntArrayRef sizes) {
  std::ostringstream out;
  out << sizes;
  return out.str();
}

std::string number_string(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

TimeKind time_kind_of(SamplerKind sampler) {
  return sampler == SamplerKind::cfg_continuous ? TimeKind::log_snr : TimeKind::discrete_timestep;
}

std::string time_kind_name(TimeKind kind) {
  return kind == TimeKind::discrete_timestep ? "discrete timesteps" : "log-SNR (continuous) time";
}

// Counts, shapes and scalar options that need no model.
void check_config(const GenerationConfig& config) {
  if (config.num_samples < 1) {
    throw InputError("--num-samples must be >= 1, got " + std::to_string(config.num_samples));
  }
  if (config.batch_size < 1) {
    throw InputError("--batch-size must be >= 1, got " + std::to_string(config.batch_size));
  }
  if (config.shard_count < 1 || config.shard_index < 0 || config.shard_index >= config.shard_count) {
    throw InputError("shard " + std::to_string(config.shard_index) + " of " + std::to_string(config.shard_count) +
                     " does not exist");
  }
  if (config.first_sample_index < 0) {
    throw InputError("the first sample index must be >= 0, got " +
                     std::to_string(config.first_sample_index));
  }
  if (config.sample_shape.empty() ||
      std::any_of(config.sample_shape.begin(), config.sample_shape.end(),
                  [](int64_t size) { return size < 1; })) {
    throw InputError("the sample shape must be non-empty with every size >= 1, got " +
                     shape_string(config.sample_shape));
  }
  if (config.steps < 0) throw InputError("--steps must be >= 0, got " + std::to_string(config.steps));
  if (!std::isfinite(config.classifier_scale)) {
    throw InputError("--classifier-scale must be finite, got " + number_string(config.classifier_scale));
  }
  if (!std::isfinite(config.cfg_scale)) {
    throw InputError("--cfg-scale must be finite, got " + number_string(config.cfg_scale));
  }
  if (!std::isfinite(config.eta) || config.eta < 0.0) {
    throw InputError("--eta must be finite and >= 0, got " + number_string(config.eta));
  }
  if (config.eta != 0.0 && config.sampler != SamplerKind::ddim) {
    throw InputError("--eta applies only to the ddim sampler (sampler is " +
                     to_string(config.sampler) + ")");
  }
  if (std::isnan(config.interval.low) || std::isnan(config.interval.high) ||
      config.interval.low > config.interval.high) {
    throw InputError("the guidance interval [" + number_string(config.interval.low) + ", " +
                     number_string(config.interval.high) + "] is empty");
  }
  if (config.sampler == SamplerKind::cfg_continuous) {
    if (!config.respacing.empty()) {
      throw InputError("--respacing applies only to the discrete samplers; use --steps with "
                       "cfg-continuous");
    }
    const double v = config.variance_exponent;
    if (!std::isfinite(v) || v < 0.0 || v > 1.0) {
      throw InputError("the variance exponent v must be in [0, 1], got " + number_string(v));
    }
    config.log_snr.validate();
  } else {
    if (config.timesteps < 1) {
      throw InputError("--timesteps must be >= 1, got " + std::to_string(config.timesteps));
    }
    if (config.steps > config.timesteps) {
      throw InputError("--steps " + std::to_string(config.steps) + " exceeds the model's " +
                       std::to_string(config.timesteps) + " timesteps");
    }
    if (config.steps > 0 && !config.respacing.empty()) {
      throw InputError("give either --steps or --respacing, not both (steps " +
                       std::to_string(config.steps) + ", respacing '" + config.respacing + "')");
    }
  }
}

// The number of classes labels index: the model's, or the classifier's for an
// unconditional model. Checks the two agree and that each guidance has what it needs.
int64_t check_models(const Denoiser* model, const Classifier* classifier,
                     const GenerationConfig& config) {
  if (model == nullptr) throw InputError("no model to sample from");
  const TimeKind wanted = time_kind_of(config.sampler);
  if (model->time_kind() != wanted) {
    throw ModelError("the " + to_string(config.sampler) + " sampler needs a model taking " +
                     time_kind_name(wanted) + ", but the model takes " +
                     time_kind_name(model->time_kind()));
  }
  if (config.fixed_variance == VarianceKind::learned_range && !model->learns_variance() &&
      config.sampler == SamplerKind::ddpm) {
    throw ModelError("learned-range variance needs a model that learns its variance");
  }
  if (config.cfg_scale != 0.0 && model->num_classes() < 1) {
    throw ModelError("--cfg-scale needs a class-conditional model (this model is unconditional)");
  }
  if (config.cfg_scale != 0.0 && !model->has_null_class()) {
    throw ModelError("--cfg-scale needs a model with a null class; this class-conditional model has none "
                     "(guided-diffusion's models: use classifier guidance, --classifier-scale)");
  }
  if (config.classifier_scale != 0.0 && classifier == nullptr) {
    throw InputError("--classifier-scale " + number_string(config.classifier_scale) +
                     " needs a classifier");
  }
  if (classifier != nullptr) {
    if (classifier->time_kind() != model->time_kind()) {
      throw ModelError("the classifier takes " + time_kind_name(classifier->time_kind()) +
                       " but the model takes " + time_kind_name(model->time_kind()));
    }
    if (classifier->num_classes() < 1) throw ModelError("the classifier has no classes");
    if (model->num_classes() > 0 && classifier->num_classes() != model->num_classes()) {
      throw ModelError("the classifier has " + std::to_string(classifier->num_classes()) +
                       " classes but the model has " + std::to_string(model->num_classes()));
    }
  }
  return model->num_classes() > 0 ? model->num_classes()
                                  : (classifier != nullptr ? classifier->num_classes() : 0);
}

// Labels as int64 [num_samples] in [0, num_classes), or undefined when none are needed.
torch::Tensor check_labels(const torch::Tensor& labels, int64_t num_classes,
                           const GenerationConfig& config) {
  if (!labels.defined()) {
    if (config.cfg_scale != 0.0) throw InputError("--cfg-scale needs class labels (--class)");
    if (config.classifier_scale != 0.0) {
      throw InputError("--classifier-scale needs class labels (--class)");
    }
    return labels;
  }
  if (num_classes < 1) {
    throw InputError("class labels were given, but the model is unconditional and there is no "
                     "classifier");
  }
  if (labels.dim() != 1 || labels.size(0) != config.num_samples ||
      !(labels.scalar_type() == torch::kLong || labels.scalar_type() == torch::kInt)) {
    throw InputError("class labels must be int64 [" + std::to_string(config.num_samples) +
                     "], got " + shape_string(labels.sizes()) + " " +
                     std::string(c10::toString(labels.scalar_type())));
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

// x_T for every sample as float32 [num_samples, sample_shape...], or undefined.
torch::Tensor check_initial_noise(const torch::Tensor& noise, const GenerationConfig& config) {
  if (!noise.defined()) return noise;
  std::vector<int64_t> expected{config.num_samples};
  expected.insert(expected.end(), config.sample_shape.begin(), config.sample_shape.end());
  if (noise.sizes() != torch::IntArrayRef(expected) || !noise.is_floating_point()) {
    throw InputError("the initial noise x_T must be floating point " + shape_string(expected) +
                     ", got " + shape_string(noise.sizes()) + " " +
                     std::string(c10::toString(noise.scalar_type())));
  }
  if (!torch::isfinite(noise).all().item<bool>()) {
    throw NumericError("the initial noise x_T contains NaN or infinity");
  }
  return noise.to(torch::kCPU, torch::kFloat);
}

// The kept original timesteps: the respacing spec, or `steps` evenly spaced (guided-diffusion
// "ddimN" for DDIM when it yields exactly N, otherwise the section rule "N"), or all T.
std::vector<int64_t> kept_timesteps(const GenerationConfig& config) {
  if (!config.respacing.empty()) return parse_respacing(config.respacing, config.timesteps);
  if (config.steps == 0 || config.steps == config.timesteps) return parse_respacing("", config.timesteps);
  const std::string count = std::to_string(config.steps);
  if (config.sampler == SamplerKind::ddim) {
    try {
      std::vector<int64_t> kept = parse_respacing("ddim" + count, config.timesteps);
      if (static_cast<int64_t>(kept.size()) == config.steps) return kept;
    } catch (const InputError&) {
      // No integer stride gives exactly N steps: fall through to evenly spaced sections.
    }
  }
  return parse_respacing(count, config.timesteps);
}

// Everything the per-batch loop needs, built once.
struct SamplingPlan {
  std::shared_ptr<Denoiser> model;                // guidance already applied (except Alg. 1)
  std::optional<ClassifierMeanShift> mean_shift;  // Algorithm 1, DDPM only
  DiscreteSchedule schedule;                      // respaced, discrete samplers only
  int64_t steps_per_batch = 0;
};

SamplingPlan make_plan(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                       const GenerationConfig& config) {
  SamplingPlan plan;
  std::optional<DiscreteSchedule> original;
  if (config.sampler == SamplerKind::cfg_continuous) {
    plan.steps_per_batch = config.steps > 0 ? config.steps : config.timesteps;
    if (plan.steps_per_batch < 1) {
      throw InputError("--steps must be >= 1 for cfg-continuous (timesteps is " +
                       std::to_string(config.timesteps) + ")");
    }
  } else {
    original = make_schedule(config.schedule, config.timesteps);
    plan.schedule = respace(*original, kept_timesteps(config));
    plan.steps_per_batch = plan.schedule.num_steps();
  }
  // Classifier-free guidance (Ho & Salimans eq. 6) first, so classifier guidance (if any)
  // shifts the CFG eps: the two combine.
  plan.model = model;
  if (config.cfg_scale != 0.0) {
    plan.model = std::make_shared<ClassifierFreeGuidance>(plan.model, config.cfg_scale, config.interval);
  }
  if (config.classifier_scale != 0.0) {
    if (config.sampler == SamplerKind::ddpm) {
      plan.mean_shift.emplace(classifier, config.classifier_scale, config.interval);
    } else {
      // The classifier's noise level comes from the unrespaced schedule: it sees original t.
      const NoiseLevelMap levels = original ? NoiseLevelMap::discrete(*original) : NoiseLevelMap::log_snr();
      plan.model = std::make_shared<ClassifierGuidedDenoiser>(plan.model, classifier, levels,
                                                              config.classifier_scale, config.interval);
    }
  }
  return plan;
}

SamplingResult sample_batch(const SamplingPlan& plan, const GenerationConfig& config,
                            const SampleBatch& batch, const SampleNoise& noise,
                            const SamplerCommon& common) {
  switch (config.sampler) {
    case SamplerKind::ddpm: {
      DdpmOptions options;
      static_cast<SamplerCommon&>(options) = common;
      options.fixed_variance = config.fixed_variance;
      options.mean_shift = plan.mean_shift ? &*plan.mean_shift : nullptr;
      return sample_ddpm(*plan.model, plan.schedule, batch, noise, options);
    }
    case SamplerKind::ddim: {
      DdimOptions options;
      static_cast<SamplerCommon&>(options) = common;
      options.eta = config.eta;
      return sample_ddim(*plan.model, plan.schedule, batch, noise, options);
    }
    case SamplerKind::cfg_continuous: {
      CfgContinuousOptions options;
      static_cast<SamplerCommon&>(options) = common;
      options.steps = plan.steps_per_batch;
      options.variance_exponent = config.variance_exponent;
      options.schedule = config.log_snr;
      return sample_cfg_continuous(*plan.model, batch, noise, options);
    }
  }
  throw InputError("unknown sampler");
}

}  // namespace

SamplerKind parse_sampler(const std::string& name) {
  if (name == "ddpm") return SamplerKind::ddpm;
  if (name == "ddim") return SamplerKind::ddim;
  if (name == "cfg-continuous") return SamplerKind::cfg_continuous;
  throw InputError("unknown sampler '" + name + "' (expected ddpm, ddim or cfg-continuous)");
}

std::string to_string(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::ddpm: return "ddpm";
    case SamplerKind::ddim: return "ddim";
    case SamplerKind::cfg_continuous: return "cfg-continuous";
  }
  return "unknown";
}

GenerationResult generate(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                          const GenerationConfig& config, const torch::Tensor& labels,
                          const torch::Tensor& initial_noise, const StepCallback& on_progress) {
  check_config(config);
  const int64_t num_classes = check_models(model.get(), classifier.get(), config);
  const torch::Tensor sample_labels = check_labels(labels, num_classes, config);
  if (!sample_labels.defined() && model->num_classes() > 0 && !model->has_null_class()) {
    throw InputError("this class-conditional model has no null class, so it cannot sample unconditionally: "
                     "give --class");
  }
  const torch::Tensor given_noise = check_initial_noise(initial_noise, config);
  const SamplingPlan plan = make_plan(model, classifier, config);

  // A conditional model sampled without labels gets the null class: unconditional samples.
  torch::Tensor model_labels = sample_labels;
  if (!model_labels.defined() && model->num_classes() > 0) {
    model_labels = torch::full({config.num_samples}, model->num_classes(), torch::kLong);
  }

  const SampleNoise noise(config.seed);
  const Shard rows = batch_aligned_shard(config.num_samples, config.batch_size, config.shard_index, config.shard_count);
  const int64_t first_batch = rows.begin / config.batch_size;
  const int64_t num_batches = (rows.size() + config.batch_size - 1) / config.batch_size;
  const int64_t total_steps = num_batches * plan.steps_per_batch;
  std::vector<torch::Tensor> sample_parts;
  std::vector<std::vector<torch::Tensor>> trajectory_parts;
  for (int64_t b = 0; b < num_batches; ++b) {
    const int64_t begin = (first_batch + b) * config.batch_size;
    const int64_t end = std::min(begin + config.batch_size, rows.end);
    SampleBatch batch;
    // Global sample indices choose the noise streams, so batching and sharding do not matter.
    batch.sample_indices = torch::arange(config.first_sample_index + begin,
                                         config.first_sample_index + end, torch::kLong);
    batch.x_T = given_noise.defined()
                    ? given_noise.slice(0, begin, end)
                    : noise.normal(batch.sample_indices, SampleNoise::initial_stream, config.sample_shape);
    if (model_labels.defined()) batch.labels = model_labels.slice(0, begin, end);

    SamplerCommon common;
    common.clip_x0 = config.clip_x0;
    common.keep_trajectory = config.keep_trajectory;
    if (on_progress) {
      const int64_t done_before = b * plan.steps_per_batch;
      common.on_step = [&on_progress, done_before, total_steps](int64_t done, int64_t) {
        on_progress(done_before + done, total_steps);
      };
    }
    SamplingResult result = sample_batch(plan, config, batch, noise, common);
    sample_parts.push_back(result.samples.to(torch::kFloat));
    trajectory_parts.push_back(std::move(result.trajectory));
  }

  GenerationResult out;
  out.rows = rows;
  std::vector<int64_t> empty_shape{0};
  empty_shape.insert(empty_shape.end(), config.sample_shape.begin(), config.sample_shape.end());
  out.samples = sample_parts.empty() ? torch::empty(empty_shape, torch::kFloat) : torch::cat(sample_parts, 0);
  if (sample_labels.defined()) out.labels = sample_labels.slice(0, rows.begin, rows.end);
  if (config.keep_trajectory && !trajectory_parts.empty()) {
    const size_t length = trajectory_parts.front().size();
    for (size_t k = 0; k < length; ++k) {
      std::vector<torch::Tensor> parts;
      for (const auto& part : trajectory_parts) parts.push_back(part[k].to(torch::kFloat));
      out.trajectory.push_back(torch::cat(parts, 0));
    }
  }
  return out;
}

GenerationResult generate_across(Communicator& communicator, std::shared_ptr<Denoiser> model,
                                 std::shared_ptr<Classifier> classifier, const GenerationConfig& config,
                                 const torch::Tensor& labels, const torch::Tensor& initial_noise,
                                 const StepCallback& on_progress) {
  GenerationConfig shard = config;
  shard.shard_index = communicator.rank();
  shard.shard_count = communicator.world_size();
  GenerationResult result = generate(std::move(model), std::move(classifier), shard, labels, initial_noise, on_progress);
  if (!communicator.distributed()) return result;
  result.samples = communicator.all_gather_rows(result.samples, "gathering the samples");
  if (result.labels.defined()) result.labels = communicator.all_gather_rows(result.labels, "gathering the labels");
  if (config.keep_trajectory) {
    // A rank without samples has no trajectory: it takes the others' length, with no rows.
    const torch::Tensor lengths = communicator.all_gather_rows(
        torch::tensor({static_cast<int64_t>(result.trajectory.size())}, torch::kInt64), "gathering the trajectories");
    const auto length = static_cast<size_t>(lengths.max().item<int64_t>());
    result.trajectory.resize(length);  // undefined entries: no rows
    for (auto& step : result.trajectory) step = communicator.all_gather_rows(step, "gathering the trajectories");
  }
  result.rows = {0, config.num_samples};
  return result;
}

torch::Tensor labels_from_spec(const std::string& spec_in, int64_t num_samples, int64_t num_classes, uint64_t seed,
                               int64_t first_sample_index) {
  const auto first = spec_in.find_first_not_of(" \t");
  if (first == std::string::npos) return {};
  const std::string spec = spec_in.substr(first, spec_in.find_last_not_of(" \t") - first + 1);
  if (num_samples < 1) throw InputError("--num-samples must be >= 1, got " + std::to_string(num_samples));
  if (num_classes < 1) {
    throw InputError("--class '" + spec + "' given, but there are no classes (unconditional model "
                     "and no classifier)");
  }
  torch::Tensor labels;
  const std::string npy_suffix = ".npy";
  if (spec == "random") {
    // A standard normal z of the sample's own stream, mapped through its CDF to a uniform u
    // in (0, 1), then to floor(u C).
    const auto indices = torch::arange(first_sample_index, first_sample_index + num_samples, torch::kLong);
    const auto z = SampleNoise(seed).normal(indices, kClassStream, {}).to(torch::kFloat64);
    const auto u = 0.5 * torch::erfc(-z / std::sqrt(2.0));
    labels = (u * static_cast<double>(num_classes)).floor().clamp(0, num_classes - 1).to(torch::kLong);
  } else if (spec.size() > npy_suffix.size() &&
      spec.compare(spec.size() - npy_suffix.size(), npy_suffix.size(), npy_suffix) == 0) {
    const torch::Tensor stored = read_npy(spec);
    if (!(stored.scalar_type() == torch::kLong || stored.scalar_type() == torch::kInt) ||
        stored.dim() != 1 || stored.size(0) != num_samples) {
      throw InputError("--class file " + spec + " must hold int64 or int32 labels of shape [" +
                       std::to_string(num_samples) + "], got " + shape_string(stored.sizes()) + " " +
                       std::string(c10::toString(stored.scalar_type())));
    }
    labels = stored.to(torch::kLong).contiguous();
  } else {
    std::vector<int64_t> classes;
    std::stringstream fields(spec);
    std::string field;
    while (std::getline(fields, field, ',')) {
      const auto begin = field.find_first_not_of(" \t");
      const std::string text =
          begin == std::string::npos ? "" : field.substr(begin, field.find_last_not_of(" \t") - begin + 1);
      size_t used = 0;
      int64_t value = 0;
      try {
        value = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (text.empty() || used != text.size()) {
        throw InputError("--class '" + spec + "': '" + text + "' is not a class index");
      }
      classes.push_back(value);
    }
    if (classes.empty() || spec.back() == ',') {
      throw InputError("--class '" + spec + "': expected a class index or a comma list");
    }
    labels = torch::empty({num_samples}, torch::kLong);
    auto* out = labels.data_ptr<int64_t>();
    for (int64_t n = 0; n < num_samples; ++n) out[n] = classes[static_cast<size_t>(n) % classes.size()];
  }
  const int64_t low = labels.min().item<int64_t>();
  const int64_t high = labels.max().item<int64_t>();
  if (low < 0 || high >= num_classes) {
    throw InputError("--class: class " + std::to_string(low < 0 ? low : high) + " is outside [0, " +
                     std::to_string(num_classes) + ")");
  }
  return labels;
}

}  // namespace guidiff
