// Preview samples during training: what the EMA model generates now, as a picture.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "guidiff/data/dataset.hpp"
#include "guidiff/distributed/communicator.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"
#include "guidiff/training/trainer.hpp"

namespace guidiff {

// Samples options.preview_samples from the denoiser `ema` (DDIM with 50 steps for discrete
// time, the cfg-continuous sampler with 64 steps for log-SNR time; classes cycled 0, 1, ...
// for a conditional model; noise from options.seed, so previews of successive steps are
// comparable) and writes <samples_dir>/step_<step>.png: a PNG grid for image data, a scatter
// plot for 2-D data. Other data, or a plot that cannot be drawn (no gnuplot), is reported
// through on_message and skipped; training goes on. In a data-parallel run every rank draws
// its share of the samples and rank 0 writes the picture.
void write_preview(Model& ema, const Dataset& data, const TrainingOptions& options,
                   const LogSnrSchedule& log_snr, const std::string& samples_dir, int64_t step,
                   const std::function<void(const std::string&)>& on_message,
                   Communicator& communicator = single_process_communicator());

}  // namespace guidiff
