// The model, sampler and guidance flags that `guidiff sample` and `guidiff eval` share, and
// what they turn into: the denoiser (a guidiff checkpoint, a TorchScript archive or the
// built-in Gaussian-mixture toy), the classifier, the requested labels and a GenerationConfig.
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "guidiff/cli/commands.hpp"
#include "guidiff/models/denoiser.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/sampling/upsample.hpp"

namespace guidiff::cli {

struct SamplingFlags {
  // The model.
  std::string model, classifier, mixture = "demo", shape, time = "discrete";
  int64_t dim = 2, num_classes = 0;
  // The sampler.
  std::string sampler = "ddim", respacing, schedule = "linear", variance = "fixed-small", sigmas = "karras";
  int64_t steps = 0, timesteps = 1000;
  double eta = 0.0, variance_exponent = 0.3;
  ChurnOptions churn;
  bool clip = false, no_clip = false, unconditional = false, bf16 = false;
  // Guidance and which samples.
  std::string class_spec, guidance_interval, guidance_interval_sigma, noise, guide_model;
  std::string classifier_scale = "0", cfg_scale = "0";  // a number or a per-sample .npy
  double cfg_rescale = 0.0, cfg_pp = 0.0, dynamic_threshold = 0.0;
  bool apg = false;
  ApgOptions apg_options;
  uint64_t seed = 0;
  int64_t batch_size = 64, num_samples = 16;
  // openai/guided-diffusion's `.pt` files: their flag strings, verbatim (or a guidiff JSON
  // config of the network), and its sampling flags under its names (guided_diffusion_setup.hpp).
  std::string model_flags, classifier_flags, model_config, classifier_config;
  std::string use_ddim, clip_denoised;  // guided-diffusion's True/False words
  // Whether guided-diffusion's flag strings or defaults set classifier_scale (not
  // --classifier-scale).
  bool classifier_scale_from_guided_diffusion = false;
  // `guidiff upsample`: a super-resolution model conditioned on these base samples (.npz).
  bool super_resolution = false;
  std::string base_samples;
  // Which flags were given (for flags that apply to one kind of model or sampler only).
  CLI::Option *dim_option = nullptr, *mixture_option = nullptr, *time_option = nullptr,
              *num_classes_option = nullptr, *shape_option = nullptr, *sigmas_option = nullptr,
              *cfg_pp_option = nullptr, *cfg_scale_option = nullptr;
  CLI::Option *sampler_option = nullptr, *respacing_option = nullptr, *schedule_option = nullptr,
              *timesteps_option = nullptr, *variance_option = nullptr,
              *classifier_scale_option = nullptr, *batch_size_option = nullptr,
              *num_samples_option = nullptr, *class_option = nullptr,
              *variance_exponent_option = nullptr;
  std::vector<CLI::Option*> churn_options, apg_options_given;
};

struct SamplingModels {
  std::shared_ptr<Denoiser> denoiser;
  std::shared_ptr<Classifier> classifier;
  std::shared_ptr<Denoiser> guide;         // --guide-model (autoguidance), or null
  std::optional<GaussianMixture> mixture;  // the toy's, for plots
  torch::Tensor labels;                    // requested classes, or undefined
  // The classes' names from the model's file (the classifier's when the model has none), or
  // empty (TorchScript models, data without names).
  std::vector<std::string> class_names;
  // `guidiff upsample`: the super-resolution model for a batch of low-resolution images.
  LowResolutionConditioning conditioned_on;
  torch::Tensor low_res;                   // float [num_samples, C, h, w] in [-1, 1]
  // What the models are and where they came from, written beside the samples.
  nlohmann::json model_card = nlohmann::json::object();
};

// Registers every flag of SamplingFlags on `command`.
void add_sampling_flags(CLI::App& command, SamplingFlags& flags);

struct SamplingSetup {
  GenerationConfig config;
  SamplingModels models;
  torch::Tensor initial_noise;  // from --noise, or undefined
  GenerationModels generation_models() const { return {models.denoiser, models.classifier, models.guide}; }
};

// Validates the flags and loads the models. Throws InputError / FileError / ModelError with
// one line naming the flag or file at fault.
SamplingSetup prepare_sampling(const SamplingFlags& flags, const GlobalOptions& global);

// What produced a set of samples, for the JSON manifest beside them: model, classifier,
// sampler, steps, guidance, seed, count and the guidiff version.
nlohmann::json sampling_manifest(const SamplingFlags& flags, const GenerationConfig& config,
                                 const GenerationResult& result);

// Draws the samples the setup describes: generate_across() (each rank its share, all rows
// back on every rank), or generate_upsampled() for upsample, which runs in one process only.
GenerationResult run_sampling(Communicator& communicator, const SamplingSetup& setup, const StepCallback& on_progress);

}  // namespace guidiff::cli
