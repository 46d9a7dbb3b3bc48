// The command line's side of openai/guided-diffusion's models: their flag strings and
// sampling flags among guidiff's options, which loader a `.pt` path goes through, and the
// base samples of `guidiff upsample`. The mapping itself is the library's
// (models/guided_diffusion_flags.hpp).
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "guidiff/cli/sampling_setup.hpp"
#include "guidiff/models/guided_diffusion_flags.hpp"
#include "guidiff/models/model_files.hpp"

namespace guidiff::cli {

// Registers --model-flags, --classifier-flags, --model-config, --classifier-config,
// --use_ddim and --clip_denoised. (guided-diffusion's other sampling names are aliases of
// guidiff's options: --timestep_respacing, --classifier_scale, --batch_size, --num_samples,
// --model_path, --classifier_path.)
void add_guided_diffusion_flags(CLI::App& command, SamplingFlags& flags);

// --model-flags and --classifier-flags parsed into one namespace, as guided-diffusion's
// scripts parse them. Throws InputError naming the string and the flag at fault.
GuidedDiffusionFlags guided_diffusion_flags(const SamplingFlags& flags);

// Sampling flags given under guided-diffusion's names (--use_ddim, --clip_denoised) or inside
// the flag strings (--timestep_respacing, --use_ddim, --classifier_scale, --clip_denoised,
// --batch_size, --num_samples) become guidiff's settings in `flags`, unless guidiff's own
// option was given with another value: then InputError names both. With --model-flags,
// guided-diffusion's defaults apply where nothing was given: DDPM, and classifier scale 1.0
// for a guided-diffusion classifier.
void apply_guided_diffusion_sampling(SamplingFlags& flags, const GuidedDiffusionFlags& strings);

// Whether --model / --classifier are `.pt` state dicts read with flags or a JSON config.
bool model_is_state_dict(const SamplingFlags& flags);
bool classifier_is_state_dict(const SamplingFlags& flags);
Model load_state_dict_model(const SamplingFlags& flags, const GuidedDiffusionFlags& strings,
                            const torch::Device& device);
Model load_state_dict_classifier(const SamplingFlags& flags, const GuidedDiffusionFlags& strings,
                                 const torch::Device& device);

// The model's diffusion settings, where it has them, for --schedule, --timesteps and the
// DDPM variance not given on the command line. Throws InputError when a given --schedule or
// --timesteps contradicts the schedule the model was trained with.
void apply_diffusion_settings(const Model& model, const SamplingFlags& flags, GenerationConfig& config);

// `guidiff upsample`: the super-resolution model, the base samples as low-resolution images
// and their classes (--class, else the .npz's arr_1 for a class-conditional model), and the
// sample count (--num-samples of them, else all). Throws InputError / FileError naming the
// flag or file: not a super-resolution model, base samples of another size or channel count
// than the model's low_res_size, missing classes.
void prepare_upsampling(const Model& model, const SamplingFlags& flags, GenerationConfig& config,
                        SamplingModels& models);

}  // namespace guidiff::cli
