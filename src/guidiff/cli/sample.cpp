// `guidiff sample`: builds the model (a TorchScript archive or the built-in Gaussian-mixture
// toy), turns the flags into a GenerationConfig, calls generate() and writes the outputs.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/cli/progress.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/eval/mixture_purity.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/model_sample_shape.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/models/torchscript_models.hpp"
#include "guidiff/sampling/generate.hpp"

namespace guidiff::cli {
namespace {

struct SampleFlags {
  // The model.
  std::string model, classifier, mixture = "demo", shape, time = "discrete";
  int64_t dim = 2, num_classes = 0;
  // The sampler.
  std::string sampler = "ddim", respacing, schedule = "linear", variance = "fixed-small";
  int64_t steps = 0, timesteps = 1000;
  double eta = 0.0, variance_exponent = 0.3;
  bool clip = false, no_clip = false, unconditional = false;
  // Guidance and which samples.
  std::string class_spec, guidance_interval, noise;
  double classifier_scale = 0.0, cfg_scale = 0.0;
  uint64_t seed = 0;
  int64_t batch_size = 64, num_samples = 16;
  // Outputs.
  std::string out, labels_out, plot, grid, trajectory;
  // Which flags were given (for flags that apply to one kind of model only).
  CLI::Option *dim_option = nullptr, *mixture_option = nullptr, *time_option = nullptr,
              *num_classes_option = nullptr, *shape_option = nullptr;
};

struct Models {
  std::shared_ptr<Denoiser> denoiser;
  std::shared_ptr<Classifier> classifier;
  std::optional<GaussianMixture> mixture;  // the toy's, for plots
  torch::Tensor labels;                    // requested classes, or undefined
};

void reject_if_given(const CLI::Option* option, const std::string& why) {
  if (option->count() > 0) throw InputError(option->get_name() + " " + why);
}

// The built-in Gaussian-mixture toy with its exact denoiser (and exact classifier when
// classifier guidance is asked for without --classifier). Classifier guidance alone uses the
// unconditional mixture, as Dhariwal & Nichol guide unconditional models; every other
// request with classes uses the class-conditional one (CFG's w = 0 is plain conditional).
Models toy_models(const SampleFlags& flags, const GenerationConfig& config, const GlobalOptions& global) {
  reject_if_given(flags.time_option, "applies to --model (the built-in mixture picks its time input from --sampler)");
  reject_if_given(flags.num_classes_option, "applies to --model (the built-in mixture knows its classes)");
  if (global.device != "cpu") throw InputError("--device " + global.device + " applies to --model; the built-in mixture runs on the CPU");
  Models models;
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
  models.labels = labels_from_spec(flags.class_spec, config.num_samples, mixture.num_classes);
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
std::shared_ptr<Classifier> load_classifier(const SampleFlags& flags, TorchScriptOptions options,
                                            const torch::Device& device) {
  if (!is_checkpoint(flags.classifier)) return std::make_shared<TorchScriptClassifier>(flags.classifier, options);
  const Model model = load_model(flags.classifier, device);
  if (!model.classifier) {
    throw InputError("--classifier '" + flags.classifier + "' holds a " + model_kind_name(model.kind) +
                     ", not a classifier");
  }
  return model.classifier;
}

Models torchscript_models(const SampleFlags& flags, const GenerationConfig& config, const GlobalOptions& global) {
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
  Models models;
  TorchScriptOptions denoiser_options = options;
  denoiser_options.learn_sigma = config.fixed_variance == VarianceKind::learned_range;
  models.denoiser = std::make_shared<TorchScriptDenoiser>(flags.model, denoiser_options);
  if (flags.unconditional) models.denoiser = std::make_shared<NullClassDenoiser>(models.denoiser);
  if (!flags.classifier.empty()) models.classifier = load_classifier(flags, options, options.device);
  const int64_t classes = models.denoiser->num_classes() > 0
                              ? models.denoiser->num_classes()
                              : (models.classifier ? models.classifier->num_classes() : 0);
  models.labels = labels_from_spec(flags.class_spec, config.num_samples, classes);
  return models;
}

// Networks trained by `guidiff train`: the config beside the weights gives the shape, time
// input and classes, so none of --shape, --time, --num-classes is needed.
Models checkpoint_models(const SampleFlags& flags, GenerationConfig& config, const GlobalOptions& global) {
  reject_if_given(flags.mixture_option, "applies to the built-in mixture only (no --model)");
  reject_if_given(flags.dim_option, "applies to the built-in mixture only (no --model)");
  reject_if_given(flags.time_option, "applies to TorchScript models (a checkpoint's config has its time input)");
  const torch::Device device = global.torch_device();
  const Model model = load_model(flags.model, device);
  if (!model.denoiser) {
    throw InputError("--model '" + flags.model + "' holds a " + model_kind_name(model.kind) + ", not a denoiser");
  }
  const std::vector<int64_t> shape = model_sample_shape(model);
  if (flags.shape_option->count() > 0 && config.sample_shape != shape) {
    throw InputError("--shape " + flags.shape + " does not match the model's sample shape");
  }
  config.sample_shape = shape;
  Models models;
  models.denoiser = flags.unconditional ? std::make_shared<NullClassDenoiser>(model.denoiser) : model.denoiser;
  int64_t classes = models.denoiser->num_classes();
  if (!flags.classifier.empty()) {
    TorchScriptOptions options;
    options.time_kind = model.denoiser->time_kind();
    options.num_classes = flags.num_classes > 0 ? flags.num_classes : model.denoiser->num_classes();
    options.device = device;
    models.classifier = load_classifier(flags, options, device);
    if (classes == 0) classes = models.classifier->num_classes();
  }
  if (flags.num_classes_option->count() > 0 && flags.num_classes != classes) {
    throw InputError("--num-classes " + std::to_string(flags.num_classes) + " does not match the model's " +
                     std::to_string(classes) + " classes");
  }
  models.labels = labels_from_spec(flags.class_spec, config.num_samples, classes);
  return models;
}

GenerationConfig generation_config(const SampleFlags& flags) {
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
  config.keep_trajectory = !flags.trajectory.empty();
  if (flags.shape_option->count() > 0) config.sample_shape = parse_positive_list("--shape", flags.shape);
  return config;
}

void check_outputs(const SampleFlags& flags, const std::vector<int64_t>& shape, const torch::Tensor& labels) {
  if (flags.out.empty() && flags.plot.empty() && flags.grid.empty()) {
    throw InputError("nothing to write: give --out (and/or --plot, --grid)");
  }
  if (!flags.labels_out.empty() && !labels.defined()) {
    throw InputError("--labels-out needs class labels (--class)");
  }
  if (!flags.plot.empty() && shape != std::vector<int64_t>{2}) {
    throw InputError("--plot draws 2-D samples (shape 2); use --grid for images");
  }
  if (!flags.grid.empty() && (shape.size() != 3 || (shape[0] != 1 && shape[0] != 3))) {
    throw InputError("--grid needs image samples of shape 1,H,W or 3,H,W");
  }
  check_output_path("--out", flags.out);
  check_output_path("--labels-out", flags.labels_out);
  check_output_path("--plot", flags.plot);
  check_output_path("--grid", flags.grid);
  check_output_path("--trajectory", flags.trajectory);
}

std::string describe(const GenerationConfig& config) {
  char text[160];
  std::snprintf(text, sizeof text, "%s, classifier scale s = %g, CFG weight w = %g", to_string(config.sampler).c_str(),
                config.classifier_scale, config.cfg_scale);
  return text;
}

void write_outputs(const SampleFlags& flags, const GenerationConfig& config, const Models& models,
                   const GenerationResult& result) {
  if (!flags.out.empty()) write_npy(flags.out, result.samples);
  if (!flags.labels_out.empty()) write_npy(flags.labels_out, result.labels);
  if (!flags.trajectory.empty()) write_npy(flags.trajectory, torch::stack(result.trajectory));
  if (!flags.grid.empty()) {
    ImageGridOptions grid;
    grid.nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(config.num_samples))));
    write_png_grid(flags.grid, result.samples, grid);
  }
  if (!flags.plot.empty()) {
    // Colour by the requested class; without one, the toy's samples by the class of their
    // nearest mixture component.
    torch::Tensor colours = result.labels;
    if (!colours.defined() && models.mixture) colours = nearest_class(*models.mixture, result.samples);
    ScatterPlotOptions options;
    options.title = "guidiff sample: " + describe(config);
    write_scatter_plot(flags.plot, {{std::to_string(config.num_samples) + " samples", result.samples, colours}},
                       options);
  }
}

void run_sample(SampleFlags& flags, const GlobalOptions& global) {
  if (flags.clip && flags.no_clip) throw InputError("give --clip or --no-clip, not both");
  GenerationConfig config = generation_config(flags);
  Models models;
  if (flags.model.empty()) {
    models = toy_models(flags, config, global);
    // The toy's shape is its dimension; --shape, if given, was only checked against it.
    config.sample_shape = {models.mixture->dim()};
  } else if (is_checkpoint(flags.model)) {
    models = checkpoint_models(flags, config, global);
  } else {
    models = torchscript_models(flags, config, global);
  }
  // Clipping x0 to [-1, 1] suits images (C,H,W), not vectors, unless asked.
  config.clip_x0 = flags.clip || (!flags.no_clip && config.sample_shape.size() == 3);
  check_outputs(flags, config.sample_shape, models.labels);

  torch::Tensor noise;
  if (!flags.noise.empty()) noise = read_npy(flags.noise);

  ProgressBar progress("sampling");
  const GenerationResult result =
      generate(models.denoiser, models.classifier, config, models.labels, noise,
               [&progress](int64_t done, int64_t total) { progress.update(done, total); });
  write_outputs(flags, config, models, result);
}

}  // namespace

Command add_sample_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command = app.add_subcommand("sample", "draw samples from a diffusion model, optionally guided");
  auto flags = std::make_shared<SampleFlags>();
  SampleFlags& f = *flags;

  command->add_option("--model", f.model, "denoiser: a guidiff checkpoint (run dir, .safetensors or .json) or TorchScript (.pt); absent: the built-in Gaussian-mixture toy");
  f.mixture_option = command->add_option("--mixture", f.mixture, "toy mixture: 'demo' or a mixture .json (default demo)");
  f.dim_option = command->add_option("--dim", f.dim, "dimension of the demo mixture (default 2)");
  command->add_option("--classifier", f.classifier, "noisy classifier for classifier guidance: a guidiff checkpoint or TorchScript (.pt)");
  f.shape_option = command->add_option("--shape", f.shape, "per-sample shape: C,H,W (images) or D (vectors)");
  f.num_classes_option = command->add_option("--num-classes", f.num_classes, "classes of the TorchScript model/classifier");
  f.time_option = command->add_option("--time", f.time, "TorchScript model time input: discrete (int64 t) or log-snr (float lambda); default discrete");
  command->add_option("--sampler", f.sampler, "ddpm | ddim | cfg-continuous (default ddim)");
  command->add_option("--respacing", f.respacing, "timestep respacing, guided-diffusion syntax: ddimN, N or a,b,c");
  command->add_option("--steps", f.steps, "number of sampling steps (evenly spaced); default all T");
  command->add_option("--eta", f.eta, "DDIM eta (0: deterministic)");
  command->add_option("--schedule", f.schedule, "beta schedule: linear | cosine (default linear)");
  command->add_option("--timesteps", f.timesteps, "T of the model's training schedule (default 1000)");
  command->add_flag("--clip", f.clip, "clamp predicted x0 to [-1, 1] (default for C,H,W shapes)");
  command->add_flag("--no-clip", f.no_clip, "do not clamp predicted x0 (default for vectors)");
  command->add_option("--variance", f.variance, "DDPM variance: fixed-small | fixed-large | learned-range (model outputs 2C channels)");
  command->add_option("--class", f.class_spec, "class to sample: an index, a comma list cycled over samples, or labels.npy");
  command->add_flag("--unconditional", f.unconditional,
                    "use a class-conditional model's null class (its unconditional half), e.g. for classifier guidance");
  command->add_option("--classifier-scale", f.classifier_scale, "classifier guidance scale s (default 0)");
  command->add_option("--cfg-scale", f.cfg_scale, "classifier-free guidance weight w (default 0)");
  command->add_option("--variance-exponent", f.variance_exponent, "cfg-continuous variance exponent v in [0, 1] (default 0.3)");
  command->add_option("--guidance-interval", f.guidance_interval, "guide only for model times in [a,b]: 'a,b'");
  command->add_option("--seed", f.seed, "random seed (default 0); sample k's noise depends only on (seed, k)");
  command->add_option("--batch-size", f.batch_size, "samples per model batch (default 64); does not change results");
  command->add_option("--num-samples", f.num_samples, "number of samples (default 16)");
  command->add_option("--noise", f.noise, "starting noise x_T as .npy [num_samples, shape...]");
  command->add_option("--out", f.out, "samples as float32 .npy [num_samples, shape...]");
  command->add_option("--labels-out", f.labels_out, "requested labels as int64 .npy [num_samples]");
  command->add_option("--plot", f.plot, "scatter plot PNG of 2-D samples coloured by class");
  command->add_option("--grid", f.grid, "PNG grid of image samples");
  command->add_option("--trajectory", f.trajectory, "every step's x as float32 .npy [steps + 1, num_samples, shape...]");
  return {command, [flags, &global] { run_sample(*flags, global); }};
}

}  // namespace guidiff::cli
