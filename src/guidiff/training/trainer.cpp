// The training loop (see trainer.hpp).
#include "guidiff/training/trainer.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "guidiff/core/autocast.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/global_generators.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/data/batch_loader.hpp"
#include "guidiff/data/random_order.hpp"
#include "guidiff/distributed/gradient_reducer.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/models/model_sample_shape.hpp"
#include "guidiff/training/checkpoint.hpp"
#include "guidiff/training/preview.hpp"

namespace guidiff {
namespace {

// The data_random_bits domain of the dropout generator seeds of ranks > 0 (losses.cpp uses
// 16-18 for the step draws, the data layer 1 and 2).
constexpr uint64_t kDropoutSeedDomain = 19;
// With --skip-nonfinite, this many non-finite batches in a row stop the run as diverged.
constexpr int64_t kMaxSkipsInARow = 10;

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Sums over the steps since the last log line (kept in the resume file, so a resumed run
// logs the same averages).
struct IntervalStats {
  double loss = 0.0, mse = 0.0, vlb = 0.0, grad_norm = 0.0;
  int64_t steps = 0;
  double reduce_wait = 0.0;  // seconds backward did not hide of the gradient all-reduces (not resumed)
  int64_t skipped = 0;       // batches skipped (skip_nonfinite), not in the sums above
  BucketAccuracy accuracy;

  explicit IntervalStats(const BucketAccuracy& empty) : accuracy(empty) {}
  void clear() {
    loss = mse = vlb = grad_norm = reduce_wait = 0.0;
    steps = skipped = 0;
    accuracy.clear();
  }
  nlohmann::json to_json() const {
    return {{"loss", loss}, {"mse", mse}, {"vlb", vlb}, {"grad_norm", grad_norm}, {"steps", steps},
            {"skipped", skipped}, {"accuracy", accuracy.counts_json()}};
  }
  void restore(const nlohmann::json& saved, const std::string& file) {
    try {
      loss = saved.at("loss").get<double>();
      mse = saved.at("mse").get<double>();
      vlb = saved.at("vlb").get<double>();
      grad_norm = saved.at("grad_norm").get<double>();
      steps = saved.at("steps").get<int64_t>();
      skipped = saved.value("skipped", int64_t{0});  // absent in files of earlier versions
      accuracy.restore_counts(saved.at("accuracy"));
    } catch (const std::exception& error) {
      throw FileError("resume file '" + file + "': metadata key 'interval' is malformed (" + error.what() + ")");
    }
  }
};

// Options whose change would alter the trajectory of a resumed run. The batch size is
// checked apart: what must stay is the global batch, batch_size x processes.
const char* const kTrajectoryKeys[] = {"task",         "objective",    "schedule",  "timesteps", "p_uncond",
                                       "vlb_weight",   "max_t",        "accuracy_buckets",
                                       "lr",           "weight_decay", "warmup_steps", "ema_rate", "grad_clip",
                                       "bf16",         "random_flip",  "seed"};

std::string processes_text(int64_t count) { return std::to_string(count) + (count == 1 ? " process" : " processes"); }

void check_resumable(const ResumeState& saved, const TrainingOptions& options, int64_t world_size,
                     const std::string& file) {
  const nlohmann::json current = options.to_json();
  // Options added after resume files existed: absent means the default they had then.
  const nlohmann::json defaults = {{"lr_schedule", to_string(LrSchedule::constant)}, {"t_power", 1.0}};
  std::vector<std::string> keys(std::begin(kTrajectoryKeys), std::end(kTrajectoryKeys));
  keys.push_back("lr_schedule");
  keys.push_back("t_power");
  // Under a decaying schedule the total number of steps shapes every learning rate.
  if (options.lr_schedule != LrSchedule::constant) keys.push_back("steps");
  for (const std::string& key : keys) {
    const nlohmann::json was =
        saved.options.contains(key) ? saved.options.at(key) : defaults.value(key, nlohmann::json());
    if (was.is_null() || was != current.at(key)) {
      throw FileError("resume file '" + file + "': option '" + key + "' is " +
                      (was.is_null() ? std::string("absent") : was.dump()) + " in the checkpoint but " +
                      current.at(key).dump() + " now; resume with the same value");
    }
  }
  const int64_t saved_batch = saved.options.value("batch_size", int64_t{0});
  const int64_t saved_global = saved_batch * saved.world_size;
  if (saved_global != options.batch_size * world_size) {
    std::string hint;
    if (saved_global % world_size == 0) hint = "; resume with --batch-size " + std::to_string(saved_global / world_size);
    throw FileError("resume file '" + file + "': the global batch is " + std::to_string(saved_global) + " (" +
                    std::to_string(saved_batch) + " x " + processes_text(saved.world_size) +
                    ") in the checkpoint but " + std::to_string(options.batch_size * world_size) + " (" +
                    std::to_string(options.batch_size) + " x " + processes_text(world_size) + ") now" + hint);
  }
}

void check_data_fits(const Model& model, const Dataset& data, TrainingTask task) {
  data.validate();
  const auto shape = model_sample_shape(model);
  const auto data_shape = data.images.sizes().slice(1).vec();
  if (data_shape != shape) {
    throw InputError("data '" + data.name + "' has samples of shape " + c10::str(data_shape) + " but the " +
                     model_kind_name(model.kind) + " works on " + c10::str(shape));
  }
  const int64_t classes = task == TrainingTask::diffusion ? model.denoiser->num_classes() : model.classifier->num_classes();
  if (classes > 0 && classes != data.num_classes) {
    throw InputError("the model has num_classes " + std::to_string(classes) + " but data '" + data.name + "' has " +
                     std::to_string(data.num_classes) + " classes");
  }
}

LogSnrSchedule log_snr_schedule_of(const Model& model) {
  LogSnrSchedule schedule;
  schedule.lambda_min = model.config.value("lambda_min", schedule.lambda_min);
  schedule.lambda_max = model.config.value("lambda_max", schedule.lambda_max);
  return schedule;
}

void update_ema(const torch::nn::Module& model, torch::nn::Module& ema, double rate) {
  torch::NoGradGuard no_grad;
  const auto source = model.parameters();
  auto target = ema.parameters();
  for (size_t i = 0; i < target.size(); ++i) target[i].mul_(rate).add_(source[i], 1.0 - rate);
  const auto source_buffers = model.buffers();
  auto target_buffers = ema.buffers();
  for (size_t i = 0; i < target_buffers.size(); ++i) target_buffers[i].copy_(source_buffers[i]);
}

// Log lines of steps up to `last_step` (earlier lines of a resumed run), rewritten atomically.
void keep_log_until(const std::string& path, int64_t last_step) {
  if (!std::filesystem::exists(path)) return;
  std::istringstream lines(read_file_bytes(path));
  std::string kept, line;
  while (std::getline(lines, line)) {
    try {
      const auto record = nlohmann::json::parse(line);
      if (record.value("step", std::numeric_limits<int64_t>::max()) <= last_step) kept += line + "\n";
    } catch (const nlohmann::json::exception&) {
      // A line cut short by a crash: dropped.
    }
  }
  write_file_atomically(path, kept);
}

class TrainingRun {
 public:
  TrainingRun(Model& model, const Dataset& data, const TrainingOptions& options, const TrainingHooks& hooks,
              Communicator& communicator)
      : model_(model),
        data_(data),
        options_(options),
        hooks_(hooks),
        communicator_(communicator),
        files_(run_files(options.out_dir)),
        max_t_(options.max_t > 0 ? options.max_t : options.timesteps),
        schedule_(make_schedule(options.schedule, options.timesteps)),
        interval_(BucketAccuracy(max_t_, options.accuracy_buckets)) {}

  TrainingResult run();

 private:
  void prepare();
  void start_fresh();
  void resume();
  struct StepResult {
    double loss;       // averaged over the processes
    double grad_norm;  // before clipping
    bool stop;         // some process was asked to stop
    bool skipped = false;  // a non-finite batch skipped (skip_nonfinite)
  };
  StepResult non_finite(int64_t step, const std::string& what, double loss, bool stop);
  StepResult train_step(const Batch& batch, int64_t step);
  torch::Tensor loss_of(const torch::Tensor& x0, const torch::Tensor& labels, const StepDraws& draws,
                        BucketAccuracy& accuracy);
  // The step's loss parts, accuracy counts and stop requests, summed over the processes.
  struct StepTotals {
    double loss, mse, vlb;  // averaged over the processes
    BucketAccuracy accuracy;
    bool stop;
  };
  StepTotals reduce_step(double loss, const BucketAccuracy& accuracy, bool stop);
  void seed_dropout(uint64_t step);
  void save(int64_t steps_done);
  void write_log_line(int64_t steps_done, double lr);
  int64_t global_batch() const { return options_.batch_size * communicator_.world_size(); }
  void notify(const std::string& message) const {
    if (hooks_.on_message) hooks_.on_message(message);
  }

  Model& model_;
  const Dataset& data_;
  const TrainingOptions options_;
  const TrainingHooks& hooks_;
  Communicator& communicator_;
  const RunFiles files_;
  const int64_t max_t_;
  const DiscreteSchedule schedule_;
  Model ema_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  std::vector<torch::Tensor> parameters_;
  std::unique_ptr<GradientReducer> reducer_;
  IntervalStats interval_;
  ResumeState state_;
  int64_t last_saved_ = -1;
  int64_t skipped_steps_ = 0;
  int64_t skips_in_a_row_ = 0;
  Clock::time_point interval_start_ = Clock::now();
  int64_t interval_images_ = 0;
  // The current step's parts of the loss, for the log.
  double step_mse_ = 0.0, step_vlb_ = 0.0;
};

void TrainingRun::prepare() {
  options_.validate();
  if (options_.task == TrainingTask::diffusion && !model_.denoiser) {
    throw InputError(std::string("--config: diffusion training needs a denoiser (kind unet or mlp_denoiser), got ") +
                     model_kind_name(model_.kind));
  }
  if (options_.task == TrainingTask::classifier && !model_.classifier) {
    throw InputError(std::string("--config: classifier training needs a classifier (kind encoder_unet, mlp_classifier or cnn_classifier), got ") +
                     model_kind_name(model_.kind));
  }
  check_data_fits(model_, data_, options_.task);
  if (options_.random_flip && !data_.holds_images())
    throw InputError("--flip applies to image data");
  if (communicator_.distributed() && global_batch() > data_.size()) {
    throw InputError("--batch-size " + std::to_string(options_.batch_size) + " x " +
                     processes_text(communicator_.world_size()) + " = a global batch of " +
                     std::to_string(global_batch()) + ", more than the " + std::to_string(data_.size()) +
                     " samples of data '" + data_.name + "'");
  }
  std::error_code error;
  std::filesystem::create_directories(options_.out_dir, error);
  if (error || !std::filesystem::is_directory(options_.out_dir)) {
    throw FileError("--out-dir '" + options_.out_dir + "': cannot create the directory (" + error.message() + ")");
  }
  const AbandonedTemporaries removed = remove_abandoned_temporaries(options_.out_dir, /*recursive=*/true);
  if (removed.files > 0) {
    notify("removed " + std::to_string(removed.files) + " temporary file" + (removed.files == 1 ? "" : "s") + " (" +
           std::to_string(removed.bytes) + " bytes) that an interrupted write left in '" + options_.out_dir + "'");
  }
  if (options_.device.is_cpu()) {
    // The EMA copy, the gradients and AdamW's two moments: four copies of the weights more,
    // refused here rather than killed by the kernel at the first step.
    check_fits_in_memory(4 * 4 * count_parameters(*model_.module),
                         "training this " + std::string(model_kind_name(model_.kind)) +
                             ": its EMA copy, gradients and AdamW's two moments (4x the weights)",
                         "; check the config's sizes");
  }
  model_.module->to(options_.device);
  model_.module->train();
  ema_ = build_model(model_.config);
  ema_.class_names = model_.class_names;
  ema_.module->to(options_.device);
  ema_.module->eval();
  for (auto& parameter : ema_.module->parameters()) parameter.set_requires_grad(false);
  parameters_ = model_.module->parameters();
  optimizer_ = std::make_unique<torch::optim::AdamW>(
      parameters_, torch::optim::AdamWOptions(options_.lr).weight_decay(options_.weight_decay));
  reducer_ = std::make_unique<GradientReducer>(communicator_, parameters_);
  state_.options = options_.to_json();
  state_.model_config = model_.config;
  state_.dataset = {{"name", data_.name}, {"size", data_.size()}};
  state_.world_size = communicator_.world_size();
}

// Network dropout draws from the global generator of the device (the CPU's, or the GPU's): at the
// start rank 0 seeds it with the seed itself (as a single process does), every other rank with bits
// of its own; so does a rank that a resumed run has and its checkpoint had not (keyed by the step
// resumed from).
void TrainingRun::seed_dropout(uint64_t step) {
  const int64_t rank = communicator_.rank();
  seed_global_generators(
      rank == 0 && step == 0
          ? options_.seed
          : data_random_bits(options_.seed, kDropoutSeedDomain, static_cast<uint64_t>(rank), step),
      options_.device);
}

void TrainingRun::start_fresh() {
  if (communicator_.distributed()) {
    // As DistributedDataParallel does: every copy starts from rank 0's weights.
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> state;
    for (const auto& [name, tensor] : model_state(*model_.module)) state.push_back(tensor);
    communicator_.broadcast_from_main(state, "sharing the initial weights");
  }
  update_ema(*model_.module, *ema_.module, 0.0);  // the EMA starts as the initial weights
  if (communicator_.is_main()) write_file_atomically(files_.log, "");
  seed_dropout(0);
}

void TrainingRun::resume() {
  const ResumeState saved = load_resume_file(files_.resume, model_, ema_, *optimizer_);
  check_resumable(saved, options_, communicator_.world_size(), files_.resume);
  if (saved.dataset != state_.dataset) {
    throw FileError("resume file '" + files_.resume + "': key 'dataset' is " + saved.dataset.dump() +
                    " but this run's data is " + state_.dataset.dump());
  }
  interval_.restore(saved.interval, files_.resume);
  const int64_t rank = communicator_.rank();
  // libtorch checks the mt19937 state it is given; a corrupt one is the file's fault.
  const auto restore_rng = [&](const torch::Tensor& state) {
    try {
      set_cpu_rng_state(state);
    } catch (const c10::Error&) {
      throw FileError("resume file '" + files_.resume + "': the saved random-number state is not a valid generator state");
    }
  };
  if (rank == 0) {
    restore_rng(saved.cpu_rng_state);
  } else if (rank < saved.world_size) {
    restore_rng(saved.other_rank_rng_states.at(static_cast<size_t>(rank - 1)));
  } else {
    seed_dropout(static_cast<uint64_t>(saved.step));  // a rank the checkpoint did not have
  }
  state_.step = saved.step;
  state_.next_position = saved.next_position;
  last_saved_ = saved.step;
  if (communicator_.is_main()) keep_log_until(files_.log, saved.step);
  std::string message = "resumed from step " + std::to_string(saved.step) + " (epoch " +
                        std::to_string(saved.next_position.epoch) + ", sample " +
                        std::to_string(saved.next_position.offset) + ")";
  if (saved.world_size != communicator_.world_size()) {
    message += " with " + processes_text(communicator_.world_size()) + "; the checkpoint was written by " +
               processes_text(saved.world_size);
  }
  notify(message);
}

torch::Tensor TrainingRun::loss_of(const torch::Tensor& x0, const torch::Tensor& labels, const StepDraws& draws,
                                   BucketAccuracy& accuracy) {
  if (options_.task == TrainingTask::classifier) {
    const ClassifierLoss result = classifier_loss(*model_.classifier, schedule_, x0, labels, max_t_, options_.t_power, draws);
    accuracy.add(result.timesteps, result.correct);
    return result.loss;
  }
  DiffusionLoss result;
  if (options_.objective == DiffusionObjective::cfg_continuous) {
    result = continuous_diffusion_loss(*model_.denoiser, log_snr_schedule_of(model_), x0, labels, options_.p_uncond,
                                       draws);
  } else {
    result = discrete_diffusion_loss(*model_.denoiser, schedule_, options_.objective, x0, labels, options_.p_uncond,
                                     options_.vlb_weight, draws);
  }
  step_mse_ = result.mse.item<double>();
  step_vlb_ = result.vlb.defined() ? result.vlb.item<double>() : 0.0;
  return result.loss;
}

TrainingRun::StepTotals TrainingRun::reduce_step(double loss, const BucketAccuracy& accuracy, bool stop) {
  StepTotals totals{loss, step_mse_, step_vlb_, accuracy, stop};
  if (!communicator_.distributed()) return totals;
  // One all-reduce of [loss, mse, vlb, stop, correct per bucket..., total per bucket...].
  const int64_t buckets = accuracy.buckets();
  std::vector<double> packed = {loss, step_mse_, step_vlb_, stop ? 1.0 : 0.0};
  for (int64_t b = 0; b < buckets; ++b) packed.push_back(static_cast<double>(accuracy.correct(b)));
  for (int64_t b = 0; b < buckets; ++b) packed.push_back(static_cast<double>(accuracy.total(b)));
  std::vector<torch::Tensor> sums{torch::tensor(packed, torch::kFloat64)};
  communicator_.all_reduce_sum(sums, "the loss all-reduce");
  const auto* sum = sums[0].data_ptr<double>();
  const double world = static_cast<double>(communicator_.world_size());
  totals.loss = sum[0] / world;
  totals.mse = sum[1] / world;
  totals.vlb = sum[2] / world;
  totals.stop = sum[3] > 0.0;
  std::vector<int64_t> correct, total;
  for (int64_t b = 0; b < buckets; ++b) correct.push_back(std::llround(sum[4 + b]));
  for (int64_t b = 0; b < buckets; ++b) total.push_back(std::llround(sum[4 + buckets + b]));
  totals.accuracy.restore_counts({{"correct", correct}, {"total", total}});
  return totals;
}

TrainingRun::StepResult TrainingRun::train_step(const Batch& batch, int64_t step) {
  const double lr = options_.learning_rate(step);
  for (auto& group : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  const StepDraws draws = draw_step(options_.seed, step, batch.slots, batch.images.sizes().slice(1));
  BucketAccuracy accuracy(max_t_, options_.accuracy_buckets);
  reducer_->prepare();
  torch::Tensor loss;
  {
    AutocastScope autocast(options_.bf16, options_.device);
    loss = loss_of(batch.images.to(options_.device), batch.labels.to(options_.device), draws, accuracy);
  }
  loss.backward();
  reducer_->finish();  // every rank's gradient is now the mean over the ranks
  // Every rank sees the same averaged loss, so all of them stop or skip together.
  const StepTotals totals = reduce_step(loss.item<double>(), accuracy, hooks_.should_stop && hooks_.should_stop());
  if (!std::isfinite(totals.loss)) {
    return non_finite(step,
                      "training loss is " + std::string(std::isnan(totals.loss) ? "nan" : "inf") + " at step " +
                          std::to_string(step + 1) + " (lr " + number_string(lr) + ")",
                      totals.loss, totals.stop);
  }
  const double max_norm = options_.grad_clip > 0.0 ? options_.grad_clip : std::numeric_limits<double>::infinity();
  const double grad_norm = torch::nn::utils::clip_grad_norm_(parameters_, max_norm);
  if (!std::isfinite(grad_norm)) {
    return non_finite(step, "gradient norm is not finite at step " + std::to_string(step + 1), totals.loss, totals.stop);
  }
  optimizer_->step();
  skips_in_a_row_ = 0;
  // Gradients are dropped, not zeroed, so a parameter without one is skipped by AdamW alike in
  // an uninterrupted and a resumed run.
  for (auto& parameter : parameters_) parameter.mutable_grad().reset();
  update_ema(*model_.module, *ema_.module, options_.ema_rate);

  interval_.loss += totals.loss;
  interval_.mse += totals.mse;
  interval_.vlb += totals.vlb;
  interval_.grad_norm += grad_norm;
  interval_.steps += 1;
  interval_.accuracy.add(totals.accuracy);
  interval_.reduce_wait += reducer_->last_wait_seconds();
  interval_images_ += global_batch();
  return {totals.loss, grad_norm, totals.stop};
}

TrainingRun::StepResult TrainingRun::non_finite(int64_t step, const std::string& what, double loss, bool stop) {
  for (auto& parameter : parameters_) parameter.mutable_grad().reset();
  const std::string kept = last_saved_ >= 0 ? "the checkpoint of step " + std::to_string(last_saved_) + " in '" +
                                                  options_.out_dir + "' is kept"
                                            : "no checkpoint had been written yet";
  if (!options_.skip_nonfinite) throw NumericError(what + "; stopped, " + kept + " (--skip-nonfinite skips such batches)");
  // A poisoned sample spoils one batch an epoch; batch after batch means the weights (or the
  // learning rate) diverged, and skipping on would only spend the run's time.
  if (++skips_in_a_row_ >= kMaxSkipsInARow) {
    throw NumericError(what + ", the " + std::to_string(kMaxSkipsInARow) +
                       "th batch in a row: the run has diverged; stopped, " + kept);
  }
  interval_.skipped += 1;
  skipped_steps_ += 1;
  notify(what + ": batch skipped (--skip-nonfinite), the weights are unchanged");
  return {loss, std::numeric_limits<double>::quiet_NaN(), stop, /*skipped=*/true};
}

void TrainingRun::save(int64_t steps_done) {
  state_.step = steps_done;
  state_.interval = interval_.to_json();
  state_.cpu_rng_state = cpu_rng_state();
  state_.other_rank_rng_states.clear();
  if (communicator_.distributed()) {
    const torch::Tensor states =
        communicator_.all_gather_rows(state_.cpu_rng_state.unsqueeze(0), "gathering the ranks' generator states");
    for (int64_t r = 1; r < states.size(0); ++r) state_.other_rank_rng_states.push_back(states[r].clone());
  }
  if (communicator_.is_main()) save_checkpoint(files_, model_, ema_, *optimizer_, state_);
  last_saved_ = steps_done;
}

void TrainingRun::write_log_line(int64_t steps_done, double lr) {
  const double n = static_cast<double>(std::max<int64_t>(interval_.steps, 1));
  nlohmann::json record = {{"step", steps_done},
                           {"loss", interval_.loss / n},
                           {"lr", lr},
                           {"grad_norm", interval_.grad_norm / n},
                           {"images_per_sec", interval_images_ / std::max(seconds_since(interval_start_), 1e-9)}};
  if (interval_.skipped > 0) record["skipped"] = interval_.skipped;
  if (options_.task == TrainingTask::classifier) {
    record["accuracy"] = interval_.accuracy.overall();
    record["accuracy_by_t"] = interval_.accuracy.to_json();
  } else if (options_.objective == DiffusionObjective::hybrid) {
    record["mse"] = interval_.mse / n;
    record["vlb"] = interval_.vlb / n;
  }
  if (communicator_.distributed()) {
    record["processes"] = communicator_.world_size();
    record["allreduce_wait_ms"] = 1000.0 * interval_.reduce_wait / n;  // rank 0's, per step
  }
  if (communicator_.is_main()) {
    std::ofstream log(files_.log, std::ios::app);
    log << record.dump() << "\n";
    log.flush();  // a full disk shows here, not in the destructor where it would go unnoticed
    if (!log) throw FileError("cannot append to the training log '" + files_.log + "' (disk full?)");
  }
  interval_.clear();
  interval_start_ = Clock::now();
  interval_images_ = 0;
}

TrainingResult TrainingRun::run() {
  check_run_directory(options_.out_dir, options_.resume);
  prepare();
  if (options_.resume) {
    resume();
  } else {
    start_fresh();
  }
  TrainingResult result;
  result.first_step = state_.step;
  result.last_step = state_.step;
  if (state_.step >= options_.steps) {
    notify("nothing to do: the checkpoint is at step " + std::to_string(state_.step) + " and --steps is " +
           std::to_string(options_.steps));
    result.ema = ema_;
    return result;
  }
  BatchLoaderOptions loader_options;
  loader_options.batch_size = global_batch();
  loader_options.shard_index = communicator_.rank();
  loader_options.shard_count = communicator_.world_size();
  loader_options.seed = options_.seed;
  loader_options.random_flip = options_.random_flip;
  loader_options.start = state_.next_position;
  BatchLoader loader(data_, loader_options);

  const auto run_start = Clock::now();
  int64_t images = 0;
  // A stop request is acted on by every rank at the same step: it travels with the step's
  // loss all-reduce (and, before the first step, in a collective of its own).
  bool stop = communicator_.any(hooks_.should_stop && hooks_.should_stop(), "the stop check");
  for (int64_t step = state_.step; step < options_.steps; ++step) {
    if (stop) {
      if (last_saved_ != step) save(step);
      notify("interrupted: checkpoint saved at step " + std::to_string(step) + " in '" + options_.out_dir +
             "'; continue with --resume");
      result.interrupted = true;
      break;
    }
    const Batch batch = loader.next();
    const StepResult outcome = train_step(batch, step);
    stop = outcome.stop;
    const int64_t done = step + 1;
    state_.next_position = batch.next_position;
    result.losses.push_back(outcome.loss);
    result.last_step = done;
    if (!outcome.skipped) images += global_batch();

    const double lr = options_.learning_rate(step);
    if (hooks_.on_step) {
      StepReport report;
      report.step = done;
      report.total_steps = options_.steps;
      report.loss = outcome.loss;
      report.lr = lr;
      report.grad_norm = outcome.grad_norm;
      report.images_per_second = images / std::max(seconds_since(run_start), 1e-9);
      hooks_.on_step(report);
    }
    if (options_.log_every > 0 && done % options_.log_every == 0) write_log_line(done, lr);
    if (options_.sample_every > 0 && done % options_.sample_every == 0 && options_.task == TrainingTask::diffusion) {
      write_preview(ema_, data_, options_, log_snr_schedule_of(ema_), files_.samples_dir, done, hooks_.on_message,
                    communicator_);
    }
    if ((options_.save_every > 0 && done % options_.save_every == 0) || done == options_.steps) save(done);
  }
  if (!result.interrupted) notify("trained to step " + std::to_string(result.last_step) + "; weights in '" + options_.out_dir + "'");
  if (skipped_steps_ > 0) {
    notify(std::to_string(skipped_steps_) + " batch" + (skipped_steps_ == 1 ? " was" : "es were") +
           " skipped for a non-finite loss or gradient");
  }
  result.skipped_steps = skipped_steps_;
  result.ema = ema_;
  return result;
}

}  // namespace

TrainingResult train(Model& model, const Dataset& data, const TrainingOptions& options, const TrainingHooks& hooks,
                     Communicator& communicator) {
  TrainingRun run(model, data, options, hooks, communicator);
  return run.run();
}

}  // namespace guidiff
