// `guidiff eval-classifier`: the accuracy of a noise-aware classifier on a labelled data set
// at every noise level (eval/noisy_classifier_accuracy.hpp): a table, and optionally JSON and
// an accuracy-against-t plot.
#include <torch/torch.h>

#include <cstdio>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/data/dataset_spec.hpp"
#include "guidiff/eval/noisy_classifier_accuracy.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/version.hpp"

namespace guidiff::cli {
namespace {

struct EvalClassifierFlags {
  std::string classifier, json, plot, schedule = "linear";
  DatasetRequest data;
  int64_t timesteps = 1000;
  NoisyAccuracyOptions options;
};

void run_eval_classifier(EvalClassifierFlags flags, const GlobalOptions& global) {
  check_distinct_outputs({{"--json", flags.json}, {"--plot", flags.plot}});
  if (!flags.json.empty()) check_output_path("--json", flags.json);
  if (!flags.plot.empty()) check_output_path("--plot", flags.plot);
  if (flags.options.buckets < 1) throw InputError("--buckets must be >= 1, got " + std::to_string(flags.options.buckets));
  if (flags.options.max_t < 0) throw InputError("--max-t must be >= 0 (0: all of T), got " + std::to_string(flags.options.max_t));
  if (flags.options.batch_size < 1) {
    throw InputError("--batch-size must be >= 1, got " + std::to_string(flags.options.batch_size));
  }
  check_timestep_count(flags.timesteps, "--timesteps");
  if (flags.options.max_t > flags.timesteps) {
    throw InputError("--max-t must be at most --timesteps (" + std::to_string(flags.timesteps) +
                     "), got " + std::to_string(flags.options.max_t));
  }
  const int64_t levels = flags.options.max_t > 0 ? flags.options.max_t : flags.timesteps;
  if (flags.options.buckets > levels) {
    throw InputError("--buckets must be at most the " + std::to_string(levels) +
                     " noise levels scored (--max-t, or --timesteps), got " +
                     std::to_string(flags.options.buckets));
  }
  flags.options.device = global.torch_device();
  const Model model = load_model(flags.classifier, flags.options.device);
  if (!model.classifier) throw InputError("--classifier '" + flags.classifier + "' is not a classifier");
  const DiscreteSchedule schedule = make_schedule(parse_beta_schedule(flags.schedule), flags.timesteps);
  // A folder is read with the classifier's channels (grey for a grey classifier), and any
  // data set must have the image shape it takes: said here, naming --data, rather than by
  // the network's own shape check.
  const int64_t channels = model.config.value("in_channels", int64_t{0});
  const int64_t side = model.config.value("image_size", int64_t{0});
  if (channels > 0) flags.data.channels = channels;
  const Dataset data = load_dataset(flags.data);
  if (channels > 0 && side > 0 &&
      (data.images.dim() != 4 || data.images.size(1) != channels || data.images.size(2) != side || data.images.size(3) != side)) {
    throw InputError("--data " + flags.data.spec + ": images are " + shape_string(data.images) + " [N, C, H, W]" +
                     " but the classifier takes [" + std::to_string(channels) + ", " + std::to_string(side) + ", " +
                     std::to_string(side) + "]");
  }
  const BucketAccuracy accuracy =
      noisy_classifier_accuracy(*model.classifier, schedule, data.images, data.labels, flags.options);
  const nlohmann::json rows = accuracy.to_json();
  std::printf("%-12s %8s %9s\n", "t", "images", "accuracy");
  LineSeries curve;
  curve.title = flags.classifier;
  for (const auto& row : rows) {
    if (row.at("count").get<int64_t>() == 0) continue;
    const double value = row.at("accuracy").get<double>();
    std::printf("%4lld-%-7lld %8lld %9.4f\n", static_cast<long long>(row.at("t_min").get<int64_t>()),
                static_cast<long long>(row.at("t_max").get<int64_t>()),
                static_cast<long long>(row.at("count").get<int64_t>()), value);
    curve.x.push_back(0.5 * (row.at("t_min").get<double>() + row.at("t_max").get<double>()));
    curve.y.push_back(value);
  }
  std::printf("overall %.4f on %s (%lld images per noise level)\n", accuracy.overall(), data.name.c_str(),
              static_cast<long long>(data.size()));
  if (!flags.json.empty()) {
    const nlohmann::json json = {{"classifier", flags.classifier}, {"data", flags.data.spec},
                                 {"split", flags.data.split},      {"seed", flags.options.seed},
                                 {"accuracy_by_t", rows},          {"overall", accuracy.overall()},
                                 {"guidiff_version", GUIDIFF_VERSION}};
    write_file_atomically(flags.json, json.dump(2) + "\n");
  }
  if (!flags.plot.empty()) {
    LinePlotOptions options;
    options.title = "noise-aware classifier accuracy on " + data.name;
    options.x_label = "timestep t (bucket centre)";
    options.y_label = "accuracy";
    write_line_plot(flags.plot, {curve}, options);
  }
}

}  // namespace

Command add_eval_classifier_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command =
      app.add_subcommand("eval-classifier", "a noise-aware classifier's accuracy on a labelled data set at every noise level");
  auto flags = std::make_shared<EvalClassifierFlags>();
  EvalClassifierFlags& f = *flags;
  f.data.split = "test";
  command->add_option("--classifier", f.classifier, "noise-aware classifier checkpoint")->required();
  command->add_option("--data", f.data.spec, "labelled data set (fashion-mnist, folder:DIR, ...)")->capture_default_str();
  command->add_option("--split", f.data.split, "train or test")->capture_default_str();
  command->add_option("--buckets", f.options.buckets, "equal ranges of t, each with every image once")->capture_default_str();
  command->add_option("--max-t", f.options.max_t, "t ranges over [0, max-t); 0: all of T")->capture_default_str();
  command->add_option("--schedule", f.schedule, "the classifier's training schedule: linear or cosine")->capture_default_str();
  command->add_option("--timesteps", f.timesteps, "its T")->capture_default_str();
  command->add_option("--seed", f.options.seed, "seed of the noise and the t draws")->capture_default_str();
  command
      ->add_option("--batch-size", f.options.batch_size,
                   "images per forward (changes results only through float32 rounding)")
      ->capture_default_str();
  command->add_option("--json", f.json, "write the accuracy per bucket as JSON here");
  command->add_option("--plot", f.plot, "draw accuracy against t as a PNG here (gnuplot)");
  return {command, [flags, &global] { run_eval_classifier(*flags, global); }};
}

}  // namespace guidiff::cli
