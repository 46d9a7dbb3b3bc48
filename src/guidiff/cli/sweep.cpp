// `guidiff sweep`: the fidelity/diversity trade-off of guidance, measured. For every setting
// (sampler, classifier scale s, CFG weight w, number of steps) it draws the same N samples (same seed,
// so sample k starts from the same x_T everywhere), scores them (FID, IS, precision/recall,
// density/coverage, class accuracy), and writes
//   DIR/settings/<id>/{samples.npz, grid.png, scores.json}   one folder per setting
//   DIR/results.csv, DIR/results.json                          every setting's scores
//   DIR/plots/*.png                                            FID vs IS, precision vs recall,
//                                                              class accuracy vs strength, FID vs steps,
//                                                              FID vs model evaluations per sampler
//   DIR/grids/<method>_steps<T>.png                            rows = classes, columns = strength
//   DIR/report.md, DIR/report.html                             all of it, for a person
// A setting whose scores.json exists (for the same request) is not redone: an interrupted
// sweep continues where it stopped.
#include <sys/utsname.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <utility>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/cli/evaluation_setup.hpp"
#include "guidiff/cli/progress.hpp"
#include "guidiff/cli/sweep_settings.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/data/dataset_spec.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/checksum.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/null_class_denoiser.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/version.hpp"

namespace guidiff::cli {
namespace {

namespace fs = std::filesystem;

struct SweepFlags {
  std::string model, classifier, classifier_scales, conditional_classifier_scales, cfg_scales, steps = "50",
      sampler = "ddim", samplers, sigmas = "karras", out_dir;
  double eta = 0.0;
  int64_t num_samples = 250, batch_size = 64, grid_columns = 8;
  uint64_t seed = 0;
  bool no_real_baseline = false;
  EvaluationFlags evaluation;
  CLI::Option* sigmas_option = nullptr;
};

struct SettingResult {
  Setting setting;
  SampleScores scores;
  double seconds = 0;             // sampling time (0 when resumed from an earlier run)
  int64_t model_evaluations = 0;  // calls of the guided model per sample (NFE)
};

// The samplers to sweep: --samplers, or the one --sampler.
std::vector<SamplerKind> swept_samplers(const SweepFlags& flags) {
  return parse_sampler_list(flags.samplers.empty() ? "--sampler" : "--samplers",
                            flags.samplers.empty() ? flags.sampler : flags.samplers);
}

// The checksums of the files a network flag names (a file, or a checkpoint's weights and
// config), so that results made with other weights under the same path are never reused;
// "" when it names nothing readable (loading it reports that).
std::string network_checksum(const std::string& path) {
  if (path.empty()) return "";
  std::error_code ignored;
  if (fs::is_regular_file(path, ignored)) return file_checksum(path);
  const ModelFiles files = model_files(path);
  std::string text;
  for (const std::string& file : {files.weights, files.config}) {
    if (!fs::is_regular_file(file, ignored)) continue;
    text += (text.empty() ? "" : "; ") + fs::path(file).filename().string() + " " + file_checksum(file);
  }
  return text;
}

// The sweep's identity: a directory holding another sweep's results is not reused, nor one
// whose networks' files have changed since (a retrained model under the same path).
nlohmann::json sweep_request(const SweepFlags& flags) {
  std::string samplers;
  bool any_sigma_sampler = false;
  for (const SamplerKind kind : swept_samplers(flags)) {
    samplers += (samplers.empty() ? "" : ",") + to_string(kind);
    any_sigma_sampler = any_sigma_sampler || is_sigma_sampler(kind);
  }
  nlohmann::json request = {{"model", flags.model},         {"classifier", flags.classifier}, {"sampler", samplers},
                            {"eta", flags.eta},             {"num_samples", flags.num_samples}, {"seed", flags.seed},
                            {"evaluator", flags.evaluation.evaluator}, {"features", flags.evaluation.features},
                            {"reference", flags.evaluation.reference}, {"reference_split", flags.evaluation.reference_split}};
  if (any_sigma_sampler) request["sigmas"] = flags.sigmas;
  request["network_files"] = {{"model", network_checksum(flags.model)},
                              {"classifier", network_checksum(flags.classifier)},
                              {"evaluator", network_checksum(flags.evaluation.evaluator)}};
  return request;
}

void check_or_write_request(const SweepFlags& flags) {
  const std::string path = flags.out_dir + "/sweep.json";
  const nlohmann::json request = sweep_request(flags);
  if (fs::exists(path)) {
    std::ifstream in(path);
    nlohmann::json saved;
    try {
      saved = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception&) {
      throw FileError("'" + path + "' is not valid JSON; remove it or use another --out-dir");
    }
    for (auto it = request.begin(); it != request.end(); ++it) {
      if (it.key() == "network_files" && saved.value(it.key(), nlohmann::json()) != it.value()) {
        throw InputError("--out-dir '" + flags.out_dir +
                         "' holds a sweep made with other network files (retrained or replaced since, or from before "
                         "guidiff recorded them); remove it or use another --out-dir");
      }
      if (!saved.contains(it.key()) || saved.at(it.key()) != it.value()) {
        throw InputError("--out-dir '" + flags.out_dir + "' holds a sweep with " + it.key() + " = " +
                         (saved.contains(it.key()) ? saved.at(it.key()).dump() : std::string("(absent)")) + ", not " +
                         it.value().dump() + "; use another --out-dir to keep both");
      }
    }
    return;
  }
  write_file_atomically(path, request.dump(2) + "\n");
}

// Grids large enough to see: small images are shown at about 84 pixels (3x for 28x28), as
// nearest-neighbour blocks, so no pixel is invented.
int64_t grid_scale(const torch::Tensor& images) { return std::max<int64_t>(1, 84 / images.size(-1)); }

class Sweep {
 public:
  Sweep(const SweepFlags& flags, const GlobalOptions& global)
      : flags_(flags), device_(global.torch_device()), communicator_(*global.communicator) {}

  // In a data-parallel run every rank samples and scores its share of each setting (the
  // results are gathered), and rank 0 alone reads and writes the files.
  void run() {
    validate();
    const auto started = std::chrono::steady_clock::now();
    model_ = load_model(flags_.model, device_);
    if (!model_.denoiser) throw InputError("--model '" + flags_.model + "' is not a denoiser");
    if (model_.config.value("image_size", int64_t{0}) == 0) throw InputError("--model must be an image model (unet)");
    std::vector<std::string> classifier_names;
    if (!flags_.classifier.empty()) {
      Model classifier = load_model(flags_.classifier, device_);
      check_guidance_classifier(classifier, "--classifier '" + flags_.classifier + "'");
      classifier_ = classifier.classifier;
      classifier_names = std::move(classifier.class_names);
    }
    const bool conditional_model = model_.denoiser->num_classes() > 0;
    if (!conditional_model && !flags_.conditional_classifier_scales.empty()) {
      throw InputError("--conditional-classifier-scales needs a class-conditional --model; '" + flags_.model +
                       "' is unconditional (use --classifier-scales)");
    }
    if (!conditional_model && !classifier_) {
      throw InputError("--model '" + flags_.model + "' is unconditional: sweeping it needs --classifier (the classes)");
    }
    num_classes_ = conditional_model ? model_.denoiser->num_classes() : classifier_->num_classes();
    class_names_ = conditional_model ? model_.class_names : classifier_names;
    // The evaluator must take the model's images and tell its classes apart.
    evaluation_ = std::make_unique<Evaluation>(flags_.evaluation, device_, communicator_);
    const int64_t side = model_.config.at("image_size").get<int64_t>();
    const torch::Tensor probe = torch::zeros({1, model_.config.at("in_channels").get<int64_t>(), side, side});
    evaluation_->check_images(probe);
    evaluation_->check_classes(probe, std::min(num_classes_, flags_.num_samples));
    // The directory and its sweep.json come after the networks are checked, so that a refused
    // model, classifier or evaluator leaves no request behind to refuse the corrected command.
    if (communicator_.is_main()) {
      fs::create_directories(flags_.out_dir + "/settings");
      fs::create_directories(flags_.out_dir + "/plots");
      fs::create_directories(flags_.out_dir + "/grids");
      const AbandonedTemporaries removed = remove_abandoned_temporaries(flags_.out_dir, /*recursive=*/true);
      if (removed.files > 0) {
        std::fprintf(stderr, "sweep: removed %lld temporary file(s) (%lld bytes) left by an interrupted run\n",
                     static_cast<long long>(removed.files), static_cast<long long>(removed.bytes));
      }
      check_or_write_request(flags_);
    }
    communicator_.barrier("checking the sweep directory");  // the others learn at once if rank 0 refused it

    if (!flags_.no_real_baseline) score_real_baseline();
    run_settings();
    if (!communicator_.is_main()) return;
    seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    write_tables();
    write_plots();
    write_strength_grids();
    write_report();
    std::fprintf(stderr, "sweep: %zu settings in %.0f s; report in %s/report.html and report.md\n", results_.size(),
                 seconds_, flags_.out_dir.c_str());
  }

 private:
  void validate() {
    if (flags_.model.empty()) throw InputError("--model is required");
    const std::vector<double> s = parse_number_list("--classifier-scales", flags_.classifier_scales);
    const std::vector<double> conditional_s =
        parse_number_list("--conditional-classifier-scales", flags_.conditional_classifier_scales);
    const std::vector<double> w = parse_number_list("--cfg-scales", flags_.cfg_scales);
    if (s.empty() && conditional_s.empty() && w.empty()) {
      throw InputError("nothing to sweep: give --classifier-scales, --conditional-classifier-scales and/or --cfg-scales");
    }
    for (const auto& [flag, scales] :
         {std::pair{"--classifier-scales", &s}, {"--conditional-classifier-scales", &conditional_s}}) {
      bool needs_classifier = false;
      for (double value : *scales) needs_classifier = needs_classifier || value != 0.0;
      if (needs_classifier && flags_.classifier.empty()) throw InputError(std::string(flag) + " needs --classifier");
    }
    if (!flags_.classifier.empty() && s.empty() && conditional_s.empty()) {
      throw InputError(
          "--classifier is used by --classifier-scales and --conditional-classifier-scales, and "
          "neither is given");
    }
    const std::vector<int64_t> steps = parse_positive_list("--steps", flags_.steps);
    if (flags_.num_samples < 10) throw InputError("--num-samples must be >= 10 for the metrics to mean anything");
    if (flags_.grid_columns < 1) throw InputError("--grid-columns must be >= 1");
    samplers_ = swept_samplers(flags_);
    parse_sigma_spacing(flags_.sigmas);
    // Flags that no swept sampler reads would leave every setting as it was without them.
    const auto swept = [&](auto&& wanted) {
      return std::any_of(samplers_.begin(), samplers_.end(), wanted);
    };
    if (flags_.eta != 0.0 && !swept([](SamplerKind k) { return k == SamplerKind::ddim; })) {
      throw InputError("--eta applies to the ddim sampler, which this sweep does not run");
    }
    if (given(flags_.sigmas_option) && !swept([](SamplerKind k) { return is_sigma_sampler(k); })) {
      throw InputError(
          "--sigmas applies to the sigma-space samplers, which this sweep does not run");
    }
    const bool named_by_sampler = samplers_.size() > 1;
    for (const SamplerKind sampler : samplers_) {
      for (int64_t t : steps) {
        for (double value : s) settings_.push_back({sampler, Method::classifier, value, t, named_by_sampler});
        for (double value : conditional_s) {
          settings_.push_back({sampler, Method::classifier_conditional, value, t, named_by_sampler});
        }
        for (double value : w) settings_.push_back({sampler, Method::cfg, value, t, named_by_sampler});
      }
    }
    steps_ = steps;
  }

  GenerationConfig config_for(const Setting& setting) const {
    GenerationConfig config;
    config.sampler = setting.sampler;
    config.sigmas = parse_sigma_spacing(flags_.sigmas);
    config.steps = setting.steps;
    config.eta = setting.sampler == SamplerKind::ddim ? flags_.eta : 0.0;
    config.clip_x0 = true;
    config.classifier_scale = is_classifier_guidance(setting.method) ? setting.strength : 0.0;
    config.cfg_scale = setting.method == Method::cfg ? setting.strength : 0.0;
    const int64_t side = model_.config.at("image_size").get<int64_t>();
    config.sample_shape = {model_.config.at("in_channels").get<int64_t>(), side, side};
    config.num_samples = flags_.num_samples;
    config.batch_size = flags_.batch_size;
    config.seed = flags_.seed;
    return config;
  }

  // The relative cost of a setting, for the ETA: model forwards per sample.
  double cost(const Setting& setting) const {
    const double per_call = setting.method == Method::cfg && setting.strength != 0.0 ? 2.0
                            : is_classifier_guidance(setting.method) && setting.strength != 0.0 ? 1.6 : 1.0;
    return per_call * static_cast<double>(model_calls(setting.sampler, setting.steps));
  }

  torch::Tensor labels() const { return torch::arange(flags_.num_samples, torch::kLong) % num_classes_; }

  // The grids' row labels: the model's class names (the classifier's for an unconditional
  // model), else the reference data's (known once the real-data row is scored), else "class k".
  std::vector<std::string> class_labels() const {
    if (!class_names_.empty()) return class_names_;
    std::vector<std::string> names;
    for (int64_t c = 0; c < num_classes_; ++c) names.push_back("class " + std::to_string(c));
    return names;
  }

  void score_real_baseline() {
    DatasetRequest request;
    request.spec = flags_.evaluation.reference;
    // Held-out images where the data has splits (the reference's other one); a folder has
    // none, so the baseline draws from the reference images themselves, and says so.
    const bool has_splits = dataset_has_splits(request.spec);
    request.split = !has_splits ? flags_.evaluation.reference_split
                    : flags_.evaluation.reference_split == "test" ? "train"
                                                                  : "test";
    request.channels = evaluation_->image_channels();
    const Dataset data = load_dataset(request);
    const int64_t n = std::min(flags_.num_samples, data.size());
    torch::Generator generator = at::detail::createCPUGenerator(flags_.seed);
    const torch::Tensor rows = torch::randperm(data.size(), generator).slice(0, 0, n);
    if (class_names_.empty() && static_cast<int64_t>(data.class_names.size()) == num_classes_) {
      class_names_ = data.class_names;
    }
    real_ = evaluation_->score(data.images.index_select(0, rows), data.labels.index_select(0, rows));
    real_name_ =
        has_splits ? "real " + request.split + " images" : "real images (of the reference itself)";
  }

  void run_settings() {
    double total = 0, done = 0;
    for (const Setting& setting : settings_) total += cost(setting);
    const bool speaks = communicator_.is_main();
    std::optional<ProgressBar> bar;
    if (speaks) bar.emplace("sweep");
    for (const Setting& setting : settings_) {
      const std::string dir = flags_.out_dir + "/settings/" + setting.id();
      const std::string scores_path = dir + "/scores.json";
      // Rank 0's files decide; the others follow.
      const auto earlier = speaks ? read_finished(scores_path, setting) : std::nullopt;
      if (!communicator_.any(speaks && !earlier, "agreeing on the settings to redo")) {
        if (speaks) {
          results_.push_back(*earlier);
          bar->print_line("sweep: " + setting.id() + " already done, skipped");
        }
        done += cost(setting);
        continue;
      }
      if (speaks) fs::create_directories(dir);
      const auto started = std::chrono::steady_clock::now();
      const GenerationConfig config = config_for(setting);
      std::shared_ptr<Denoiser> denoiser = model_.denoiser;
      if (setting.method == Method::classifier && denoiser->num_classes() > 0) {
        denoiser = std::make_shared<NullClassDenoiser>(denoiser);
      }
      const std::shared_ptr<Classifier> classifier = config.classifier_scale != 0.0 ? classifier_ : nullptr;
      const double weight = cost(setting);
      // Unguided samples of the unconditional model ignore the class; it is still "requested",
      // so their class accuracy is the chance baseline.
      const torch::Tensor requested = labels();
      const bool uses_labels = denoiser->num_classes() > 0 || classifier != nullptr;
      const GenerationResult result = generate_across(
          communicator_, {denoiser, classifier, nullptr}, config, uses_labels ? requested : torch::Tensor(), {},
          [&](int64_t step, int64_t steps) {
            if (bar) bar->update(static_cast<int64_t>(1000.0 * (done + weight * step / steps) / total), 1000, setting.id());
          });
      done += weight;
      const torch::Tensor pixels = images_to_uint8_nhwc(result.samples);
      if (speaks) {
        write_sample_batch_npz(dir + "/samples.npz", pixels, requested);
        ImageGridOptions grid;
        grid.nrow = std::min(flags_.grid_columns, std::max<int64_t>(1, flags_.num_samples / num_classes_));
        grid.scale = grid_scale(result.samples);
        // Row c: the first samples that asked for class c.
        const ClassRows rows = arrange_by_class(result.samples, requested, class_labels(), grid.nrow, 1);
        grid.row_labels = rows.row_labels;
        write_png_grid(dir + "/grid.png", rows.images, grid);
      }
      // Scored as saved: the 8-bit images of the .npz.
      SettingResult finished{setting, evaluation_->score(uint8_nhwc_to_images(pixels), requested), 0.0,
                             result.model_evaluations};
      finished.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      if (!speaks) continue;
      nlohmann::json json = {{"setting", setting.to_json()}, {"scores", finished.scores.to_json()},
                             {"seconds", finished.seconds}, {"model_evaluations", finished.model_evaluations}};
      write_file_atomically(scores_path, json.dump(2) + "\n");
      bar->print_line("sweep: " + setting.id() + ": FID " + format_number(finished.scores.fid, "%.2f") + ", class accuracy " +
                     format_number(finished.scores.class_accuracy, "%.3f") + ", near-black pixels " +
                     format_number(finished.scores.near_black_fraction, "%.3f") + ", " +
                     format_number(finished.seconds, "%.0f") + " s");
      results_.push_back(finished);
    }
  }

  static std::optional<SettingResult> read_finished(const std::string& path, const Setting& setting) {
    if (!fs::exists(path)) return std::nullopt;
    try {
      std::ifstream in(path);
      const nlohmann::json json = nlohmann::json::parse(in);
      if (json.at("setting") != setting.to_json()) return std::nullopt;
      return SettingResult{setting, SampleScores::from_json(json.at("scores")), json.value("seconds", 0.0),
                           json.at("model_evaluations").get<int64_t>()};
    } catch (const std::exception&) {
      return std::nullopt;  // a damaged file: redo the setting
    }
  }

  void write_tables() const {
    std::ostringstream csv;
    csv << "method,strength,steps,num_samples,fid,inception_score,inception_score_std,precision,recall,density,"
           "coverage,class_accuracy,sampler,model_evaluations,near_black_fraction,seconds\n";
    nlohmann::json json = {{"request", sweep_request(flags_)}, {"feature_space", evaluation_->feature_space()},
                           {"reference", evaluation_->reference().description}, {"guidiff_version", GUIDIFF_VERSION},
                           {"seconds", seconds_}, {"settings", nlohmann::json::array()}};
    for (const SettingResult& r : results_) {
      const SampleScores& s = r.scores;
      csv << method_name(r.setting.method) << ',' << r.setting.strength << ',' << r.setting.steps << ',' << s.count
          << ',' << format_number(s.fid, "%.6g") << ',' << format_number(s.inception_score, "%.6g") << ','
          << format_number(s.inception_score_std, "%.6g") << ',' << format_number(s.precision, "%.6g") << ','
          << format_number(s.recall, "%.6g") << ',' << format_number(s.density, "%.6g") << ','
          << format_number(s.coverage, "%.6g") << ',' << format_number(s.class_accuracy, "%.6g") << ','
          << to_string(r.setting.sampler) << ',' << r.model_evaluations << ',' << format_number(s.near_black_fraction, "%.6g")
          << ',' << format_number(r.seconds, "%.2f") << '\n';
      json["settings"].push_back({{"setting", r.setting.to_json()}, {"scores", s.to_json()}, {"seconds", r.seconds},
                                  {"model_evaluations", r.model_evaluations}});
    }
    if (!flags_.no_real_baseline) json["real_baseline"] = {{"name", real_name_}, {"scores", real_.to_json()}};
    write_file_atomically(flags_.out_dir + "/results.csv", csv.str());
    write_file_atomically(flags_.out_dir + "/results.json", json.dump(2) + "\n");
  }

  // "dpmpp-2m, " when the sweep has several samplers, else "".
  std::string sampler_prefix(SamplerKind sampler) const {
    return samplers_.size() > 1 ? to_string(sampler) + ", " : "";
  }

  static bool any_finite_point(const LineSeries& line) {
    for (size_t i = 0; i < line.x.size(); ++i) {
      if (std::isfinite(line.x[i]) && std::isfinite(line.y[i])) return true;
    }
    return false;
  }

  // One series per (sampler, method, steps) over strength, with the given metrics as x and y.
  std::vector<LineSeries> series_by_method(double SampleScores::*x, double SampleScores::*y, bool x_is_strength) const {
    std::vector<LineSeries> series;
    for (const SamplerKind sampler : samplers_) {
      for (Method method : kMethods) {
        for (int64_t steps : steps_) {
          LineSeries line;
          line.title = sampler_prefix(sampler) + method_title(method) +
                       (is_classifier_guidance(method) ? " (s)" : " (w)") +
                       (steps_.size() > 1 ? ", " + std::to_string(steps) + " steps" : "");
          for (const SettingResult& r : results_) {
            if (r.setting.sampler != sampler || r.setting.method != method || r.setting.steps != steps) continue;
            line.x.push_back(x_is_strength ? r.setting.strength : r.scores.*x);
            line.y.push_back(r.scores.*y);
            line.point_labels.push_back(r.setting.label());
          }
          if (any_finite_point(line)) series.push_back(line);
        }
      }
    }
    return series;
  }

  // FID against steps (or model evaluations): one series per (sampler, strength) of `method`.
  std::vector<LineSeries> fid_series(Method method, bool x_is_evaluations) const {
    std::vector<LineSeries> series;
    for (const SettingResult& anchor : results_) {
      if (anchor.setting.method != method || anchor.setting.steps != steps_.front()) continue;
      LineSeries line;
      line.title = sampler_prefix(anchor.setting.sampler) + method_name(method) + " " + anchor.setting.label();
      for (const SettingResult& r : results_) {
        if (r.setting.sampler == anchor.setting.sampler && r.setting.method == method &&
            r.setting.strength == anchor.setting.strength) {
          line.x.push_back(x_is_evaluations ? static_cast<double>(r.model_evaluations) : static_cast<double>(r.setting.steps));
          line.y.push_back(r.scores.fid);
          line.point_labels.push_back(std::to_string(r.setting.steps));
        }
      }
      if (any_finite_point(line)) series.push_back(line);
    }
    return series;
  }

  void plot(const std::string& name, const std::vector<LineSeries>& series, const LinePlotOptions& options) {
    if (series.empty()) return;
    write_line_plot(flags_.out_dir + "/plots/" + name, series, options);
    plots_.push_back({name, options.title});
  }

  void write_plots() {
    LinePlotOptions options;
    options.title = "FID against Inception Score as guidance grows";
    options.x_label = "Inception Score (evaluator softmax; higher: more confident, class-distinct)";
    options.y_label = "FID (lower: closer to the data)";
    plot("fid_vs_is.png", series_by_method(&SampleScores::inception_score, &SampleScores::fid, false), options);
    options.title = "Precision (fidelity) against recall (diversity)";
    options.x_label = "recall";
    options.y_label = "precision";
    plot("precision_recall.png", series_by_method(&SampleScores::recall, &SampleScores::precision, false), options);
    options.title = "Class accuracy against guidance strength";
    options.x_label = "guidance strength (s for classifier guidance, w for classifier-free)";
    options.y_label = "class accuracy (evaluator agrees with the requested class)";
    plot("accuracy_vs_strength.png",
         series_by_method(nullptr, &SampleScores::class_accuracy, true), options);
    if (steps_.size() > 1) {
      std::vector<LineSeries> series;
      for (Method method : kMethods) {
        for (const LineSeries& line : fid_series(method, false)) series.push_back(line);
      }
      options.title = "FID against sampling steps";
      options.x_label = "sampling steps";
      options.y_label = "FID";
      options.log_x = true;
      plot("fid_vs_steps.png", series, options);
    }
    if (steps_.size() > 1 || samplers_.size() > 1) {
      // The few-step figure: quality against cost, one curve per sampler (points labelled by steps).
      for (Method method : kMethods) {
        options.title = "FID against model evaluations, " + method_title(method);
        options.x_label = "model evaluations per sample (NFE)";
        options.y_label = "FID";
        options.log_x = true;
        plot(std::string("fid_vs_nfe_") + method_name(method) + ".png", fid_series(method, true), options);
      }
    }
  }

  void write_strength_grids() {
    for (const SamplerKind sampler : samplers_) {
      for (Method method : kMethods) {
        for (int64_t steps : steps_) {
          write_strength_grid(sampler, method, steps);
        }
      }
    }
  }

  // rows = classes, columns = strength, for one sampler, method and step count.
  void write_strength_grid(SamplerKind sampler, Method method, int64_t steps) {
    std::vector<torch::Tensor> columns;
    std::vector<std::string> labels;
    for (const SettingResult& r : results_) {
      if (r.setting.sampler != sampler || r.setting.method != method || r.setting.steps != steps) continue;
      const SampleBatchNpz batch =
          read_sample_batch_npz(flags_.out_dir + "/settings/" + r.setting.id() + "/samples.npz");
      // The first sample of each class: the same x_T in every setting.
      columns.push_back(uint8_nhwc_to_images(batch.images.slice(0, 0, std::min(num_classes_, batch.images.size(0)))));
      labels.push_back(r.setting.label());
    }
    if (columns.empty()) return;
    // rows = classes, columns = strength.
    const torch::Tensor grid = torch::stack(columns, 1).flatten(0, 1);
    const std::string name = (samplers_.size() > 1 ? to_string(sampler) + "_" : "") + method_name(method) + "_steps" +
                             std::to_string(steps) + ".png";
    ImageGridOptions options;
    options.nrow = static_cast<int64_t>(columns.size());
    options.scale = grid_scale(grid);
    options.row_labels = class_labels();
    options.row_labels.resize(static_cast<size_t>(columns.front().size(0)));  // N < K: the classes asked for
    options.column_labels = labels;
    write_png_grid(flags_.out_dir + "/grids/" + name, grid, options);
    std::string title = method_title(method);
    title[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(title[0])));
    std::string caption = sampler_prefix(sampler) + title + ", " + std::to_string(steps) + " steps: rows are classes 0.." +
                          std::to_string(num_classes_ - 1) + ", columns ";
    for (size_t i = 0; i < labels.size(); ++i) caption += (i ? ", " : "") + labels[i];
    grids_.push_back({name, caption});
  }

  std::vector<std::pair<std::string, SampleScores>> table_rows() const {
    std::vector<std::pair<std::string, SampleScores>> rows;
    if (!flags_.no_real_baseline) rows.push_back({real_name_, real_});
    for (const SettingResult& r : results_) {
      rows.push_back({sampler_prefix(r.setting.sampler) + method_name(r.setting.method) + " " + r.setting.label() + ", " +
                          std::to_string(r.setting.steps) + " steps (" + std::to_string(r.model_evaluations) + " NFE)",
                      r.scores});
    }
    return rows;
  }

  std::string machine() const {
    utsname name{};
    ::uname(&name);
    return std::string(name.machine) + ", " + std::to_string(torch::get_num_threads()) + " threads, libtorch " +
           TORCH_VERSION + ", guidiff " + GUIDIFF_VERSION;
  }

  void write_report() const {
    const auto rows = table_rows();
    const std::string caveat =
        "All metrics are computed in the feature space of " + evaluation_->feature_space() + " against " +
        flags_.evaluation.reference + " (" + flags_.evaluation.reference_split + " split, " +
        std::to_string(evaluation_->reference().statistics.count) +
        " images). They compare settings of this sweep with each other; they are not comparable to "
        "Inception-based FID/IS in papers. With " + std::to_string(flags_.num_samples) +
        " samples per setting FID is biased upward; the real-data row shows the floor at this sample count.";
    const nlohmann::json request = sweep_request(flags_);
    std::string settings_line = "model `" + flags_.model + "`" + (flags_.classifier.empty() ? "" : ", classifier `" + flags_.classifier + "`") +
                                ", sampler " + request.at("sampler").get<std::string>() +
                                (request.contains("sigmas") ? " (sigmas " + flags_.sigmas + ")" : "") + ", " +
                                std::to_string(flags_.num_samples) +
                                " samples per setting (class k mod " + std::to_string(num_classes_) + "), seed " +
                                std::to_string(flags_.seed);
    char timing[160];
    std::snprintf(timing, sizeof timing, "%.0f s for the whole sweep on %s.", seconds_, machine().c_str());

    std::ostringstream md;
    md << "# guidiff guidance sweep\n\n" << settings_line << ".\n\n" << timing << "\n\n> " << caveat << "\n\n";
    md << "| setting | N | FID | IS | precision | recall | density | coverage | class accuracy | near-black pixels | seconds |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const SampleScores& s = rows[i].second;
      const bool real_row = !flags_.no_real_baseline && i == 0;
      const double seconds = real_row ? NAN : results_[i - (flags_.no_real_baseline ? 0 : 1)].seconds;
      md << "| " << rows[i].first << " | " << s.count << " | " << format_number(s.fid, "%.2f") << " | "
         << format_number(s.inception_score, "%.3f") << " | " << format_number(s.precision, "%.3f") << " | "
         << format_number(s.recall, "%.3f") << " | " << format_number(s.density, "%.3f") << " | "
         << format_number(s.coverage, "%.3f") << " | " << format_number(s.class_accuracy, "%.3f") << " | "
         << format_number(s.near_black_fraction, "%.3f") << " | " << format_number(seconds, "%.0f") << " |\n";
    }
    md << "\n## Trade-off plots\n\n";
    for (const auto& [file, title] : plots_) md << "![" << title << "](plots/" << file << ")\n\n";
    md << "## Samples\n\n";
    for (const auto& [file, caption] : grids_) md << caption << ":\n\n![" << caption << "](grids/" << file << ")\n\n";
    md << "Every setting's samples (`samples.npz`), grid (rows = classes) and scores are in `settings/<id>/`; "
          "all scores in `results.csv` and `results.json`.\n";
    write_file_atomically(flags_.out_dir + "/report.md", md.str());

    std::ostringstream html;
    html << "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>guidiff guidance sweep</title>\n"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
            "img{max-width:100%;image-rendering:pixelated}blockquote{color:#555}</style></head><body>\n"
         << "<h1>guidiff guidance sweep</h1>\n<p>" << settings_line << ".</p>\n<p>" << timing << "</p>\n<blockquote>"
         << caveat << "</blockquote>\n<table><tr><th>setting</th><th>N</th><th>FID</th><th>IS</th><th>precision</th>"
                      "<th>recall</th><th>density</th><th>coverage</th><th>class accuracy</th><th>near-black pixels</th>"
                      "</tr>\n";
    for (const auto& [name, s] : rows) {
      html << "<tr><td>" << name << "</td><td>" << s.count << "</td><td>" << format_number(s.fid, "%.2f") << "</td><td>"
           << format_number(s.inception_score, "%.3f") << "</td><td>" << format_number(s.precision, "%.3f")
           << "</td><td>" << format_number(s.recall, "%.3f") << "</td><td>" << format_number(s.density, "%.3f")
           << "</td><td>" << format_number(s.coverage, "%.3f") << "</td><td>"
           << format_number(s.class_accuracy, "%.3f") << "</td><td>" << format_number(s.near_black_fraction, "%.3f")
           << "</td></tr>\n";
    }
    html << "</table>\n<h2>Trade-off plots</h2>\n";
    for (const auto& [file, title] : plots_) html << "<p><img src=\"plots/" << file << "\" alt=\"" << title << "\"></p>\n";
    html << "<h2>Samples</h2>\n";
    for (const auto& [file, caption] : grids_) {
      // Grids of 28-pixel images are small: drawn 3x, crisp.
      html << "<p>" << caption << "</p><p><img src=\"grids/" << file << "\" style=\"zoom:3\"></p>\n";
    }
    html << "</body></html>\n";
    write_file_atomically(flags_.out_dir + "/report.html", html.str());
    std::printf("%s", scores_table(rows).c_str());
  }

  const SweepFlags& flags_;
  torch::Device device_;
  Communicator& communicator_;
  Model model_;
  std::shared_ptr<Classifier> classifier_;
  int64_t num_classes_ = 0;
  std::unique_ptr<Evaluation> evaluation_;
  std::vector<Setting> settings_;
  std::vector<SamplerKind> samplers_;
  std::vector<int64_t> steps_;
  std::vector<SettingResult> results_;
  SampleScores real_;
  std::string real_name_;
  std::vector<std::string> class_names_;  // the model's, or the reference data's (class_labels)
  std::vector<std::pair<std::string, std::string>> plots_, grids_;
  double seconds_ = 0;
};

}  // namespace

Command add_sweep_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command = app.add_subcommand("sweep", "sample and score a model over guidance strengths and steps; plots and a report");
  auto flags = std::make_shared<SweepFlags>();
  SweepFlags& f = *flags;
  command->add_option("--model", f.model,
                      "denoiser checkpoint (conditional for CFG and --conditional-classifier-scales; its null class "
                      "for --classifier-scales)")
      ->required();
  command->add_option("--classifier", f.classifier, "noise-aware classifier checkpoint (for --classifier-scales)");
  command->add_option("--classifier-scales", f.classifier_scales,
                      "classifier scales s, guiding the model's null class: list 0,1,3 or range start:stop:step");
  command->add_option("--conditional-classifier-scales", f.conditional_classifier_scales,
                      "classifier scales s, guiding the conditional model given the requested class (Dhariwal & "
                      "Nichol's conditional + guidance)");
  command->add_option("--cfg-scales", f.cfg_scales, "CFG weights w: list 0,1,3 or range start:stop:step");
  command->add_option("--steps", f.steps, "sampling steps, a list (e.g. 10,25,50)")->capture_default_str();
  CLI::Option* sampler = command->add_option("--sampler", f.sampler, "the sampler (any of guidiff sample's)")->capture_default_str();
  command->add_option("--samplers", f.samplers, "several samplers, a list (e.g. ddim,dpmpp-2m,unipc): one curve each")
      ->excludes(sampler);
  f.sigmas_option = command
                        ->add_option("--sigmas", f.sigmas,
                                     "sigma-space samplers' spacing: karras | timesteps | log-snr")
                        ->capture_default_str();
  command->add_option("--eta", f.eta, "DDIM eta")->capture_default_str();
  command->add_option("--num-samples", f.num_samples, "samples per setting (sample k asks for class k mod K)")->capture_default_str();
  command->add_option("--batch-size", f.batch_size)->capture_default_str();
  command->add_option("--seed", f.seed, "the same seed, so the same x_T, for every setting")->capture_default_str();
  command->add_option("--grid-columns", f.grid_columns, "samples per class in each setting's grid")->capture_default_str();
  command->add_flag("--no-real-baseline", f.no_real_baseline, "skip scoring N real images (the metrics' floor at this N)");
  command->add_option("--out-dir", f.out_dir, "where the sweep writes (rerun with the same flags to resume)")->required();
  add_evaluation_flags(*command, f.evaluation);
  return {command, [flags, &global] { Sweep(*flags, global).run(); }};
}

}  // namespace guidiff::cli
