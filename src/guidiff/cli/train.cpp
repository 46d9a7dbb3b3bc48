// `guidiff train diffusion` and `guidiff train classifier`: read the data and the model config,
// fill what the data decides (image size, channels, classes), and run the training loop with a
// progress bar; Ctrl-C saves a checkpoint and exits cleanly.
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/cli/progress.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/global_generators.hpp"
#include "guidiff/data/dataset_spec.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/unet_config.hpp"
#include "guidiff/training/checkpoint.hpp"
#include "guidiff/training/interrupt.hpp"
#include "guidiff/training/trainer.hpp"

namespace guidiff::cli {
namespace {

struct TrainFlags {
  std::string config;  // model config JSON; default: a small network that fits the data
  bool conditional = false;
  std::string objective = "eps", schedule = "linear", lr_schedule = "constant";
  DatasetRequest data;
  TrainingOptions options;
  // Flags that act on some data or objectives only: given elsewhere they are refused.
  CLI::Option *split_option = nullptr, *image_size_option = nullptr, *channels_option = nullptr,
              *mixture_size_option = nullptr, *vlb_weight_option = nullptr;
};

// A flag the run would read and then not use is refused: the user asked for something.
void reject_unused_training_flags(const TrainFlags& flags) {
  const std::string kind = dataset_kind(flags.data.spec);
  const auto refuse = [&](const CLI::Option* option, bool applies, const std::string& where) {
    if (given(option) && !applies)
      throw InputError(option->get_name() + " applies to " + where + ", not --data " + kind);
  };
  refuse(flags.split_option, dataset_has_splits(flags.data.spec),
         "data sets with splits (fashion-mnist, mnist, cifar)");
  refuse(flags.image_size_option, kind == "folder", "folder data");
  refuse(flags.channels_option, kind == "folder", "folder data");
  refuse(flags.mixture_size_option, kind == "mixture", "mixture data");
  if (given(flags.vlb_weight_option) && flags.options.objective != DiffusionObjective::hybrid) {
    throw InputError("--vlb-weight applies to --objective hybrid");
  }
}

// The UNet's default levels and attention resolution are made for 32x32 images. For another
// size the fields the config leaves out are fitted to it (28x28 once failed on an
// attention_resolutions the user never wrote): as many of the default levels as the side
// halves into, and attention at the default resolution where the network has it, else at its
// smallest feature map.
void fit_unet_levels(nlohmann::json& config) {
  const UNetBackboneConfig defaults;
  const int64_t image_size = config["image_size"].get<int64_t>();
  if (image_size < 1) return;  // the config's own check names it
  if (!config.contains("channel_mult")) {
    std::vector<double> mult = defaults.channel_mult;
    while (mult.size() > 1 && image_size % (int64_t{1} << (mult.size() - 1)) != 0) mult.pop_back();
    config["channel_mult"] = mult;
  }
  if (!config.contains("attention_resolutions") && config["channel_mult"].is_array() &&
      !config["channel_mult"].empty() && config["channel_mult"].size() < 63) {
    const int64_t halvings = static_cast<int64_t>(config["channel_mult"].size()) - 1;
    std::vector<int64_t> sides;
    for (int64_t level = 0; level <= halvings && image_size % (int64_t{1} << level) == 0; ++level) {
      sides.push_back(image_size >> level);
    }
    std::vector<int64_t> attention;
    for (const int64_t resolution : defaults.attention_resolutions) {
      if (std::find(sides.begin(), sides.end(), resolution) != sides.end())
        attention.push_back(resolution);
    }
    if (attention.empty() && !sides.empty()) attention.push_back(sides.back());
    config["attention_resolutions"] = attention;
  }
}

// The model config: the given file (or, when resuming without one, the run's own), with
// the fields the data decides filled in where the file leaves them out.
nlohmann::json model_config(const TrainFlags& flags, const Dataset& data) {
  nlohmann::json config;
  if (!flags.config.empty()) {
    config = read_json_file("--config", flags.config);
  } else if (flags.options.resume) {
    config = read_json_file("--resume", run_files(flags.options.out_dir).raw_prefix + ".json");
  }
  if (!config.is_object()) config = nlohmann::json::object();
  // A saved model's config (the run's own on --resume) records class names beside the
  // network; they come from the data instead.
  config.erase("class_names");
  const bool classifier = flags.options.task == TrainingTask::classifier;
  if (!config.contains("kind")) {
    if (data.holds_images()) {
      config["kind"] = classifier ? "encoder_unet" : "unet";
    } else {
      config["kind"] = classifier ? "mlp_classifier" : "mlp_denoiser";
    }
  }
  const std::string kind = config["kind"].is_string() ? config["kind"].get<std::string>() : "";
  const bool image_model = kind == "unet" || kind == "encoder_unet" || kind == "cnn_classifier";
  if (image_model != data.holds_images()) {
    throw InputError("--config kind '" + kind + "' does not fit the data '" + data.name + "' (" +
                     (data.holds_images() ? "images" : "vectors") + ")");
  }
  if (image_model) {
    if (!config.contains("image_size")) config["image_size"] = data.images.size(2);
    if (!config.contains("in_channels")) config["in_channels"] = data.images.size(1);
    if (kind != "cnn_classifier" && config["image_size"].is_number_integer())
      fit_unet_levels(config);
    // A network too small for the default 32 GroupNorm groups gets as many as fit.
    if (kind != "cnn_classifier" && !config.contains("norm_groups") && config.value("model_channels", int64_t{64}) < 32) {
      config["norm_groups"] = config.value("model_channels", int64_t{64}) / 2;
    }
  } else if (!config.contains("data_dim")) {
    config["data_dim"] = data.images.size(1);
  }
  if (!config.contains("num_classes") && (classifier || flags.conditional)) config["num_classes"] = data.num_classes;
  if (flags.options.objective == DiffusionObjective::cfg_continuous && !config.contains("time_input")) {
    config["time_input"] = "log_snr";
  }
  if (flags.options.objective == DiffusionObjective::hybrid && kind == "unet" && !config.contains("learn_sigma")) {
    config["learn_sigma"] = true;
  }
  return config;
}

std::string format_step(const StepReport& report) {
  char text[96];
  std::snprintf(text, sizeof text, "loss %.4f  %.0f img/s", report.loss, report.images_per_second);
  return text;
}

void run_train(TrainFlags flags, Communicator& communicator) {
  flags.options.objective = parse_objective(flags.objective);
  flags.options.schedule = parse_beta_schedule(flags.schedule);
  flags.options.lr_schedule = parse_lr_schedule(flags.lr_schedule);
  flags.data.seed = flags.options.seed;
  flags.options.validate();
  reject_unused_training_flags(flags);
  if (flags.options.bf16) warn_if_bf16_is_emulated(flags.options.device);
  check_run_directory(flags.options.out_dir, flags.options.resume);
  // Checked whatever the data (they act on folders only): a bad value is never ignored.
  if (flags.data.channels != 1 && flags.data.channels != 3) {
    throw InputError("--channels must be 1 (grey) or 3 (RGB), got " + std::to_string(flags.data.channels));
  }
  // 4096 is 8x guided-diffusion's largest model; beyond it the resized copies alone fill memory.
  if (flags.data.image_size < 0 || flags.data.image_size > 4096) {
    throw InputError("--image-size must be 1 to 4096 (or 0: keep the images' size), got " +
                     std::to_string(flags.data.image_size));
  }
  const Dataset data = load_dataset(flags.data);
  // The initial weights come from the global generator: seeded, so a recipe rerun gives the
  // same weights (on the same libtorch and thread count).
  seed_global_generators(flags.options.seed, torch::kCPU);  // the weights are made on the CPU
  Model model = build_model(model_config(flags, data));
  // The data's class names go into the saved model (grids label their rows with them).
  const int64_t classes = model_class_count(model);
  if (classes > 0 && static_cast<int64_t>(data.class_names.size()) == classes) model.class_names = data.class_names;

  std::error_code ignored;
  std::filesystem::create_directories(flags.options.out_dir, ignored);
  if (!std::filesystem::is_directory(flags.options.out_dir)) {
    throw FileError("--out-dir '" + flags.options.out_dir + "' cannot be created");
  }
  // Rank 0 alone speaks for a data-parallel run.
  const bool speaks = communicator.is_main();
  if (speaks) {
    std::fprintf(stderr, "training %s (%s) on %s: %lld samples, %lld classes, %lld parameters%s\n",
                 to_string(flags.options.task).c_str(), model_kind_name(model.kind), data.name.c_str(),
                 static_cast<long long>(data.size()), static_cast<long long>(data.num_classes),
                 static_cast<long long>(count_parameters(*model.module)),
                 communicator.distributed()
                     ? (", " + std::to_string(communicator.world_size()) + " processes (" + communicator.backend() +
                        "), global batch " + std::to_string(flags.options.batch_size * communicator.world_size()))
                           .c_str()
                     : "");
  }

  std::optional<ProgressBar> bar;
  if (speaks) bar.emplace("train");
  InterruptFlag interrupt;
  TrainingHooks hooks;
  double images_per_second = 0.0;
  if (speaks) {
    hooks.on_step = [&](const StepReport& report) {
      images_per_second = report.images_per_second;
      bar->update(report.step, report.total_steps, format_step(report));
    };
    hooks.on_message = [&](const std::string& message) { bar->print_line(message); };
  }
  hooks.should_stop = [&]() { return interrupt.raised(); };
  const TrainingResult result = train(model, data, flags.options, hooks, communicator);
  if (speaks && !result.losses.empty()) {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);  // ru_maxrss is in KiB on Linux
    std::fprintf(stderr, "steps %lld..%lld, last loss %.5f, %.1f images/s, peak memory %.0f MiB\n",
                 static_cast<long long>(result.first_step), static_cast<long long>(result.last_step),
                 result.losses.back(), images_per_second, static_cast<double>(usage.ru_maxrss) / 1024.0);
  }
  // 128 + SIGINT, the status a shell gives a command stopped by Ctrl-C: a script that runs
  // `guidiff train` (the recipes) must stop here, not go on as if training had finished.
  constexpr int kInterruptedExit = 130;
  if (result.interrupted) throw ExitStatus{kInterruptedExit};
}

void add_training_flags(CLI::App& command, TrainFlags& flags) {
  TrainingOptions& o = flags.options;
  command.add_option("--config", flags.config, "model config JSON (docs/formats.md); default: a small network for the data");
  command.add_option("--data", flags.data.spec,
                     "fashion-mnist | mnist:DIR | cifar10:DIR | cifar100:DIR | folder:DIR | mixture[:FILE.json]")
      ->capture_default_str();
  flags.split_option =
      command.add_option("--split", flags.data.split, "train or test")->capture_default_str();
  flags.image_size_option = command.add_option("--image-size", flags.data.image_size,
                                               "folder data: centre-crop and resize to this side");
  flags.channels_option =
      command.add_option("--channels", flags.data.channels, "folder data: 1 (grey) or 3 (RGB)")
          ->capture_default_str();
  flags.mixture_size_option =
      command.add_option("--mixture-size", flags.data.mixture_size, "mixture data: points drawn")
          ->capture_default_str();
  command.add_option("--out-dir", o.out_dir, "run directory: weights, resume file, log, previews")->required();
  command.add_flag("--resume", o.resume, "continue the run in --out-dir from its last checkpoint");
  command.add_option("--steps", o.steps, "total optimiser steps")->capture_default_str();
  command.add_option("--batch-size", o.batch_size)->capture_default_str();
  command.add_option("--lr", o.lr, "AdamW learning rate")->capture_default_str();
  command.add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay")->capture_default_str();
  command.add_option("--warmup", o.warmup_steps, "linear learning-rate warm-up steps")->capture_default_str();
  command.add_option("--lr-schedule", flags.lr_schedule, "after warm-up: constant, or cosine decay to 0 at --steps")
      ->capture_default_str();
  command.add_option("--ema-rate", o.ema_rate, "EMA decay per step (EMA weights are what sampling uses)")
      ->capture_default_str();
  command.add_option("--grad-clip", o.grad_clip, "max gradient L2 norm (0: none)")->capture_default_str();
  command.add_flag("--bf16", o.bf16, "bfloat16 autocast for the forward pass");
  command.add_flag("--flip", o.random_flip, "random horizontal flips");
  command.add_flag("--skip-nonfinite", o.skip_nonfinite,
                   "skip a batch whose loss or gradient is NaN or infinite (default: stop at that step); 10 in a row still stop");
  command.add_option("--seed", o.seed)->capture_default_str();
  command.add_option("--schedule", flags.schedule, "linear or cosine")->capture_default_str();
  command.add_option("--timesteps", o.timesteps, "T of the discrete schedule")->capture_default_str();
  command.add_option("--log-every", o.log_every, "steps between log.jsonl lines")->capture_default_str();
  command.add_option("--save-every", o.save_every, "steps between checkpoints")->capture_default_str();
}

}  // namespace

Command add_train_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* train_app = app.add_subcommand("train", "train a denoiser or a noise-aware classifier");
  train_app->require_subcommand(1);
  auto flags = std::make_shared<TrainFlags>();
  auto classifier_flags = std::make_shared<TrainFlags>();
  classifier_flags->options.task = TrainingTask::classifier;
  classifier_flags->options.lr = 3e-4;

  CLI::App* diffusion = train_app->add_subcommand("diffusion", "train a denoiser eps(x_t, t [, y])");
  add_training_flags(*diffusion, *flags);
  diffusion->add_option("--objective", flags->objective, "eps | hybrid (learned variance) | cfg-continuous")
      ->capture_default_str();
  diffusion->add_flag("--conditional", flags->conditional, "class-conditional (num_classes from the data)");
  diffusion->add_option("--p-uncond", flags->options.p_uncond, "label dropout probability (classifier-free)")
      ->capture_default_str();
  flags->vlb_weight_option =
      diffusion->add_option("--vlb-weight", flags->options.vlb_weight, "lambda of the hybrid loss")
          ->capture_default_str();
  diffusion->add_option("--sample-every", flags->options.sample_every, "steps between preview grids (0: never)")
      ->capture_default_str();
  diffusion->add_option("--preview-samples", flags->options.preview_samples)->capture_default_str();

  CLI::App* classifier = train_app->add_subcommand("classifier", "train a noise-aware classifier p(y | x_t, t)");
  add_training_flags(*classifier, *classifier_flags);
  classifier->add_option("--max-t", classifier_flags->options.max_t, "train on t < max-t (0: all)")
      ->capture_default_str();
  classifier->add_option("--t-power", classifier_flags->options.t_power,
                         "t = floor(max-t u^p), u uniform: p > 1 trains more on small t (1: uniform)")
      ->capture_default_str();
  classifier->add_option("--accuracy-buckets", classifier_flags->options.accuracy_buckets,
                         "t ranges the logged accuracy is split into")
      ->capture_default_str();

  return {train_app, [=, &global]() {
            const torch::Device device = global.torch_device();
            TrainFlags chosen = diffusion->parsed() ? *flags : *classifier_flags;
            chosen.options.device = device;
            run_train(chosen, *global.communicator);
          }};
}

}  // namespace guidiff::cli
