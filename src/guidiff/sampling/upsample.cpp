// Super-resolution sampling batch by batch (see upsample.hpp).
#include "guidiff/sampling/upsample.hpp"

#include <algorithm>

#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/generation_checks.hpp"

namespace guidiff {
namespace {

void check_low_res(const torch::Tensor& low_res, const GenerationConfig& config) {
  const bool shaped = low_res.defined() && low_res.dim() == 4 && low_res.is_floating_point() &&
                      config.sample_shape.size() == 3 && low_res.size(1) == config.sample_shape[0];
  if (!shaped) {
    throw InputError("the low-resolution images must be floating [N, " +
                     (config.sample_shape.empty() ? std::string("C") : std::to_string(config.sample_shape[0])) +
                     ", h, w], got " + (low_res.defined() ? c10::str(low_res.sizes()) : std::string("nothing")));
  }
  if (low_res.size(0) != config.num_samples) {
    throw InputError("there are " + std::to_string(low_res.size(0)) + " low-resolution images for " +
                     std::to_string(config.num_samples) + " samples");
  }
  if (!torch::isfinite(low_res).all().item<bool>() || low_res.abs().max().item<double>() > 1.0) {
    throw InputError("the low-resolution images must be finite and in [-1, 1]");
  }
}

}  // namespace

GenerationResult generate_upsampled(const LowResolutionConditioning& model_for, std::shared_ptr<Classifier> classifier,
                                    const GenerationConfig& config, const torch::Tensor& low_res,
                                    const torch::Tensor& labels, const StepCallback& on_progress) {
  if (config.batch_size < 1) throw InputError("--batch-size must be >= 1, got " + std::to_string(config.batch_size));
  check_low_res(low_res, config);
  if (labels.defined() && (labels.dim() != 1 || labels.size(0) != config.num_samples)) {
    throw InputError("the labels must be [" + std::to_string(config.num_samples) + "], got " + c10::str(labels.sizes()));
  }
  // The samples are checked now; with their trajectories once the first part shows its length.
  generation_checks::check_outputs_fit_in_memory(config, 0);
  std::vector<torch::Tensor> sample_labels;
  std::vector<std::vector<torch::Tensor>> trajectories;
  GenerationResult out;
  out.samples = torch::empty(generation_checks::rows_shape(config.num_samples, config.sample_shape),
                             torch::kFloat);  // filled part by part
  for (int64_t begin = 0; begin < config.num_samples; begin += config.batch_size) {
    const int64_t end = std::min(begin + config.batch_size, config.num_samples);
    GenerationConfig part = config;
    part.num_samples = end - begin;
    part.first_sample_index = config.first_sample_index + begin;
    const torch::Tensor part_labels = labels.defined() ? labels.slice(0, begin, end) : torch::Tensor();
    StepCallback progress;
    if (on_progress) {
      // Each part is one batch; its steps count towards the whole run's.
      const int64_t batches = (config.num_samples + config.batch_size - 1) / config.batch_size;
      const int64_t index = begin / config.batch_size;
      progress = [&on_progress, index, batches](int64_t done, int64_t total) {
        on_progress(index * total + done, batches * total);
      };
    }
    GenerationResult result =
        generate(model_for(low_res.slice(0, begin, end)), classifier, part, part_labels, {}, progress);
    if (begin == 0 && config.keep_trajectory) {
      generation_checks::check_outputs_fit_in_memory(
          config, static_cast<int64_t>(result.trajectory.size()));
    }
    out.samples.slice(0, begin, end).copy_(result.samples);
    if (result.labels.defined()) sample_labels.push_back(result.labels);
    trajectories.push_back(std::move(result.trajectory));
    out.steps = result.steps;  // the same for every part
    if (begin == 0) out.model_evaluations = result.model_evaluations;
  }
  out.rows = {0, config.num_samples};
  if (!sample_labels.empty()) out.labels = torch::cat(sample_labels, 0);
  if (config.keep_trajectory && !trajectories.empty()) {
    for (size_t step = 0; step < trajectories.front().size(); ++step) {
      std::vector<torch::Tensor> rows;
      for (const auto& part : trajectories) rows.push_back(part[step]);
      out.trajectory.push_back(torch::cat(rows, 0));
    }
  }
  return out;
}

}  // namespace guidiff
