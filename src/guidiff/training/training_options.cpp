// TrainingOptions: validation, the warm-up schedule and JSON (see trainer.hpp).
#include <cmath>
#include <type_traits>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/json_integer.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/training/trainer.hpp"

namespace guidiff {
namespace {

void require(bool ok, const std::string& flag, const std::string& rule, const std::string& value) {
  if (!ok) throw InputError(flag + " must be " + rule + ", got " + value);
}

std::string text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", value);
  return buffer;
}

TrainingTask parse_task(const std::string& name) {
  if (name == "diffusion") return TrainingTask::diffusion;
  if (name == "classifier") return TrainingTask::classifier;
  throw InputError("training options: key \"task\" must be diffusion or classifier, got '" + name + "'");
}

}  // namespace

LrSchedule parse_lr_schedule(const std::string& name) {
  if (name == "constant") return LrSchedule::constant;
  if (name == "cosine") return LrSchedule::cosine;
  throw InputError("--lr-schedule must be constant or cosine, got '" + name + "'");
}

std::string to_string(LrSchedule schedule) { return schedule == LrSchedule::cosine ? "cosine" : "constant"; }

std::string to_string(TrainingTask task) { return task == TrainingTask::diffusion ? "diffusion" : "classifier"; }

void TrainingOptions::validate() const {
  require(steps >= 1, "--steps", ">= 1", std::to_string(steps));
  require(batch_size >= 1, "--batch-size", ">= 1", std::to_string(batch_size));
  require(std::isfinite(lr) && lr > 0.0, "--lr", "a finite number > 0", text(lr));
  require(std::isfinite(weight_decay) && weight_decay >= 0.0, "--weight-decay", ">= 0", text(weight_decay));
  require(warmup_steps >= 0, "--warmup", ">= 0", std::to_string(warmup_steps));
  require(ema_rate >= 0.0 && ema_rate <= 1.0, "--ema-rate", "in [0, 1]", text(ema_rate));
  require(std::isfinite(grad_clip) && grad_clip >= 0.0, "--grad-clip", ">= 0 (0: no clipping)", text(grad_clip));
  require(p_uncond >= 0.0 && p_uncond <= 1.0, "--p-uncond", "in [0, 1]", text(p_uncond));
  require(std::isfinite(vlb_weight) && vlb_weight >= 0.0, "--vlb-weight", ">= 0", text(vlb_weight));
  check_timestep_count(timesteps, "--timesteps");
  require(max_t >= 0 && max_t <= timesteps, "--max-t", "in [1, --timesteps] (0: all)", std::to_string(max_t));
  require(std::isfinite(t_power) && t_power >= 0.25 && t_power <= 4.0, "--t-power", "in [0.25, 4]", text(t_power));
  // A bucket is a range of t: there are at most as many as the classifier's noise levels.
  const int64_t levels = max_t > 0 ? max_t : timesteps;
  require(accuracy_buckets >= 1 && (task != TrainingTask::classifier || accuracy_buckets <= levels),
          "--accuracy-buckets", "1 to " + std::to_string(levels) + " (--max-t, or --timesteps)",
          std::to_string(accuracy_buckets));
  require(log_every >= 0, "--log-every", ">= 0", std::to_string(log_every));
  require(sample_every >= 0, "--sample-every", ">= 0", std::to_string(sample_every));
  require(save_every >= 0, "--save-every", ">= 0", std::to_string(save_every));
  require(preview_samples >= 1, "--preview-samples", ">= 1", std::to_string(preview_samples));
  require(!out_dir.empty(), "--out-dir", "given", "nothing");
}

double TrainingOptions::learning_rate(int64_t step) const {
  const double warmup =
      warmup_steps <= 0 ? 1.0 : std::min(1.0, static_cast<double>(step + 1) / static_cast<double>(warmup_steps));
  if (lr_schedule == LrSchedule::constant || step < warmup_steps || steps <= warmup_steps) return lr * warmup;
  constexpr double kPi = 3.14159265358979323846;
  const double done = std::min(1.0, static_cast<double>(step - warmup_steps) / static_cast<double>(steps - warmup_steps));
  return lr * warmup * 0.5 * (1.0 + std::cos(kPi * done));
}

nlohmann::json TrainingOptions::to_json() const {
  return {{"task", to_string(task)},
          {"objective", to_string(objective)},
          {"schedule", to_string(schedule)},
          {"timesteps", timesteps},
          {"p_uncond", p_uncond},
          {"vlb_weight", vlb_weight},
          {"max_t", max_t},
          {"t_power", t_power},
          {"accuracy_buckets", accuracy_buckets},
          {"steps", steps},
          {"batch_size", batch_size},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"warmup_steps", warmup_steps},
          {"lr_schedule", to_string(lr_schedule)},
          {"ema_rate", ema_rate},
          {"grad_clip", grad_clip},
          {"bf16", bf16},
          {"random_flip", random_flip},
          {"skip_nonfinite", skip_nonfinite},
          {"seed", seed},
          {"log_every", log_every},
          {"sample_every", sample_every},
          {"save_every", save_every},
          {"preview_samples", preview_samples}};
}

TrainingOptions TrainingOptions::from_json(const nlohmann::json& object) {
  TrainingOptions options;
  if (!object.is_object()) {
    throw InputError("training options: expected a JSON object, got " + printable_excerpt(object.dump(), 80));
  }
  const auto get = [&](const char* key, auto& value) {
    if (!object.contains(key)) return;
    const nlohmann::json& field = object.at(key);
    const auto wrong_type = [&] {
      return InputError(std::string("training options: key \"") + key + "\" has the wrong type: " +
                        printable_excerpt(field.dump(), 80));
    };
    using Value = std::decay_t<decltype(value)>;
    if constexpr (std::is_integral_v<Value> && !std::is_same_v<Value, bool>) {
      if (!json_integer_fits<Value>(field)) throw wrong_type();
    }
    try {
      field.get_to(value);
    } catch (const nlohmann::json::exception&) {
      throw wrong_type();
    }
  };
  std::string task = to_string(options.task), objective = to_string(options.objective),
              schedule = to_string(options.schedule), lr_schedule = to_string(options.lr_schedule);
  get("task", task);
  get("objective", objective);
  get("schedule", schedule);
  options.task = parse_task(task);
  options.objective = parse_objective(objective);
  options.schedule = parse_beta_schedule(schedule);
  get("lr_schedule", lr_schedule);
  options.lr_schedule = parse_lr_schedule(lr_schedule);
  get("timesteps", options.timesteps);
  get("p_uncond", options.p_uncond);
  get("vlb_weight", options.vlb_weight);
  get("max_t", options.max_t);
  get("t_power", options.t_power);
  get("accuracy_buckets", options.accuracy_buckets);
  get("steps", options.steps);
  get("batch_size", options.batch_size);
  get("lr", options.lr);
  get("weight_decay", options.weight_decay);
  get("warmup_steps", options.warmup_steps);
  get("ema_rate", options.ema_rate);
  get("grad_clip", options.grad_clip);
  get("bf16", options.bf16);
  get("random_flip", options.random_flip);
  get("skip_nonfinite", options.skip_nonfinite);
  get("seed", options.seed);
  get("log_every", options.log_every);
  get("sample_every", options.sample_every);
  get("save_every", options.save_every);
  get("preview_samples", options.preview_samples);
  return options;
}

}  // namespace guidiff
