// The training loop for denoisers and noise-aware classifiers: AdamW with linear warm-up,
// gradient-norm clipping, EMA weights, optional bf16 autocast, periodic logs, preview grids
// and checkpoints, and exact resumption.
//
// Determinism: step k's draws (t or u, noise, label dropout) for the sample in slot j of the
// global batch depend on (seed, k, j) alone (draw_step); the data order is a pure function of
// (seed, LoaderPosition); network dropout draws from the global CPU generator, whose state the
// resume file keeps. So with a fixed thread count on the CPU, a run resumed from step k
// reproduces the uninterrupted run's losses and weights bit for bit.
//
// Data parallel (a distributed Communicator, see distributed/communicator.hpp): every rank
// trains a copy of the model on its share of each global batch of batch_size x world_size
// samples (the same batches, in the same order, as one process with that batch), the
// gradients are averaged over the ranks during backward (GradientReducer), so the copies stay
// identical; the learning rate is used as given. Losses and accuracies are averaged over the
// ranks; rank 0 alone writes checkpoints, the log and previews. A run resumes with any number
// of processes that gives the checkpoint's global batch.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/data/dataset.hpp"
#include "guidiff/distributed/communicator.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/training/losses.hpp"

namespace guidiff {

enum class TrainingTask { diffusion, classifier };
std::string to_string(TrainingTask task);

// The learning rate after warm-up: constant, or cosine decay to 0 at the last step
// (Loshchilov & Hutter 2017, SGDR eq. 5 with one cycle and eta_min = 0).
enum class LrSchedule { constant, cosine };
LrSchedule parse_lr_schedule(const std::string& name);  // "constant" | "cosine"; InputError otherwise
std::string to_string(LrSchedule schedule);

struct TrainingOptions {
  TrainingTask task = TrainingTask::diffusion;
  // Diffusion: the objective (see losses.hpp) and, for discrete time, the training schedule.
  DiffusionObjective objective = DiffusionObjective::eps;
  BetaScheduleKind schedule = BetaScheduleKind::linear;
  int64_t timesteps = 1000;
  double p_uncond = 0.0;     // label dropout probability (conditional denoisers)
  double vlb_weight = 0.001; // lambda of the hybrid loss
  // Classifier: t is drawn from [0, max_t); 0 means T. Accuracy is logged per t bucket.
  int64_t max_t = 0;
  // Classifier: t = floor(max_t u^t_power) for uniform u. 1 is uniform (Dhariwal & Nichol);
  // p > 1 spends more of training on small t, where the density of t goes as t^(1/p - 1).
  double t_power = 1.0;
  int64_t accuracy_buckets = 10;
  // Optimisation.
  int64_t steps = 1000;        // total optimiser steps (a resumed run continues up to it)
  int64_t batch_size = 64;     // per process: the global batch is batch_size x processes
  double lr = 1e-4;
  double weight_decay = 0.0;   // AdamW's decoupled weight decay
  int64_t warmup_steps = 0;    // lr rises linearly over the first warmup_steps steps
  LrSchedule lr_schedule = LrSchedule::constant;  // after warm-up
  double ema_rate = 0.9999;    // ema <- rate ema + (1 - rate) weights after every step
  double grad_clip = 1.0;      // max global gradient L2 norm; 0: no clipping
  bool bf16 = false;           // bfloat16 autocast for the forward pass
  bool random_flip = false;    // mirror images at random (per seed, epoch, sample)
  // A batch whose loss or gradient norm is NaN or infinite: false stops training with the step
  // number (the last checkpoint stays as it was); true skips the batch (no update, a notice)
  // and goes on. Not part of the trajectory: a run stopped by a NaN may resume with it set.
  bool skip_nonfinite = false;
  uint64_t seed = 0;
  // Outputs (steps between them; 0: never, except the final checkpoint).
  std::string out_dir;
  int64_t log_every = 100;
  int64_t sample_every = 0;
  int64_t save_every = 1000;
  int64_t preview_samples = 64;
  bool resume = false;         // continue from out_dir's resume file
  torch::Device device = torch::kCPU;

  // Throws InputError naming the option ("--batch-size", ...) whose value is invalid.
  void validate() const;
  // The learning rate at 0-based step `step`: lr * min(1, (step + 1) / warmup_steps), times,
  // for the cosine schedule, (1 + cos(pi p)) / 2 with p = (step - warmup_steps) /
  // (steps - warmup_steps) the fraction of the post-warm-up steps done (0 before).
  double learning_rate(int64_t step) const;
  nlohmann::json to_json() const;
  // Reads what to_json wrote (device and out_dir excepted). Throws InputError naming the key.
  static TrainingOptions from_json(const nlohmann::json& object);
};

// Called after every step.
struct StepReport {
  int64_t step = 0;         // steps done (1-based)
  int64_t total_steps = 0;
  double loss = 0.0;        // averaged over the processes
  double lr = 0.0;
  double grad_norm = 0.0;   // before clipping
  double images_per_second = 0.0;  // over this run so far, all processes together
};

struct TrainingHooks {
  std::function<void(const StepReport&)> on_step;
  std::function<bool()> should_stop;                   // polled once per step (Ctrl-C); any rank stops all
  std::function<void(const std::string&)> on_message;  // one-line notices (resumed, saved, ...)
};

struct TrainingResult {
  int64_t first_step = 0;      // the step this run started from (> 0 when resumed)
  int64_t last_step = 0;       // steps done when it returned
  std::vector<double> losses;  // this run's loss per step (NaN or inf where a batch was skipped)
  int64_t skipped_steps = 0;   // batches skipped for a non-finite loss or gradient
  bool interrupted = false;    // stopped by should_stop (a checkpoint was saved)
  Model ema;                   // the EMA weights (eval mode)
};

// Trains `model` (built by build_model; a denoiser for TrainingTask::diffusion, a classifier
// otherwise) on `data` and leaves the raw trained weights in it. Writes run_files(out_dir):
// a checkpoint every save_every steps, at the end and when should_stop fires; log.jsonl every
// log_every steps; preview samples of the EMA model every sample_every steps. With
// options.resume the run continues from the resume file, whose options must agree with these
// on everything that shapes the trajectory (steps and output intervals may change).
// Throws InputError for invalid options or data that does not fit the model, FileError for a
// bad or mismatched resume file (naming the key) or a failed write (the previous checkpoint
// stays whole), NumericError naming the step when the loss or gradient norm is not finite
// (unless skip_nonfinite) or a weight is (the last checkpoint on disk is left as it was), and
// DistributedError when a peer process fails. Temporary files that a killed run left in
// out_dir are removed first. Every rank of `communicator` calls it with the same arguments.
TrainingResult train(Model& model, const Dataset& data, const TrainingOptions& options,
                     const TrainingHooks& hooks = {}, Communicator& communicator = single_process_communicator());

}  // namespace guidiff
