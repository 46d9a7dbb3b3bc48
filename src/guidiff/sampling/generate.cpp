// Generation end to end (see generate.hpp): validate, build the schedule, wrap the model
// in the requested guidance, and sample in batches with per-sample noise streams.
#include "guidiff/sampling/generate.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/guidance/guided_model.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/sampling/generation_checks.hpp"

namespace guidiff {
namespace {

// The noise stream of random class labels (x_T uses SampleNoise::initial_stream, step i
// stream i >= 0).
constexpr int64_t kClassStream = -2;

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
  NoiseLevelMap levels;           // the model's time -> abar (unrespaced), for guidance
  DiscreteSchedule schedule;      // respaced: ddpm and ddim
  std::optional<SigmaSchedule> sigmas;  // the sigma-space samplers
  int64_t steps_per_batch = 0;
};

SamplingPlan make_plan(const Denoiser& model, const GenerationConfig& config) {
  SamplingPlan plan;
  const bool discrete = model.time_kind() == TimeKind::discrete_timestep;
  const std::optional<DiscreteSchedule> original =
      discrete ? std::optional<DiscreteSchedule>(make_schedule(config.schedule, config.timesteps)) : std::nullopt;
  plan.levels = discrete ? NoiseLevelMap::discrete(*original) : NoiseLevelMap::log_snr();
  if (is_sigma_sampler(config.sampler)) {
    const ModelSigmas levels = discrete ? ModelSigmas::discrete(*original) : ModelSigmas::log_snr(config.log_snr);
    const int64_t steps = config.steps > 0 || !config.respacing.empty() ? config.steps : kDefaultSigmaSamplerSteps;
    plan.sigmas = SigmaSchedule{levels, make_sigmas(config.sigmas, levels, steps, config.respacing)};
    plan.steps_per_batch = plan.sigmas->num_steps();
  } else if (config.sampler == SamplerKind::cfg_continuous) {
    plan.steps_per_batch = config.steps > 0 ? config.steps : config.timesteps;
    if (plan.steps_per_batch < 1) {
      throw InputError("--steps must be >= 1 for cfg-continuous (timesteps is " + std::to_string(config.timesteps) + ")");
    }
  } else {
    plan.schedule = respace(*original, kept_timesteps(config));
    plan.steps_per_batch = plan.schedule.num_steps();
  }
  return plan;
}

// A strength for rows [begin, end): the per-sample values there, or the one value.
GuidanceScale scale_for_rows(double scale, const torch::Tensor& per_sample, int64_t begin, int64_t end) {
  return per_sample.defined() ? GuidanceScale::per_sample(per_sample.slice(0, begin, end)) : GuidanceScale(scale);
}

GuidanceRequest guidance_for_rows(const GenerationConfig& config, int64_t begin, int64_t end) {
  GuidanceRequest request;
  request.classifier_scale = scale_for_rows(config.classifier_scale, config.classifier_scales, begin, end);
  request.cfg_scale = scale_for_rows(config.cfg_scale, config.cfg_scales, begin, end);
  request.interval = config.interval;
  request.cfg_rules = config.cfg_rules;
  request.dynamic_threshold = config.dynamic_threshold;
  request.classifier_as_mean_shift = config.sampler == SamplerKind::ddpm;
  return request;
}

// Counts the sampler's calls of the guided model: the number of function evaluations.
class CallCounter : public Denoiser {
 public:
  explicit CallCounter(std::shared_ptr<Denoiser> inner) : inner_(std::move(inner)) {}
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override {
    ++calls;
    return inner_->predict(x_t, time, y);
  }
  TimeKind time_kind() const override { return inner_->time_kind(); }
  int64_t num_classes() const override { return inner_->num_classes(); }
  bool learns_variance() const override { return inner_->learns_variance(); }
  int64_t calls = 0;

 private:
  std::shared_ptr<Denoiser> inner_;
};

SamplingResult sample_with_sigmas(Denoiser& model, const SigmaSchedule& sigmas, const GenerationConfig& config,
                                  const SampleBatch& batch, const SampleNoise& noise, const SamplerCommon& common) {
  EulerOptions euler;
  static_cast<SamplerCommon&>(euler) = common;
  euler.churn = config.churn;
  UniPcOptions unipc;
  static_cast<SamplerCommon&>(unipc) = common;
  switch (config.sampler) {
    case SamplerKind::euler: return sample_euler(model, sigmas, batch, noise, euler);
    case SamplerKind::heun: return sample_heun(model, sigmas, batch, noise, euler);
    case SamplerKind::euler_ancestral: return sample_euler_ancestral(model, sigmas, batch, noise, common);
    case SamplerKind::dpm_2s: return sample_dpm_solver_2s(model, sigmas, batch, noise, common);
    case SamplerKind::dpmpp_2m: return sample_dpmpp_2m(model, sigmas, batch, noise, common);
    case SamplerKind::dpmpp_3m: return sample_dpmpp_3m(model, sigmas, batch, noise, common);
    case SamplerKind::dpmpp_2m_sde: return sample_dpmpp_2m_sde(model, sigmas, batch, noise, common);
    case SamplerKind::unipc: return sample_unipc(model, sigmas, batch, noise, unipc);
    default: break;
  }
  throw InputError("sampler " + to_string(config.sampler) + " does not run over sigmas");
}

SamplingResult sample_batch(const SamplingPlan& plan, const GuidedModel& guided, const GenerationConfig& config,
                            const SampleBatch& batch, const SampleNoise& noise, const SamplerCommon& common) {
  if (plan.sigmas) return sample_with_sigmas(*guided.denoiser, *plan.sigmas, config, batch, noise, common);
  switch (config.sampler) {
    case SamplerKind::ddpm: {
      DdpmOptions options;
      static_cast<SamplerCommon&>(options) = common;
      options.fixed_variance = config.fixed_variance;
      options.mean_shift = guided.mean_shift ? &*guided.mean_shift : nullptr;
      return sample_ddpm(*guided.denoiser, plan.schedule, batch, noise, options);
    }
    case SamplerKind::ddim: {
      DdimOptions options;
      static_cast<SamplerCommon&>(options) = common;
      options.eta = config.eta;
      return sample_ddim(*guided.denoiser, plan.schedule, batch, noise, options);
    }
    case SamplerKind::cfg_continuous: {
      CfgContinuousOptions options;
      static_cast<SamplerCommon&>(options) = common;
      options.steps = plan.steps_per_batch;
      options.variance_exponent = config.variance_exponent;
      options.schedule = config.log_snr;
      return sample_cfg_continuous(*guided.denoiser, batch, noise, options);
    }
    default: break;
  }
  throw InputError("unknown sampler");
}

}  // namespace

GenerationResult generate(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                          const GenerationConfig& config, const torch::Tensor& labels,
                          const torch::Tensor& initial_noise, const StepCallback& on_progress) {
  return generate(GenerationModels{std::move(model), std::move(classifier), nullptr}, config, labels, initial_noise,
                  on_progress);
}

GenerationResult generate(const GenerationModels& models, const GenerationConfig& config, const torch::Tensor& labels,
                          const torch::Tensor& initial_noise, const StepCallback& on_progress) {
  namespace checks = generation_checks;
  checks::check_config(config);
  const int64_t num_classes = checks::check_models(models, config);
  const torch::Tensor sample_labels = checks::check_labels(labels, num_classes, models, config);
  const torch::Tensor given_noise = checks::check_initial_noise(initial_noise, config);
  const SamplingPlan plan = make_plan(*models.denoiser, config);
  checks::check_outputs_fit_in_memory(config,
                                      config.keep_trajectory ? plan.steps_per_batch + 1 : 0);

  // A conditional model sampled without labels gets the null class: unconditional samples.
  torch::Tensor model_labels = sample_labels;
  if (!model_labels.defined() && models.denoiser->num_classes() > 0) {
    model_labels = torch::full({config.num_samples}, models.denoiser->num_classes(), torch::kLong);
  }

  const SampleNoise noise(config.seed);
  const Shard rows = batch_aligned_shard(config.num_samples, config.batch_size, config.shard_index, config.shard_count);
  const int64_t first_batch = rows.begin / config.batch_size;
  const int64_t num_batches = (rows.size() + config.batch_size - 1) / config.batch_size;
  const int64_t total_steps = num_batches * plan.steps_per_batch;
  std::vector<std::vector<torch::Tensor>> trajectory_parts;
  GenerationResult out;
  // Filled batch by batch, not joined at the end: one copy of the samples at a time.
  out.samples = torch::empty(checks::rows_shape(rows.size(), config.sample_shape), torch::kFloat);
  out.steps = plan.steps_per_batch;
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
    // Guidance per batch: per-sample strengths are sliced, APG's momentum starts afresh.
    GuidedModel guided = make_guided_model(models.denoiser, models.classifier, models.guide, plan.levels,
                                           guidance_for_rows(config, begin, end));
    auto counter = std::make_shared<CallCounter>(guided.denoiser);
    guided.denoiser = counter;
    SamplingResult result = sample_batch(plan, guided, config, batch, noise, common);
    if (b == 0) out.model_evaluations = counter->calls;
    out.samples.slice(0, begin - rows.begin, end - rows.begin).copy_(result.samples);
    trajectory_parts.push_back(std::move(result.trajectory));
  }

  out.rows = rows;
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

GenerationResult generate_across(Communicator& communicator, const GenerationModels& models,
                                 const GenerationConfig& config, const torch::Tensor& labels,
                                 const torch::Tensor& initial_noise, const StepCallback& on_progress) {
  GenerationConfig shard = config;
  shard.shard_index = communicator.rank();
  shard.shard_count = communicator.world_size();
  GenerationResult result = generate(models, shard, labels, initial_noise, on_progress);
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
  // The labels as int64; drawn at random, with their indices, draws and uniforms (8 bytes each).
  const double bytes_per_label = spec == "random" ? 32.0 : 8.0;
  check_fits_in_memory(saturated_bytes(static_cast<double>(num_samples) * bytes_per_label),
                       "--num-samples " + std::to_string(num_samples) + ": the labels",
                       "; ask for fewer per run");
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
