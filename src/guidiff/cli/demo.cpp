// `guidiff demo`: the 2-D Gaussian-mixture demo. Samples the exact mixture model five ways
// from the same seed -- unguided, classifier guidance s = 1 and s = 4 (DDPM ancestral with
// Dhariwal & Nichol's Algorithm 1 mean shift, using the exact noisy classifier), and
// classifier-free guidance w = 0 and w = 3 (Ho & Salimans eq. 6, same DDPM sampler) --
// and writes one five-panel scatter plot, the raw samples and a JSON report of class purity.
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <memory>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/progress.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/eval/mixture_purity.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/sampling/generate.hpp"

namespace guidiff::cli {
namespace {

struct DemoFlags {
  std::string out_dir = "out/demo";
  int64_t num_samples = 1000;
  int64_t steps = 250;
  uint64_t seed = 0;
};

// One panel of the figure.
struct Setting {
  std::string name;   // file stem
  std::string title;  // panel title
  double classifier_scale;
  double cfg_scale;
  bool uses_labels;   // unguided sampling ignores the requested classes
};

const Setting kSettings[] = {
    {"unguided", "unguided", 0.0, 0.0, false},
    {"classifier_s1", "classifier guidance s=1", 1.0, 0.0, true},
    {"classifier_s4", "classifier guidance s=4", 4.0, 0.0, true},
    {"cfg_w0", "CFG w=0 (conditional)", 0.0, 0.0, true},
    {"cfg_w3", "CFG w=3", 0.0, 3.0, true},
};

std::string weights_text(const GaussianMixture& mixture) {
  std::string text;
  for (int64_t k = 0; k < mixture.num_components(); ++k) {
    char number[32];
    std::snprintf(number, sizeof number, "%s%.3g", k == 0 ? "" : ", ", mixture.weights[k].item<double>());
    text += number;
  }
  return text;
}

std::string file_in(const std::filesystem::path& dir, const std::string& name) { return (dir / name).string(); }

void run_demo(const DemoFlags& flags) {
  if (flags.num_samples < 1) throw InputError("--num-samples must be >= 1, got " + std::to_string(flags.num_samples));
  const std::filesystem::path dir(flags.out_dir);
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error || !std::filesystem::is_directory(dir)) {
    throw FileError("--out-dir '" + flags.out_dir + "': cannot create the directory (" + error.message() + ")");
  }

  const GaussianMixture mixture = GaussianMixture::demo(2);
  GenerationConfig config;
  config.sampler = SamplerKind::ddpm;
  config.schedule = BetaScheduleKind::linear;
  config.timesteps = 1000;
  config.steps = flags.steps;
  config.sample_shape = {mixture.dim()};
  config.num_samples = flags.num_samples;
  config.batch_size = flags.num_samples;  // results do not depend on it; one batch is fastest
  config.seed = flags.seed;
  const NoiseLevelMap levels = NoiseLevelMap::discrete(make_schedule(config.schedule, config.timesteps));
  // Requested classes cycle 0, 1, ..., C-1 over the samples.
  const torch::Tensor requested = torch::arange(flags.num_samples, torch::kLong).remainder(mixture.num_classes);
  const auto classifier = std::make_shared<MixtureClassifier>(mixture, levels);
  write_npy(file_in(dir, "requested_labels.npy"), requested);

  nlohmann::json settings = nlohmann::json::array();
  std::vector<ScatterPanel> panels;
  std::printf("%-26s %8s   %s\n", "setting", "purity", "per class");
  for (const Setting& setting : kSettings) {
    config.classifier_scale = setting.classifier_scale;
    config.cfg_scale = setting.cfg_scale;
    // Classifier guidance steers the unconditional model; CFG needs the conditional one.
    const bool conditional = setting.uses_labels && setting.classifier_scale == 0.0;
    const auto model = std::make_shared<MixtureDenoiser>(mixture, levels, conditional);
    ProgressBar progress(setting.name);
    const GenerationResult result =
        generate(model, setting.classifier_scale != 0.0 ? classifier : nullptr, config,
                 setting.uses_labels ? requested : torch::Tensor(), torch::Tensor(),
                 [&progress](int64_t done, int64_t total) { progress.update(done, total); });

    const double purity = class_purity(mixture, result.samples, requested);
    const torch::Tensor per_class = class_purity_per_class(mixture, result.samples, requested);
    const std::vector<double> per_class_values(per_class.data_ptr<double>(),
                                               per_class.data_ptr<double>() + per_class.numel());
    // Where samples land among the components: guidance trades this diversity for purity.
    const torch::Tensor share = torch::bincount(mixture.nearest_component(result.samples.to(torch::kFloat64)), {},
                                                mixture.num_components()).to(torch::kFloat64) / flags.num_samples;
    const std::vector<double> share_values(share.data_ptr<double>(), share.data_ptr<double>() + share.numel());
    const std::string samples_file = setting.name + ".npy";
    write_npy(file_in(dir, samples_file), result.samples);
    std::string per_class_text;
    for (double value : per_class_values) per_class_text += (per_class_text.empty() ? "" : " ") + std::to_string(value).substr(0, 5);
    std::printf("%-26s %8.3f   %s%s\n", setting.title.c_str(), purity, per_class_text.c_str(),
                setting.uses_labels ? "" : "  (chance level: classes not requested)");
    std::fflush(stdout);

    settings.push_back({{"name", setting.name},
                        {"title", setting.title},
                        {"classifier_scale", setting.classifier_scale},
                        {"cfg_scale", setting.cfg_scale},
                        {"model", conditional ? "class-conditional mixture" : "unconditional mixture"},
                        {"classifier", setting.classifier_scale != 0.0 ? "exact mixture classifier" : "none"},
                        {"labels_used", setting.uses_labels},
                        {"class_purity", purity},
                        {"class_purity_per_class", per_class_values},
                        {"component_share", share_values},
                        {"samples", samples_file}});
    // Every panel is coloured by the requested class: guided samples sit in clusters of
    // their colour, unguided ones ignore it and every cluster is mixed.
    panels.push_back({setting.title, result.samples, requested});
  }

  ScatterPlotOptions plot;
  plot.title = "Gaussian-mixture demo: " + std::to_string(flags.num_samples) + " samples per panel, DDPM " +
               std::to_string(flags.steps) + " steps, seed " + std::to_string(flags.seed);
  write_scatter_plot(file_in(dir, "demo.png"), panels, plot);

  const nlohmann::json report = {
      {"demo", "2-D Gaussian mixture, exact denoiser and classifier"},
      {"mixture", {{"name", "demo"}, {"dim", mixture.dim()}, {"num_classes", mixture.num_classes},
                   {"num_components", mixture.num_components()}}},
      {"sampler", "ddpm (ancestral; classifier guidance by Algorithm 1 mean shift)"},
      {"schedule", "linear"},
      {"timesteps", config.timesteps},
      {"steps", flags.steps},
      {"num_samples", flags.num_samples},
      {"seed", flags.seed},
      {"purity_definition", "fraction of samples whose most responsible mixture component belongs to the requested class"},
      {"component_share_definition",
       "fraction of samples whose most responsible component is component k (weights " + weights_text(mixture) + ")"},
      {"requested_labels", "requested_labels.npy (class k for sample k mod num_classes)"},
      {"figure", "demo.png"},
      {"settings", settings}};
  write_file_atomically(file_in(dir, "report.json"), report.dump(2) + "\n");
  std::printf("wrote %s (figure), report.json and the samples (.npy) to %s\n", "demo.png", flags.out_dir.c_str());
}

}  // namespace

Command add_demo_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command = app.add_subcommand(
      "demo", "2-D Gaussian-mixture demo: unguided vs classifier guidance vs classifier-free guidance");
  auto flags = std::make_shared<DemoFlags>();
  command->add_option("--out-dir", flags->out_dir, "output directory (default out/demo)");
  command->add_option("--num-samples", flags->num_samples, "samples per setting (default 1000)");
  command->add_option("--steps", flags->steps, "DDPM steps, respaced from T = 1000 (default 250)");
  command->add_option("--seed", flags->seed, "random seed shared by all settings (default 0)");
  return {command, [flags] { run_demo(*flags); }};
}

}  // namespace guidiff::cli
