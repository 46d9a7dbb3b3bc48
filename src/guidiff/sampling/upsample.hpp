// Super-resolution sampling, the second stage of Dhariwal & Nichol 2021's upsampling stack
// (guided-diffusion's super_res_sample.py): every sample is drawn from a super-resolution
// model conditioned on its own low-resolution image (and class). Sample k's noise is
// f(seed, k) as in generate(), so results do not depend on the batch size.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/sampling/generate.hpp"

namespace guidiff {

// The super-resolution model conditioned on a batch of low-resolution images [n, C, h, w].
using LowResolutionConditioning = std::function<std::shared_ptr<Denoiser>(const torch::Tensor& low_res)>;

// Draws config.num_samples samples of config.sample_shape, sample i conditioned on
// low_res[i] (float [num_samples, C, h, w] in [-1, 1], C = sample_shape[0]) and labels[i]
// (int64 [num_samples] or undefined), batch by batch through generate(). Throws InputError
// for a low_res tensor of the wrong shape or count, or with values outside [-1, 1] or not
// finite, and whatever generate() throws.
GenerationResult generate_upsampled(const LowResolutionConditioning& model_for, std::shared_ptr<Classifier> classifier,
                                    const GenerationConfig& config, const torch::Tensor& low_res,
                                    const torch::Tensor& labels, const StepCallback& on_progress = {});

}  // namespace guidiff
