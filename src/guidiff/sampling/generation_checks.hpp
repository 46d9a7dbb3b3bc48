// Every check generate() makes before it samples: counts and options, which guidance and
// rule each sampler can run, models against the request, labels and the starting noise.
// Internal to sampling/ (generate.hpp is the contract); docs/guidance.md lists the
// combinations these checks allow.
#pragma once
#include <torch/torch.h>

#include "guidiff/sampling/generate.hpp"

namespace guidiff::generation_checks {

// A strength is non-zero for some sample (the per-sample values when defined).
bool any_nonzero(double scale, const torch::Tensor& per_sample);

// Counts, shapes, scalar options and the sampler/guidance combination; no models needed.
void check_config(const GenerationConfig& config);

// The number of classes labels index: the model's, or the classifier's for an unconditional
// model. Checks the models against each other and each guidance has what it needs.
int64_t check_models(const GenerationModels& models, const GenerationConfig& config);

// Labels as int64 [num_samples] in [0, num_classes), or undefined when none are needed.
torch::Tensor check_labels(const torch::Tensor& labels, int64_t num_classes, const GenerationModels& models,
                           const GenerationConfig& config);

// [rows, sample_shape...]: the shape of `rows` samples.
std::vector<int64_t> rows_shape(int64_t rows, const std::vector<int64_t>& sample_shape);

// The samples generate() keeps until the caller writes them, float32 [num_samples,
// sample_shape...] with their int64 labels, fit in the memory available; with
// `trajectory_states` > 0 (the kept trajectory's length) so do that many more copies, twice
// over (each batch's part and the joined tensor). Throws InputError naming --num-samples:
// without it a run too large for the machine samples for hours and fails as it ends.
void check_outputs_fit_in_memory(const GenerationConfig& config, int64_t trajectory_states);

// x_T for every sample as float32 [num_samples, sample_shape...], or undefined.
torch::Tensor check_initial_noise(const torch::Tensor& noise, const GenerationConfig& config);

}  // namespace guidiff::generation_checks
