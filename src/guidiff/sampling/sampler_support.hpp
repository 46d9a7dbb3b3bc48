// Checks and bookkeeping every sampler shares: input validation, the per-step time and
// step-index tensors, the per-step noise, the model call, and the trajectory / progress
// record. Internal to sampling/ (the public contract is samplers.hpp).
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/sampling/samplers.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"

namespace guidiff::sampler_support {

// Throws ModelError unless the model's time input is `expected` (sampler names the caller).
void check_time_kind(const Denoiser& model, TimeKind expected, const std::string& sampler);

// Throws InputError for an empty or malformed schedule (no steps, missing timestep_map).
void check_schedule(const DiscreteSchedule& schedule, const std::string& sampler);

// Validates a starting tensor and its labels: x floating [N, ...] (named `x_name` in
// messages), finite (NumericError otherwise), labels undefined or int64 [N].
void check_start(const torch::Tensor& x, const torch::Tensor& labels, const std::string& x_name,
                 const std::string& sampler);

// check_start for a batch plus its sample indices (int64 [N]; needed when `needs_noise`).
void check_batch(const SampleBatch& batch, bool needs_noise, const std::string& sampler);

// Sampler step index i for every row: int64 [N] on x's device.
torch::Tensor step_index_for(int64_t step, const torch::Tensor& x);
// The original timestep the model sees at step i (timestep_map[i]): int64 [N] on x's device.
torch::Tensor model_timestep_for(const DiscreteSchedule& schedule, int64_t step,
                                 const torch::Tensor& x);

// Standard normal noise of step `stream` for each row (per-sample streams), as x's dtype/device.
torch::Tensor step_noise(const SampleNoise& noise, const torch::Tensor& sample_indices,
                         int64_t stream, const torch::Tensor& x);

// Calls the model and checks its output: eps defined with x's shape (cast to x's dtype),
// variance_output present when the model learns its variance. Throws ModelError otherwise.
// A renoise_eps (CFG++) is cast likewise where the sampler `allows_renoise`; elsewhere it is
// an InputError naming the sampler.
DenoiserOutput predict_checked(Denoiser& model, const torch::Tensor& x, const torch::Tensor& time,
                               const torch::Tensor& labels, const std::string& sampler,
                               bool allows_renoise = false);

// Records the trajectory (x_T first) and reports progress after every step.
class StepRecorder {
 public:
  // Starting from a batch: a non-finite sample is named by its index in the whole request.
  StepRecorder(const SamplerCommon& options, int64_t total_steps, const SampleBatch& batch);
  // Starting from x alone (inversion): a non-finite sample is named by its row.
  StepRecorder(const SamplerCommon& options, int64_t total_steps, const torch::Tensor& start);
  // After each step: checks x is finite (NumericError naming the step and the first sample
  // that is not: a NaN in a model's output reaches x at the step it appears), appends x when
  // keeping the trajectory, then calls on_step(done, total).
  void step_done(const torch::Tensor& x);
  // Checks the result is finite (NumericError naming the sampler) and packs it.
  SamplingResult finish(const torch::Tensor& samples, const std::string& sampler);

 private:
  const SamplerCommon& options_;
  int64_t total_steps_;
  torch::Tensor sample_indices_;  // int64 [N] or undefined
  int64_t done_ = 0;
  std::vector<torch::Tensor> trajectory_;
};

// Throws NumericError unless every element of x is finite.
void check_finite_result(const torch::Tensor& x, const std::string& sampler);

}  // namespace guidiff::sampler_support
