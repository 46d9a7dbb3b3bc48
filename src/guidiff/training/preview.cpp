// Preview samples during training (see preview.hpp).
#include "guidiff/training/preview.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/sampling/generate.hpp"

namespace guidiff {
namespace {

constexpr int64_t kDiscretePreviewSteps = 50;
constexpr int64_t kContinuousPreviewSteps = 64;

std::string preview_path(const std::string& samples_dir, int64_t step) {
  char name[48];
  std::snprintf(name, sizeof name, "step_%07lld.png", static_cast<long long>(step));
  return (std::filesystem::path(samples_dir) / name).string();
}

}  // namespace

void write_preview(Model& ema, const Dataset& data, const TrainingOptions& options, const LogSnrSchedule& log_snr,
                   const std::string& samples_dir, int64_t step,
                   const std::function<void(const std::string&)>& on_message, Communicator& communicator) {
  const auto notify = [&](const std::string& message) {
    if (on_message) on_message(message);
  };
  const bool images = data.holds_images() && (data.images.size(1) == 1 || data.images.size(1) == 3);
  const bool points = !data.holds_images() && data.images.size(1) == 2;
  if (!images && !points) {
    notify("preview skipped: only images (1 or 3 channels) and 2-D points are drawn");
    return;
  }
  GenerationConfig config;
  if (ema.denoiser->time_kind() == TimeKind::log_snr) {
    config.sampler = SamplerKind::cfg_continuous;
    config.log_snr = log_snr;
    config.steps = kContinuousPreviewSteps;
  } else {
    config.sampler = SamplerKind::ddim;
    config.schedule = options.schedule;
    config.timesteps = options.timesteps;
    config.steps = std::min(kDiscretePreviewSteps, options.timesteps);
  }
  config.clip_x0 = images;
  config.sample_shape = data.images.sizes().slice(1).vec();
  config.num_samples = options.preview_samples;
  // At most 256 per batch, and at least one batch per process (a preview need not match a
  // single process's bit for bit).
  config.batch_size = std::min<int64_t>(
      256, (config.num_samples + communicator.world_size() - 1) / communicator.world_size());
  config.seed = options.seed;
  torch::Tensor labels;
  const int64_t classes = ema.denoiser->num_classes();
  if (classes > 0) labels = torch::arange(config.num_samples, torch::kInt64).remainder(classes);

  torch::NoGradGuard no_grad;
  const GenerationResult result = generate_across(communicator, {ema.denoiser, nullptr, nullptr}, config, labels, {});
  if (!communicator.is_main()) return;
  std::error_code error;
  std::filesystem::create_directories(samples_dir, error);
  if (error) throw FileError("cannot create the preview directory '" + samples_dir + "' (" + error.message() + ")");
  const std::string path = preview_path(samples_dir, step);
  if (images) {
    ImageGridOptions grid;
    grid.nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(config.num_samples))));
    write_png_grid(path, result.samples, grid);
    return;
  }
  try {
    ScatterPlotOptions plot;
    plot.title = "EMA samples at step " + std::to_string(step);
    write_scatter_plot(path, {{std::to_string(config.num_samples) + " samples", result.samples, result.labels}}, plot);
  } catch (const FileError& failure) {
    notify(std::string("preview skipped: ") + failure.what());
  }
}

}  // namespace guidiff
