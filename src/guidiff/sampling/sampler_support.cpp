#include "guidiff/sampling/sampler_support.hpp"

#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff::sampler_support {

void check_time_kind(const Denoiser& model, TimeKind expected, const std::string& sampler) {
  if (model.time_kind() != expected) {
    throw ModelError(sampler + " sampler needs a model taking " + time_kind_name(expected) +
                     ", but the model takes " + time_kind_name(model.time_kind()));
  }
}

void check_schedule(const DiscreteSchedule& schedule, const std::string& sampler) {
  if (!schedule.betas.defined() || schedule.betas.dim() != 1 || schedule.num_steps() < 1) {
    throw InputError(sampler + " sampler: the schedule has no steps");
  }
  if (!schedule.timestep_map.defined() || schedule.timestep_map.numel() != schedule.num_steps()) {
    throw InputError(sampler + " sampler: the schedule's timestep_map does not match its " +
                     std::to_string(schedule.num_steps()) + " steps");
  }
}

void check_start(const torch::Tensor& x, const torch::Tensor& labels, const std::string& x_name,
                 const std::string& sampler) {
  if (!x.defined()) throw InputError(sampler + " sampler: " + x_name + " is missing");
  if (x.dim() < 2 || x.size(0) < 1) {
    throw InputError(sampler + " sampler: " + x_name + " must be [N, ...] with N >= 1, got " +
                     shape_string(x.sizes()));
  }
  if (!x.is_floating_point()) {
    throw InputError(sampler + " sampler: " + x_name + " must be a floating-point tensor");
  }
  if (!torch::isfinite(x).all().item<bool>()) {
    throw NumericError(sampler + " sampler: " + x_name + " contains NaN or infinity");
  }
  if (labels.defined()) {
    if (labels.scalar_type() != torch::kLong || labels.dim() != 1 || labels.size(0) != x.size(0)) {
      throw InputError(sampler + " sampler: labels must be int64 [" + std::to_string(x.size(0)) +
                       "], got " + shape_string(labels.sizes()) + " " +
                       std::string(c10::toString(labels.scalar_type())));
    }
  }
}

void check_batch(const SampleBatch& batch, bool needs_noise, const std::string& sampler) {
  check_start(batch.x_T, batch.labels, "x_T", sampler);
  if (!needs_noise && !batch.sample_indices.defined()) return;
  const auto& indices = batch.sample_indices;
  if (!indices.defined() || indices.scalar_type() != torch::kLong || indices.dim() != 1 ||
      indices.size(0) != batch.x_T.size(0)) {
    throw InputError(sampler + " sampler: sample_indices must be int64 [" +
                     std::to_string(batch.x_T.size(0)) + "] (one noise stream per sample)");
  }
}

torch::Tensor step_index_for(int64_t step, const torch::Tensor& x) {
  return torch::full({x.size(0)}, step, torch::dtype(torch::kLong).device(x.device()));
}

torch::Tensor model_timestep_for(const DiscreteSchedule& schedule, int64_t step,
                                 const torch::Tensor& x) {
  return step_index_for(schedule.timestep_map[step].item<int64_t>(), x);
}

torch::Tensor step_noise(const SampleNoise& noise, const torch::Tensor& sample_indices,
                         int64_t stream, const torch::Tensor& x) {
  return noise.normal(sample_indices.cpu(), stream, x.sizes().slice(1)).to(x.options());
}

DenoiserOutput predict_checked(Denoiser& model, const torch::Tensor& x, const torch::Tensor& time,
                               const torch::Tensor& labels, const std::string& sampler, bool allows_renoise) {
  DenoiserOutput out = model.predict(x, time, labels);
  if (!out.eps.defined() || out.eps.sizes() != x.sizes()) {
    throw ModelError("the model's eps output has shape " +
                     (out.eps.defined() ? shape_string(out.eps.sizes()) : std::string("(none)")) +
                     ", expected " + shape_string(x.sizes()));
  }
  out.eps = out.eps.to(x.options());
  if (model.learns_variance()) {
    if (!out.variance_output.defined() || out.variance_output.sizes() != x.sizes()) {
      throw ModelError("the model learns its variance but gave no variance output of shape " +
                       shape_string(x.sizes()));
    }
    out.variance_output = out.variance_output.to(x.options());
  }
  if (out.renoise_eps.defined()) {
    if (!allows_renoise) {
      throw InputError(sampler + " sampler cannot run CFG++ (--cfg-pp): only ddim and euler re-noise their x0 estimate");
    }
    if (out.renoise_eps.sizes() != x.sizes()) {
      throw ModelError("the guided model's re-noising eps has shape " + shape_string(out.renoise_eps.sizes()) +
                       ", expected " + shape_string(x.sizes()));
    }
    out.renoise_eps = out.renoise_eps.to(x.options());
  }
  return out;
}

StepRecorder::StepRecorder(const SamplerCommon& options, int64_t total_steps, const SampleBatch& batch)
    : StepRecorder(options, total_steps, batch.x_T) {
  sample_indices_ = batch.sample_indices;
}

StepRecorder::StepRecorder(const SamplerCommon& options, int64_t total_steps,
                           const torch::Tensor& start)
    : options_(options), total_steps_(total_steps) {
  if (options_.keep_trajectory) trajectory_.push_back(start);
}

void StepRecorder::step_done(const torch::Tensor& x) {
  ++done_;
  const torch::Tensor bad_rows = torch::isfinite(x).reshape({x.size(0), -1}).all(1).logical_not();
  if (bad_rows.any().item<bool>()) {
    const int64_t row = bad_rows.nonzero()[0][0].item<int64_t>();
    const std::string sample = sample_indices_.defined()
                                   ? "sample " + std::to_string(sample_indices_[row].item<int64_t>())
                                   : "row " + std::to_string(row) + " of the batch";
    const bool nan = torch::isnan(x[row]).any().item<bool>();
    throw NumericError(std::string("sampling produced ") + (nan ? "NaN" : "infinity") + " at step " +
                       std::to_string(done_) + " of " + std::to_string(total_steps_) + " for " + sample +
                       " (" + std::to_string(bad_rows.sum().item<int64_t>()) + " of " + std::to_string(x.size(0)) +
                       " in its batch): the model's output at that step, or the guidance added to it, is not finite");
  }
  if (options_.keep_trajectory) trajectory_.push_back(x);
  if (options_.on_step) options_.on_step(done_, total_steps_);
}

SamplingResult StepRecorder::finish(const torch::Tensor& samples, const std::string& sampler) {
  check_finite_result(samples, sampler);
  return SamplingResult{samples, std::move(trajectory_)};
}

void check_finite_result(const torch::Tensor& x, const std::string& sampler) {
  if (!torch::isfinite(x).all().item<bool>()) {
    throw NumericError(sampler + " sampler produced NaN or infinity (guidance scale too large, "
                       "or a model output that is not finite)");
  }
}

}  // namespace guidiff::sampler_support
