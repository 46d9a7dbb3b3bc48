// Model, sampler and guidance flags shared by `sample` and `eval` (see sampling_setup.hpp).
#include "guidiff/cli/sampling_setup.hpp"

#include <cmath>
#include <cstdlib>

#include "guidiff/cli/common.hpp"
#include "guidiff/cli/guided_diffusion_setup.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/models/bf16_models.hpp"
#include "guidiff/models/guided_diffusion_models.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/model_sample_shape.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/models/torchscript_models.hpp"
#include "guidiff/models/winograd_conv.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/version.hpp"

namespace guidiff::cli {
namespace {

void reject_if_given(const CLI::Option* option, const std::string& why) {
  if (option->count() > 0) throw InputError(option->get_name() + " " + why);
}

// --time discrete | log-snr.
TimeKind time_kind(const SamplingFlags& flags) {
  if (flags.time == "discrete") return TimeKind::discrete_timestep;
  if (flags.time == "log-snr") return TimeKind::log_snr;
  throw InputError("unknown --time '" + flags.time + "' (expected discrete or log-snr)");
}

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// "--cfg-scale 3" or "--cfg-scale w.npy": one number, or one value per sample from a .npy.
void parse_scale(const std::string& flag, const std::string& text, double& scale, torch::Tensor& per_sample) {
  if (ends_with(text, ".npy")) {
    per_sample = read_npy(text);
    if (!per_sample.is_floating_point()) throw InputError(flag + " file '" + text + "' must hold floating-point values");
    per_sample = per_sample.to(torch::kFloat64);
    scale = 0.0;
    return;
  }
  char* end = nullptr;
  scale = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(scale)) {
    throw InputError(flag + " '" + text + "': expected a finite number or a .npy file of per-sample values");
  }
}

// A path names a guidiff checkpoint (safetensors + JSON config: a run directory, a prefix or
// either file) rather than a TorchScript archive (.pt / .pth / .ts).
bool is_checkpoint(const std::string& path) {
  return !(ends_with(path, ".pt") || ends_with(path, ".pth") || ends_with(path, ".ts") ||
           ends_with(path, ".zip"));
}

struct LoadedClassifier {
  std::shared_ptr<Classifier> classifier;
  nlohmann::json card;                   // the model card's entry
  std::vector<std::string> class_names;  // a guidiff checkpoint's; empty for TorchScript
  std::vector<int64_t>
      input_shape;  // a guidiff checkpoint's per-sample shape; empty for TorchScript
};

// A classifier from a checkpoint or a TorchScript archive.
LoadedClassifier load_classifier(const SamplingFlags& flags, TorchScriptOptions options,
                                 const torch::Device& device) {
  if (!is_checkpoint(flags.classifier)) {
    return {std::make_shared<TorchScriptClassifier>(flags.classifier, options),
            {{"path", flags.classifier}, {"kind", "torchscript"}},
            {},
            {}};
  }
  Model model = load_model(flags.classifier, device);
  check_guidance_classifier(model, "--classifier '" + flags.classifier + "'");
  return {model.classifier, model_card(model, flags.classifier), model.class_names,
          model_sample_shape(model)};
}

// A guidiff checkpoint classifier must take the samples being drawn; `maker` says what makes
// them ("the mixture's are", "--model 'X' makes"). TorchScript classifiers declare no shape.
void check_classifier_input(const LoadedClassifier& loaded, const SamplingFlags& flags,
                            const std::vector<int64_t>& sample_shape, const std::string& maker) {
  if (!loaded.input_shape.empty() && loaded.input_shape != sample_shape) {
    throw InputError("--classifier '" + flags.classifier + "' takes samples of shape " +
                     shape_string(loaded.input_shape) + "; " + maker + " " +
                     shape_string(sample_shape));
  }
}

// The built-in Gaussian-mixture toy with its exact denoiser (and exact classifier when
// classifier guidance is asked for without --classifier). Classifier guidance alone uses the
// unconditional mixture, as Dhariwal & Nichol guide unconditional models; every other
// request with classes uses the class-conditional one (CFG's w = 0 is plain conditional).
SamplingModels toy_models(const SamplingFlags& flags, const GenerationConfig& config, const GlobalOptions& global) {
  const bool sigma_sampler = is_sigma_sampler(config.sampler);
  if (!sigma_sampler) {
    reject_if_given(flags.time_option, "applies to --model and to the toy with a sigma-space sampler (ddpm and ddim "
                                       "take discrete time, cfg-continuous log-SNR)");
  }
  if (!flags.guide_model.empty()) throw InputError("--guide-model applies to --model (the built-in mixture is exact)");
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
  const bool log_snr = config.sampler == SamplerKind::cfg_continuous || (sigma_sampler && time_kind(flags) == TimeKind::log_snr);
  const NoiseLevelMap levels =
      log_snr ? NoiseLevelMap::log_snr() : NoiseLevelMap::discrete(make_schedule(config.schedule, config.timesteps));
  models.labels = labels_from_spec(flags.class_spec, config.num_samples, mixture.num_classes, config.seed);
  const bool classifier_only = uses_classifier(config) && !uses_cfg(config);
  const bool conditional = models.labels.defined() && !classifier_only;
  models.denoiser = std::make_shared<MixtureDenoiser>(mixture, levels, conditional);
  if (!flags.classifier.empty()) {
    TorchScriptOptions options;
    options.time_kind = levels.kind();
    options.num_classes = mixture.num_classes;
    LoadedClassifier loaded = load_classifier(flags, options, torch::kCPU);
    if (loaded.classifier->num_classes() != mixture.num_classes) {
      throw InputError("--classifier '" + flags.classifier + "' tells " +
                       std::to_string(loaded.classifier->num_classes()) +
                       " classes apart; the mixture has " + std::to_string(mixture.num_classes));
    }
    check_classifier_input(loaded, flags, {mixture.dim()}, "the mixture's are");
    models.classifier = loaded.classifier;
    models.model_card["classifier"] = loaded.card;
  } else if (uses_classifier(config)) {
    models.classifier = std::make_shared<MixtureClassifier>(mixture, levels);
  }
  models.model_card["model"] = {{"kind", "gaussian mixture (exact)"}, {"mixture", flags.mixture}};
  return models;
}

// --guide-model: a checkpoint or a TorchScript denoiser (with the main model's options). With
// --unconditional a conditional guide gets the null class as well.
std::shared_ptr<Denoiser> load_guide(const SamplingFlags& flags, const TorchScriptOptions& options) {
  std::shared_ptr<Denoiser> guide;
  if (is_checkpoint(flags.guide_model)) {
    const Model model = load_model(flags.guide_model, options.device);
    if (!model.denoiser) {
      throw InputError("--guide-model '" + flags.guide_model + "' holds a " + model_kind_name(model.kind) +
                       ", not a denoiser");
    }
    guide = model.denoiser;
  } else {
    guide = std::make_shared<TorchScriptDenoiser>(flags.guide_model, options);
  }
  if (flags.unconditional && guide->num_classes() > 0) guide = std::make_shared<NullClassDenoiser>(guide);
  return guide;
}

SamplingModels torchscript_models(const SamplingFlags& flags, const GenerationConfig& config, const GlobalOptions& global) {
  reject_if_given(flags.mixture_option, "applies to the built-in mixture only (no --model)");
  reject_if_given(flags.dim_option, "applies to the built-in mixture only (no --model)");
  if (flags.shape_option->count() == 0) throw InputError("--shape is required with --model (C,H,W for images, D for vectors)");
  TorchScriptOptions options;
  options.time_kind = time_kind(flags);
  options.num_classes = flags.num_classes;
  options.device = global.torch_device();
  SamplingModels models;
  TorchScriptOptions denoiser_options = options;
  denoiser_options.learn_sigma = config.fixed_variance == VarianceKind::learned_range;
  models.denoiser = std::make_shared<TorchScriptDenoiser>(flags.model, denoiser_options);
  if (flags.unconditional) models.denoiser = std::make_shared<NullClassDenoiser>(models.denoiser);
  if (!flags.classifier.empty()) {
    LoadedClassifier loaded = load_classifier(flags, options, options.device);
    models.classifier = loaded.classifier;
    models.model_card["classifier"] = loaded.card;
  }
  if (!flags.guide_model.empty()) models.guide = load_guide(flags, denoiser_options);
  models.model_card["model"] = {{"path", flags.model}, {"kind", "torchscript"}};
  if (!flags.guide_model.empty()) models.model_card["guide_model"] = {{"path", flags.guide_model}};
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
  models.class_names = model.class_names;
  models.denoiser = flags.unconditional ? std::make_shared<NullClassDenoiser>(model.denoiser) : model.denoiser;
  if (!flags.guide_model.empty()) {
    TorchScriptOptions options;
    options.time_kind = model.denoiser->time_kind();
    options.num_classes = model.denoiser->num_classes();
    options.device = device;
    models.guide = load_guide(flags, options);
  }
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
      LoadedClassifier loaded = load_classifier(flags, options, device);
      check_classifier_input(loaded, flags, shape, "--model '" + flags.model + "' makes");
      models.classifier = loaded.classifier;
      models.model_card["classifier"] = loaded.card;
      if (models.class_names.empty()) models.class_names = std::move(loaded.class_names);
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

// --sigmas and the churn flags, which only the sigma-space samplers (churn: euler, heun) take.
void apply_sampler_flags(const SamplingFlags& flags, GenerationConfig& config) {
  const std::string sampler = to_string(config.sampler);
  if (flags.sigmas_option->count() > 0 && !is_sigma_sampler(config.sampler)) {
    throw InputError("--sigmas applies to the sigma-space samplers, not " + sampler + " (use --steps or --respacing)");
  }
  config.sigmas = parse_sigma_spacing(flags.sigmas);
  for (const CLI::Option* option : flags.churn_options) {
    if (option->count() > 0 && config.sampler != SamplerKind::euler && config.sampler != SamplerKind::heun) {
      throw InputError(option->get_name() + " applies to the euler and heun samplers (sampler is " + sampler + ")");
    }
  }
  config.churn = flags.churn;
}

// CFG rescale, APG, CFG++ and dynamic thresholding.
void apply_guidance_rules(const SamplingFlags& flags, GenerationConfig& config) {
  config.cfg_rules.rescale_phi = flags.cfg_rescale;
  for (const CLI::Option* option : flags.apg_options_given) {
    if (option->count() > 0 && !flags.apg) throw InputError(option->get_name() + " needs --apg");
  }
  if (flags.apg) config.cfg_rules.apg = flags.apg_options;
  if (flags.cfg_pp_option->count() > 0) {
    if (flags.cfg_scale_option->count() > 0) {
      throw InputError("give --cfg-scale or --cfg-pp, not both (CFG++'s lambda is its own weight)");
    }
    if (!std::isfinite(flags.cfg_pp) || flags.cfg_pp < 0) {
      throw InputError("--cfg-pp lambda must be finite and >= 0, got " + std::to_string(flags.cfg_pp));
    }
    // CFG++'s eps_lambda = eps_u + lambda (eps_c - eps_u) is eq. 6 with w = lambda - 1.
    config.cfg_rules.cfg_pp = true;
    config.cfg_scale = flags.cfg_pp - 1.0;
  }
  config.dynamic_threshold = flags.dynamic_threshold;
}

// Flags that would be read and then have no effect on this run: refused, so that a user who
// asks for something is never handed samples made without it.
void reject_unused_flags(const SamplingFlags& flags, const SamplingSetup& setup) {
  const GenerationConfig& config = setup.config;
  const std::string sampler = to_string(config.sampler);
  if (given(flags.variance_option)) {
    if (config.sampler != SamplerKind::ddpm) {
      throw InputError("--variance applies to the ddpm sampler (sampler is " + sampler + ")");
    }
    if (setup.models.denoiser && setup.models.denoiser->learns_variance() &&
        config.fixed_variance != VarianceKind::learned_range) {
      throw InputError(
          "--variance " + flags.variance +
          ": the model learns its variance, and the ddpm sampler uses it (learned-range)");
    }
  }
  if (given(flags.variance_exponent_option) && config.sampler != SamplerKind::cfg_continuous) {
    throw InputError("--variance-exponent applies to the cfg-continuous sampler (sampler is " +
                     sampler + ")");
  }
  // The toy has no --unconditional: it takes its unconditional mixture for classifier guidance
  // by itself, and the flag was silently dropped. (A network model's null class has no classes,
  // so CFG and --class are refused with it already.)
  if (flags.unconditional && flags.model.empty()) {
    throw InputError(
        "--unconditional applies to --model (the built-in mixture takes its unconditional form for "
        "classifier guidance by itself)");
  }
  if ((!flags.guidance_interval.empty() || !flags.guidance_interval_sigma.empty()) &&
      !uses_cfg(config) && !uses_classifier(config)) {
    throw InputError(
        std::string(flags.guidance_interval.empty() ? "--guidance-interval-sigma"
                                                    : "--guidance-interval") +
        " limits guidance, but none is asked for (--cfg-scale, --cfg-pp or --classifier-scale)");
  }
}

GenerationConfig generation_config(const SamplingFlags& flags) {
  GenerationConfig config;
  // Names first, so a misspelt sampler or schedule is the error reported.
  config.sampler = parse_sampler(flags.sampler);
  config.schedule = parse_beta_schedule(flags.schedule);
  config.fixed_variance = parse_variance_kind(flags.variance);
  check_timestep_count(flags.timesteps, "--timesteps");  // before any schedule of that size is made
  config.timesteps = flags.timesteps;
  config.respacing = flags.respacing;
  config.steps = flags.steps;
  config.eta = flags.eta;
  config.variance_exponent = flags.variance_exponent;
  parse_scale("--classifier-scale", flags.classifier_scale, config.classifier_scale, config.classifier_scales);
  parse_scale("--cfg-scale", flags.cfg_scale, config.cfg_scale, config.cfg_scales);
  if (!flags.guidance_interval.empty() && !flags.guidance_interval_sigma.empty()) {
    throw InputError("give --guidance-interval (model time) or --guidance-interval-sigma, not both");
  }
  if (!flags.guidance_interval.empty()) {
    const auto [low, high] = parse_number_pair("--guidance-interval", flags.guidance_interval);
    config.interval.low = low;
    config.interval.high = high;
  }
  if (!flags.guidance_interval_sigma.empty()) {
    const auto [low, high] = parse_number_pair("--guidance-interval-sigma", flags.guidance_interval_sigma);
    config.interval = GuidanceInterval{low, high, GuidanceInterval::Unit::sigma};
  }
  apply_sampler_flags(flags, config);
  apply_guidance_rules(flags, config);
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
  flags.sampler_option = command.add_option("--sampler", flags.sampler,
                     "ddpm | ddim | cfg-continuous | euler | euler-a | heun | dpmpp-2m | dpmpp-3m | dpmpp-2m-sde | "
                     "dpm-2s | unipc (default ddim; docs/samplers.md)");
  flags.sigmas_option = command.add_option("--sigmas", flags.sigmas,
                                           "sigma-space samplers' spacing: karras | timesteps | log-snr (default karras)");
  flags.churn_options = {
      command.add_option("--s-churn", flags.churn.s_churn, "euler/heun: EDM's S_churn (default 0: deterministic)"),
      command.add_option("--s-tmin", flags.churn.s_tmin, "euler/heun: churn only for sigma >= S_tmin (default 0)"),
      command.add_option("--s-tmax", flags.churn.s_tmax, "euler/heun: churn only for sigma <= S_tmax (default inf)"),
      command.add_option("--s-noise", flags.churn.s_noise, "euler/heun: EDM's S_noise (default 1)")};
  flags.respacing_option = command.add_option("--respacing,--timestep_respacing", flags.respacing, "timestep respacing, guided-diffusion syntax: ddimN, N or a,b,c");
  command.add_option("--steps", flags.steps, "number of sampling steps; default all T (sigma-space samplers: 50)");
  command.add_option("--eta", flags.eta, "DDIM eta (0: deterministic)");
  flags.schedule_option = command.add_option("--schedule", flags.schedule, "beta schedule: linear | cosine (default linear, or the model's)");
  flags.timesteps_option = command.add_option("--timesteps", flags.timesteps, "T of the model's training schedule (default 1000, or the model's)");
  command.add_flag("--clip", flags.clip, "clamp predicted x0 to [-1, 1] (default for C,H,W shapes)");
  command.add_flag("--no-clip", flags.no_clip, "do not clamp predicted x0 (default for vectors)");
  flags.variance_option = command.add_option("--variance", flags.variance, "DDPM variance: fixed-small | fixed-large | learned-range (model outputs 2C channels)");
  flags.class_option = command.add_option("--class", flags.class_spec, "class to sample: an index, a comma list cycled over samples, labels.npy, or random (uniform, from the seed)");
  command.add_flag("--unconditional", flags.unconditional,
                    "use a class-conditional model's null class (its unconditional half), e.g. for classifier guidance");
  flags.classifier_scale_option = command.add_option(
      "--classifier-scale,--classifier_scale", flags.classifier_scale,
      "classifier guidance scale s, or a .npy of one s per sample (default 0); guided-diffusion's classifier_scale");
  flags.cfg_scale_option = command.add_option(
      "--cfg-scale", flags.cfg_scale, "classifier-free guidance weight w, or a .npy of one w per sample (default 0)");
  command.add_option("--guide-model", flags.guide_model,
                     "autoguidance: a smaller/shorter-trained denoiser of the same data; --cfg-scale w weighs it");
  command.add_option("--cfg-rescale", flags.cfg_rescale, "CFG rescale phi in [0, 1] (Lin et al. 2024; default 0)");
  command.add_flag("--apg", flags.apg, "adaptive projected guidance instead of eq. 6 (Sadat et al. 2024)");
  flags.apg_options_given = {
      command.add_option("--apg-eta", flags.apg_options.eta, "APG: weight of the parallel component (default 0)"),
      command.add_option("--apg-momentum", flags.apg_options.momentum, "APG: momentum beta (default -0.5)"),
      command.add_option("--apg-threshold", flags.apg_options.norm_threshold,
                         "APG: norm threshold r on the x0 difference (default 0: none)")};
  flags.cfg_pp_option = command.add_option("--cfg-pp", flags.cfg_pp,
                                           "CFG++ with guidance scale lambda (Chung et al. 2024; ddim and euler)");
  command.add_option("--dynamic-threshold", flags.dynamic_threshold,
                     "dynamic thresholding of x0 at percentile p in (0, 1], e.g. 0.995 (Saharia et al. 2022)");
  flags.variance_exponent_option =
      command.add_option("--variance-exponent", flags.variance_exponent,
                         "cfg-continuous variance exponent v in [0, 1] (default 0.3)");
  command.add_option("--guidance-interval", flags.guidance_interval, "guide only for model times in [a,b]: 'a,b'");
  command.add_option("--guidance-interval-sigma", flags.guidance_interval_sigma,
                     "guide only for noise levels sigma in [lo,hi]: 'lo,hi' (Kynkaanniemi et al. 2024)");
  command.add_flag("--bf16", flags.bf16,
                   "run the networks under bfloat16 autocast with float32 accumulation (faster on CPUs with avx512_bf16/AMX, slower elsewhere; samples differ slightly from float32)");
  command.add_option("--seed", flags.seed, "random seed (default 0); sample k's noise depends only on (seed, k)");
  flags.batch_size_option = command.add_option(
      "--batch-size,--batch_size", flags.batch_size,
      "samples per model batch (default 64); changes samples only through float32 rounding");
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
  // A classifier given without a scale would be loaded and then ignored (s = 0).
  if (!flags.classifier.empty() && flags.classifier_scale_option->count() == 0 &&
      !flags.classifier_scale_from_guided_diffusion) {
    throw InputError(
        "--classifier '" + flags.classifier +
        "' needs --classifier-scale s (the guidance strength; 0 samples without guidance)");
  }
  SamplingSetup setup;
  setup.config = generation_config(flags);
  GenerationConfig& config = setup.config;
  const bool state_dict = !flags.model.empty() && model_is_state_dict(flags);
  classifier_is_state_dict(flags);  // refuses --classifier-flags/--classifier-config without --classifier
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
    const torch::Device device = global.torch_device();
    warn_if_bf16_is_emulated(device);
    // The networks were loaded for this run alone, so they keep their lowered weights in bf16
    // (Bf16Weights::stored); TorchScript models have no libtorch network to keep them in.
    const auto weights = [](auto& model) {
      return model.network_module() ? Bf16Weights::stored : Bf16Weights::cast_per_call;
    };
    setup.models.denoiser = std::make_shared<Bf16Denoiser>(setup.models.denoiser,
                                                           weights(*setup.models.denoiser), device);
    if (setup.models.classifier) {
      setup.models.classifier = std::make_shared<Bf16Classifier>(
          setup.models.classifier, weights(*setup.models.classifier), device);
    }
    if (setup.models.conditioned_on) {
      setup.models.conditioned_on = [base = setup.models.conditioned_on, weights, device](
                                        const torch::Tensor& low_res) -> std::shared_ptr<Denoiser> {
        const auto model = base(low_res);
        return std::make_shared<Bf16Denoiser>(model, weights(*model), device);
      };
    }
    if (setup.models.guide)
      setup.models.guide =
          std::make_shared<Bf16Denoiser>(setup.models.guide, weights(*setup.models.guide), device);
  }
  reject_unused_flags(flags, setup);
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
  return generate_across(communicator, setup.generation_models(), setup.config, setup.models.labels, setup.initial_noise,
                         on_progress);
}

nlohmann::json sampling_manifest(const SamplingFlags& flags, const GenerationConfig& config,
                                 const GenerationResult& result) {
  // A number, or the .npy of per-sample values.
  const auto scale = [](double value, const torch::Tensor& per_sample, const std::string& flag) {
    return per_sample.defined() ? nlohmann::json(flag) : nlohmann::json(value);
  };
  nlohmann::json guidance = {{"classifier_scale", scale(config.classifier_scale, config.classifier_scales, flags.classifier_scale)},
                             {"cfg_scale", scale(config.cfg_scale, config.cfg_scales, flags.cfg_scale)}};
  if (!flags.guidance_interval.empty()) guidance["interval"] = {config.interval.low, config.interval.high};
  if (!flags.guidance_interval_sigma.empty()) guidance["interval_sigma"] = {config.interval.low, config.interval.high};
  if (!flags.guide_model.empty()) guidance["guide_model"] = flags.guide_model;
  if (config.cfg_rules.rescale_phi != 0.0) guidance["cfg_rescale"] = config.cfg_rules.rescale_phi;
  if (config.cfg_rules.apg) {
    guidance["apg"] = {{"eta", config.cfg_rules.apg->eta}, {"momentum", config.cfg_rules.apg->momentum},
                       {"norm_threshold", config.cfg_rules.apg->norm_threshold}};
  }
  if (config.cfg_rules.cfg_pp) guidance["cfg_pp_lambda"] = flags.cfg_pp;
  if (config.dynamic_threshold != 0.0) guidance["dynamic_threshold"] = config.dynamic_threshold;
  return {{"guidiff_version", GUIDIFF_VERSION},
          {"model", flags.model.empty() ? "built-in mixture '" + flags.mixture + "'" : flags.model},
          {"classifier", flags.classifier},
          {"unconditional", flags.unconditional},
          {"sampler", to_string(config.sampler)},
          {"sigmas", is_sigma_sampler(config.sampler) ? to_string(config.sigmas) : ""},
          {"churn",
           {{"s_churn", config.churn.s_churn},
            {"s_tmin", config.churn.s_tmin},
            {"s_tmax", std::isinf(config.churn.s_tmax) ? nlohmann::json("inf")
                                                       : nlohmann::json(config.churn.s_tmax)},
            {"s_noise", config.churn.s_noise}}},
          {"steps", config.steps},
          {"steps_run", result.steps},
          {"model_evaluations", result.model_evaluations},
          {"respacing", config.respacing},
          {"timesteps", config.timesteps},
          {"eta", config.eta},
          {"clip_x0", config.clip_x0},
          {"guidance", guidance},
          {"classes", flags.class_spec},
          {"bf16", flags.bf16},
          {"conv", winograd_enabled() ? "winograd" : "direct"},
          {"seed", config.seed},
          {"num_samples", config.num_samples},
          {"sample_shape", config.sample_shape},
          {"noise", flags.noise},
          {"model_flags", flags.model_flags},
          {"classifier_flags", flags.classifier_flags},
          {"base_samples", flags.base_samples}};
}

}  // namespace guidiff::cli
