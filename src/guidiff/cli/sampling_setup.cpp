// Model, sampler and guidance flags shared by `sample` and `eval` (see sampling_setup.hpp).
#include "guidiff/cli/sampling_setup.hpp"

#include "guidiff/cli/common.hpp"
#include "guidiff/cli/guided_diffusion_setup.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/models/guided_diffusion_models.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/model_sample_shape.hpp"
#include "guidiff/models/bf16_models.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/models/torchscript_models.hpp"
#include "guidiff/version.hpp"

namespace guidiff::cli {
namespace {

void reject_if_given(const CLI::Option* option, const std::string& why) {
  if (option->count() > 0) throw InputError(option->get_name() + " " + why);
}

// The built-in Gaussian-mixture toy with its exact denoiser (and exact classifier when
// classifier guidance is asked for without --classifier). Classifier guidance alone uses the
// unconditional mixture, as Dhariwal & Nichol guide unconditional models; every other
// request with classes uses the class-conditional one (CFG's w = 0 is plain conditional).
SamplingModels toy_models(const SamplingFlags& flags, const GenerationConfig& config, const GlobalOptions& global) {
  reject_if_given(flags.time_option, "applies to --model (the built-in mixture picks its time input from --sampler)");
  reject_if_given(flags.num_classes_option, "applies to --model (the built-in mixture knows its classes)");
  if (global.device != "cpu") throw InputError("--device " + global.device + " applies to --model; the built-in mixture runs on the CPU");
  SamplingModels models;
  if (flags.mixture == "demo") {
    models.mixture = GaussianMixture::demo(flags.dim);
  } else {
    reject_if_given(flags.dim_option, "applies to --mixture demo only (a mixture file has its own dimension)");
    models.mixture = GaussianMixture::from_json_file(flags.mixture);
  }
  const GaussianMixture& mixture = *models.mixture;
  if (flags.shape_option->count() > 0 && config.sample_shape != std::vector<int64_t>{mixture.dim()}) {
    throw InputError("--shape " + flags.shape + " does not match the mixture's dimension " + std::to_string(mixture.dim()));
  }
  const NoiseLevelMap levels = config.sampler == SamplerKind::cfg_continuous
                                   ? NoiseLevelMap::log_snr()
                                   : NoiseLevelMap::discrete(make_schedule(config.schedule, config.timesteps));
  models.labels = labels_from_spec(flags.class_spec, config.num_samples, mixture.num_classes, config.seed);
  const bool classifier_only = config.classifier_scale != 0.0 && config.cfg_scale == 0.0;
  const bool conditional = models.labels.defined() && !classifier_only;
  models.denoiser = std::make_shared<MixtureDenoiser>(mixture, levels, conditional);
  if (!flags.classifier.empty()) {
    TorchScriptOptions options;
    options.time_kind = levels.kind();
    options.num_classes = mixture.num_classes;
    models.classifier = std::make_shared<TorchScriptClassifier>(flags.classifier, options);
  } else if (config.classifier_scale != 0.0) {
    models.classifier = std::make_shared<MixtureClassifier>(mixture, levels);
  }
  models.model_card["model"] = {{"kind", "gaussian mixture (exact)"}, {"mixture", flags.mixture}};
  return models;
}

// A path names a guidiff checkpoint (safetensors + JSON config: a run directory, a prefix or
// either file) rather than a TorchScript archive (.pt / .pth / .ts).
bool is_checkpoint(const std::string& path) {
  const auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return !(ends_with(".pt") || ends_with(".pth") || ends_with(".ts") || ends_with(".zip"));
}

// A classifier from a checkpoint or a TorchScript archive.
std::shared_ptr<Classifier> load_classifier(const SamplingFlags& flags, TorchScriptOptions options,
                                            const torch::Device& device) {
  if (!is_checkpoint(flags.classifier)) return std::make_shared<TorchScriptClassifier>(flags.classifier, options);
  const Model model = load_model(flags.classifier, device);
  if (!model.classifier) {
    throw InputError("--classifier '" + flags.classifier + "' holds a " + model_kind_name(model.kind) +
                     ", not a classifier");
  }
  return model.classifier;
}

SamplingModels torchscript_models(const SamplingFlags& flags, const GenerationConfig& config, const GlobalOptions& global) {
  reject_if_given(flags.mixture_option, "applies to the built-in mixture only (no --model)");
  reject_if_given(flags.dim_option, "applies to the built-in mixture only (no --model)");
  if (flags.shape_option->count() == 0) throw InputError("--shape is required with --model (C,H,W for images, D for vectors)");
  TorchScriptOptions options;
  if (flags.time == "discrete") {
    options.time_kind = TimeKind::discrete_timestep;
  } else if (flags.time == "log-snr") {
    options.time_kind = TimeKind::log_snr;
  } else {
    throw InputError("unknown --time '" + flags.time + "' (expected discrete or log-snr)");
  }
  options.num_classes = flags.num_classes;
  options.device = global.torch_device();
  SamplingModels models;
  TorchScriptOptions denoiser_options = options;
  denoiser_options.learn_sigma = config.fixed_variance == VarianceKind::learned_range;
  models.denoiser = std::make_shared<TorchScriptDenoiser>(flags.model, denoiser_options);
  if (flags.unconditional) models.denoiser = std::make_shared<NullClassDenoiser>(models.denoiser);
  if (!flags.classifier.empty()) models.classifier = load_classifier(flags, options, options.device);
  models.model_card["model"] = {{"path", flags.model}, {"kind", "torchscript"}};
  if (!flags.classifier.empty()) models.model_card["classifier"] = {{"path", flags.classifier}};
  const int64_t classes = models.denoiser->num_classes() > 0
                              ? models.denoiser->num_classes()
                              : (models.classifier ? models.classifier->num_classes() : 0);
  models.labels = labels_from_spec(flags.class_spec, config.num_samples, classes, config.seed);
  return models;
}

// Networks with a config: guidiff checkpoints (the config beside the weights) and `.pt`
// state dicts read with guided-diffusion's flags or a JSON config. The config gives the
// shape, time input and classes, so none of --shape, --time, --num-classes is needed.
SamplingModels network_models(const SamplingFlags& flags, const GuidedDiffusionFlags& strings, GenerationConfig& config,
                              const GlobalOptions& global) {
  reject_if_given(flags.mixture_option, "applies to the built-in mixture only (no --model)");
  reject_if_given(flags.dim_option, "applies to the built-in mixture only (no --model)");
  reject_if_given(flags.time_option, "applies to TorchScript models (a checkpoint's config has its time input)");
  const torch::Device device = global.torch_device();
  const Model model = model_is_state_dict(flags) ? load_state_dict_model(flags, strings, device) : load_model(flags.model, device);
  if (!model.denoiser) {
    throw InputError("--model '" + flags.model + "' holds a " + model_kind_name(model.kind) + ", not a denoiser");
  }
  apply_diffusion_settings(model, flags, config);
  const std::vector<int64_t> shape = model_sample_shape(model);
  if (flags.shape_option->count() > 0 && config.sample_shape != shape) {
    throw InputError("--shape " + flags.shape + " does not match the model's sample shape");
  }
  config.sample_shape = shape;
  SamplingModels models;
  models.model_card["model"] = model_card(model, flags.model);
  models.denoiser = flags.unconditional ? std::make_shared<NullClassDenoiser>(model.denoiser) : model.denoiser;
  int64_t classes = models.denoiser->num_classes();
  if (!flags.classifier.empty()) {
    if (classifier_is_state_dict(flags)) {
      const Model classifier = load_state_dict_classifier(flags, strings, device);
      if (!classifier.classifier) {
        throw InputError("--classifier '" + flags.classifier + "' holds a " + model_kind_name(classifier.kind) +
                         ", not a classifier");
      }
      models.classifier = classifier.classifier;
      models.model_card["classifier"] = model_card(classifier, flags.classifier);
    } else {
      TorchScriptOptions options;
      options.time_kind = model.denoiser->time_kind();
      options.num_classes = flags.num_classes > 0 ? flags.num_classes : model.denoiser->num_classes();
      options.device = device;
      models.classifier = load_classifier(flags, options, device);
      models.model_card["classifier"] = {{"path", flags.classifier}};
    }
    if (classes == 0) classes = models.classifier->num_classes();
  }
  if (flags.num_classes_option->count() > 0 && flags.num_classes != classes) {
    throw InputError("--num-classes " + std::to_string(flags.num_classes) + " does not match the model's " +
                     std::to_string(classes) + " classes");
  }
  prepare_upsampling(model, flags, config, models);
  if (!models.conditioned_on) models.labels = labels_from_spec(flags.class_spec, config.num_samples, classes, config.seed);
  return models;
}

GenerationConfig generation_config(const SamplingFlags& flags) {
  GenerationConfig config;
  // Names first, so a misspelt sampler or schedule is the error reported.
  config.sampler = parse_sampler(flags.sampler);
  config.schedule = parse_beta_schedule(flags.schedule);
  config.fixed_variance = parse_variance_kind(flags.variance);
  config.timesteps = flags.timesteps;
  config.respacing = flags.respacing;
  config.steps = flags.steps;
  config.eta = flags.eta;
  config.variance_exponent = flags.variance_exponent;
  config.classifier_scale = flags.classifier_scale;
  config.cfg_scale = flags.cfg_scale;
  if (!flags.guidance_interval.empty()) {
    const auto [low, high] = parse_number_pair("--guidance-interval", flags.guidance_interval);
    config.interval.low = low;
    config.interval.high = high;
  }
  config.num_samples = flags.num_samples;
  config.batch_size = flags.batch_size;
  config.seed = flags.seed;
    if (flags.shape_option->count() > 0) config.sample_shape = parse_positive_list("--shape", flags.shape);
  return config;
}

}  // namespace

void add_sampling_flags(CLI::App& command, SamplingFlags& flags) {
  command.add_option("--model,--model_path", flags.model, "denoiser: a guidiff checkpoint (run dir, .safetensors or .json), TorchScript (.pt), or a guided-diffusion .pt with --model-flags; absent: the built-in Gaussian-mixture toy");
  flags.mixture_option = command.add_option("--mixture", flags.mixture, "toy mixture: 'demo' or a mixture .json (default demo)");
  flags.dim_option = command.add_option("--dim", flags.dim, "dimension of the demo mixture (default 2)");
  command.add_option("--classifier,--classifier_path", flags.classifier, "noisy classifier for classifier guidance: a guidiff checkpoint, TorchScript (.pt), or a guided-diffusion .pt (with --model-flags / --classifier-flags)");
  flags.shape_option = command.add_option("--shape", flags.shape, "per-sample shape: C,H,W (images) or D (vectors)");
  flags.num_classes_option = command.add_option("--num-classes", flags.num_classes, "classes of the TorchScript model/classifier");
  flags.time_option = command.add_option("--time", flags.time, "TorchScript model time input: discrete (int64 t) or log-snr (float lambda); default discrete");
  flags.sampler_option = command.add_option("--sampler", flags.sampler, "ddpm | ddim | cfg-continuous (default ddim)");
  flags.respacing_option = command.add_option("--respacing,--timestep_respacing", flags.respacing, "timestep respacing, guided-diffusion syntax: ddimN, N or a,b,c");
  command.add_option("--steps", flags.steps, "number of sampling steps (evenly spaced); default all T");
  command.add_option("--eta", flags.eta, "DDIM eta (0: deterministic)");
  flags.schedule_option = command.add_option("--schedule", flags.schedule, "beta schedule: linear | cosine (default linear, or the model's)");
  flags.timesteps_option = command.add_option("--timesteps", flags.timesteps, "T of the model's training schedule (default 1000, or the model's)");
  command.add_flag("--clip", flags.clip, "clamp predicted x0 to [-1, 1] (default for C,H,W shapes)");
  command.add_flag("--no-clip", flags.no_clip, "do not clamp predicted x0 (default for vectors)");
  flags.variance_option = command.add_option("--variance", flags.variance, "DDPM variance: fixed-small | fixed-large | learned-range (model outputs 2C channels)");
  flags.class_option = command.add_option("--class", flags.class_spec, "class to sample: an index, a comma list cycled over samples, labels.npy, or random (uniform, from the seed)");
  command.add_flag("--unconditional", flags.unconditional,
                    "use a class-conditional model's null class (its unconditional half), e.g. for classifier guidance");
  flags.classifier_scale_option = command.add_option("--classifier-scale,--classifier_scale", flags.classifier_scale, "classifier guidance scale s (default 0); guided-diffusion's classifier_scale");
  command.add_option("--cfg-scale", flags.cfg_scale, "classifier-free guidance weight w (default 0)");
  command.add_option("--variance-exponent", flags.variance_exponent, "cfg-continuous variance exponent v in [0, 1] (default 0.3)");
  command.add_option("--guidance-interval", flags.guidance_interval, "guide only for model times in [a,b]: 'a,b'");
  command.add_flag("--bf16", flags.bf16,
                   "run the networks under bfloat16 autocast with float32 accumulation (faster on CPUs with avx512_bf16/AMX, slower elsewhere; samples differ slightly from float32)");
  command.add_option("--seed", flags.seed, "random seed (default 0); sample k's noise depends only on (seed, k)");
  flags.batch_size_option = command.add_option("--batch-size,--batch_size", flags.batch_size, "samples per model batch (default 64); does not change results");
  flags.num_samples_option = command.add_option("--num-samples,--num_samples", flags.num_samples, "number of samples (default 16)");
  command.add_option("--noise", flags.noise, "starting noise x_T as .npy [num_samples, shape...]");
  add_guided_diffusion_flags(command, flags);
}

SamplingSetup prepare_sampling(const SamplingFlags& given_flags, const GlobalOptions& global) {
  if (given_flags.clip && given_flags.no_clip) throw InputError("give --clip or --no-clip, not both");
  // guided-diffusion's flag strings first: its sampling flags may set guidiff's.
  SamplingFlags flags = given_flags;
  const GuidedDiffusionFlags strings = guided_diffusion_flags(flags);
  apply_guided_diffusion_sampling(flags, strings);
  SamplingSetup setup;
  setup.config = generation_config(flags);
  GenerationConfig& config = setup.config;
  const bool state_dict = !flags.model.empty() && model_is_state_dict(flags);
  if (flags.super_resolution && !flags.noise.empty()) throw InputError("--noise does not apply to guidiff upsample");
  if (flags.model.empty()) {
    if (!strings.empty() || !flags.model_config.empty()) throw InputError("--model-flags / --model-config need --model");
    setup.models = toy_models(flags, config, global);
    // The toy's shape is its dimension; --shape, if given, was only checked against it.
    config.sample_shape = {setup.models.mixture->dim()};
  } else if (state_dict || is_checkpoint(flags.model)) {
    setup.models = network_models(flags, strings, config, global);
  } else {
    setup.models = torchscript_models(flags, config, global);
  }
  if (flags.super_resolution && !setup.models.conditioned_on) {
    throw InputError("guidiff upsample needs a super-resolution --model");
  }
  if (flags.bf16) {
    if (flags.model.empty()) throw InputError("--bf16 applies to --model (the built-in mixture is exact, in float64)");
    warn_if_bf16_is_emulated(global.torch_device());
    setup.models.denoiser = std::make_shared<Bf16Denoiser>(setup.models.denoiser);
    if (setup.models.classifier) setup.models.classifier = std::make_shared<Bf16Classifier>(setup.models.classifier);
    if (setup.models.conditioned_on) {
      setup.models.conditioned_on = [base = setup.models.conditioned_on](const torch::Tensor& low_res) -> std::shared_ptr<Denoiser> {
        return std::make_shared<Bf16Denoiser>(base(low_res));
      };
    }
  }
  // Clipping x0 to [-1, 1] suits images (C,H,W), not vectors, unless asked.
  config.clip_x0 = flags.clip || (!flags.no_clip && config.sample_shape.size() == 3);
  if (!flags.noise.empty()) setup.initial_noise = read_npy(flags.noise);
  return setup;
}

GenerationResult run_sampling(Communicator& communicator, const SamplingSetup& setup, const StepCallback& on_progress) {
  if (setup.models.conditioned_on) {
    // The low-resolution inputs are not sharded: upsampling runs whole in one process.
    if (communicator.distributed()) throw InputError("guidiff upsample runs in one process: drop --nproc (or torchrun)");
    return generate_upsampled(setup.models.conditioned_on, setup.models.classifier, setup.config, setup.models.low_res,
                              setup.models.labels, on_progress);
  }
  return generate_across(communicator, setup.models.denoiser, setup.models.classifier, setup.config, setup.models.labels,
                         setup.initial_noise, on_progress);
}

nlohmann::json sampling_manifest(const SamplingFlags& flags, const GenerationConfig& config) {
  nlohmann::json guidance = {{"classifier_scale", config.classifier_scale}, {"cfg_scale", config.cfg_scale}};
  if (!flags.guidance_interval.empty()) guidance["interval"] = {config.interval.low, config.interval.high};
  return {{"guidiff_version", GUIDIFF_VERSION},
          {"model", flags.model.empty() ? "built-in mixture '" + flags.mixture + "'" : flags.model},
          {"classifier", flags.classifier},
          {"unconditional", flags.unconditional},
          {"sampler", to_string(config.sampler)},
          {"steps", config.steps},
          {"respacing", config.respacing},
          {"timesteps", config.timesteps},
          {"eta", config.eta},
          {"clip_x0", config.clip_x0},
          {"guidance", guidance},
          {"classes", flags.class_spec},
          {"bf16", flags.bf16},
          {"seed", config.seed},
          {"num_samples", config.num_samples},
          {"sample_shape", config.sample_shape},
          {"noise", flags.noise},
          {"model_flags", flags.model_flags},
          {"classifier_flags", flags.classifier_flags},
          {"base_samples", flags.base_samples}};
}

}  // namespace guidiff::cli
