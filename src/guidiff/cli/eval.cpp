// `guidiff eval`: scores one set of images against reference statistics and prints a table
// (and writes JSON). The images are an .npz (guided-diffusion's layout; arr_1 = requested
// labels), a folder of PNG/JPEG files (flat, or one sub-folder per class), a labelled data
// set (--data: the evaluator's accuracy on real images), or drawn from a model with the
// same flags as `guidiff sample`.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/cli/evaluation_setup.hpp"
#include "guidiff/cli/progress.hpp"
#include "guidiff/cli/sampling_setup.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/data/image_folder.hpp"
#include "guidiff/eval/fid_inception_network.hpp"
#include "guidiff/eval/metrics.hpp"
#include "guidiff/eval/reference_batch.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/version.hpp"

namespace guidiff::cli {
namespace {

struct EvalFlags {
  std::string samples, labels, json, write_reference;
  bool calibrate_features = false;
  DatasetRequest data;
  CLI::Option *data_option = nullptr, *split_option = nullptr;
  EvaluationFlags evaluation;
  SamplingFlags sampling;
  std::vector<const CLI::Option*> sampling_options;  // act only with --model
};

struct ImagesToScore {
  std::string name;
  torch::Tensor images;  // float [N, C, H, W] in [-1, 1]
  torch::Tensor labels;  // requested (or true) classes, or undefined
  nlohmann::json source;
};

ImagesToScore read_samples(const std::string& path, int64_t channels) {
  ImagesToScore result;
  result.name = std::filesystem::path(path).filename().string();
  if (std::filesystem::is_directory(path)) {
    ImageFolderOptions options;
    options.channels = channels;
    bool has_class_folders = false;
    for (const auto& entry : std::filesystem::directory_iterator(path)) {
      if (entry.is_directory() && entry.path().filename().string().rfind('.', 0) != 0) has_class_folders = true;
    }
    if (has_class_folders) {
      const Dataset data = load_image_folder(path, options);
      result.images = data.images;
      result.labels = data.labels;
    } else {
      result.images = load_image_files(path, options);
    }
  } else {
    if (!std::filesystem::exists(path)) throw FileError("--samples '" + path + "' does not exist");
    const SampleBatchNpz batch = read_sample_batch_npz(path);
    result.images = uint8_nhwc_to_images(batch.images);
    result.labels = batch.labels;
  }
  result.source = {{"samples", path}};
  return result;
}

ImagesToScore images_to_score(const EvalFlags& flags, const GlobalOptions& global, Evaluation& evaluation) {
  const int64_t channels = evaluation.image_channels();
  const int sources = (flags.samples.empty() ? 0 : 1) + (flags.data_option->count() > 0 ? 1 : 0) +
                      (flags.sampling.model.empty() ? 0 : 1);
  if (sources != 1) throw InputError("give exactly one of --samples (npz or image folder), --data or --model");
  if (flags.data.split != "train" && flags.data.split != "test") {
    throw InputError("--split '" + flags.data.split + "': expected train or test");
  }
  if (flags.split_option->count() > 0 && flags.data_option->count() == 0) {
    throw InputError("--split applies to --data (the reference's split is --reference-split)");
  }
  if (flags.sampling.model.empty()) {
    for (const CLI::Option* option : flags.sampling_options) {
      if (option->count() > 0) {
        throw InputError(option->get_name() + " applies to sampling from --model, not to scoring --samples or --data");
      }
    }
  }
  ImagesToScore result;
  if (!flags.samples.empty()) {
    result = read_samples(flags.samples, channels);
  } else if (flags.data_option->count() > 0) {
    DatasetRequest request = flags.data;
    request.channels = channels;  // a folder is read as the evaluator's images
    const Dataset data = load_dataset(request);
    if (!data.holds_images()) throw InputError("--data '" + flags.data.spec + "' holds no images");
    result.name = data.name;
    result.images = data.images;
    result.labels = data.labels;
    result.source = {{"data", flags.data.spec}, {"split", flags.data.split}};
  } else {
    SamplingSetup setup = prepare_sampling(flags.sampling, global);
    if (setup.config.sample_shape.size() != 3) throw InputError("--model must make images (C,H,W) to be evaluated");
    // The evaluator must take these images and tell the requested classes apart: checked
    // before minutes of sampling.
    std::vector<int64_t> probe_shape = {1};
    probe_shape.insert(probe_shape.end(), setup.config.sample_shape.begin(), setup.config.sample_shape.end());
    const torch::Tensor probe = torch::zeros(probe_shape);
    evaluation.check_images(probe);
    if (setup.models.labels.defined() && setup.models.labels.numel() > 0) {
      evaluation.check_classes(probe, setup.models.labels.max().item<int64_t>() + 1);
    }
    Communicator& communicator = *global.communicator;
    std::optional<ProgressBar> progress;
    if (communicator.is_main()) progress.emplace("sampling");
    const GenerationResult generated = generate_across(
        communicator, setup.generation_models(), setup.config, setup.models.labels, setup.initial_noise,
        [&progress](int64_t done, int64_t total) {
          if (progress) progress->update(done, total);
        });
    // Scored as they would be saved: quantised to 8 bits, as an .npz round trip gives.
    result.images = uint8_nhwc_to_images(images_to_uint8_nhwc(generated.samples));
    result.labels = generated.labels;
    result.name = std::filesystem::path(flags.sampling.model).filename().string();
    result.source = sampling_manifest(flags.sampling, setup.config, generated);
  }
  if (!flags.labels.empty()) {
    if (result.labels.defined()) throw InputError("--labels: the samples already carry labels");
    const torch::Tensor labels = read_npy(flags.labels);
    // Checked before the cast to int64, which would truncate 2.7 to 2 without a word.
    if (labels.is_floating_point() || labels.is_complex() || labels.scalar_type() == torch::kBool) {
      throw InputError("--labels '" + flags.labels + "' must hold integer classes, got " +
                       c10::toString(labels.scalar_type()));
    }
    result.labels = labels.to(torch::kLong);
  }
  return result;
}

// --calibrate-features: the evaluator's feature blocks put on one scale over --data's images.
void run_calibration(const EvalFlags& flags, const GlobalOptions& global) {
  if (flags.data_option->count() == 0 || !flags.samples.empty() || !flags.sampling.model.empty()) {
    throw InputError("--calibrate-features takes the images of --data (e.g. --data fashion-mnist --split train)");
  }
  DatasetRequest request = flags.data;
  // A folder is read with the evaluator's channels, as scoring reads it (grey PNGs stay grey).
  Model evaluator = load_model(flags.evaluation.evaluator, global.torch_device());
  if (evaluator.config.contains("in_channels"))
    request.channels = evaluator.config.at("in_channels").get<int64_t>();
  const Dataset data = load_dataset(request);
  if (!data.holds_images()) throw InputError("--data '" + flags.data.spec + "' holds no images");
  const std::vector<double> scales = calibrate_evaluator_features(
      evaluator, flags.evaluation.evaluator, data.images, global.torch_device());
  std::printf("evaluator '%s': feature_scales", flags.evaluation.evaluator.c_str());
  for (const double scale : scales) std::printf(" %.6g", scale);
  std::printf(" (from %lld images of %s)\n", static_cast<long long>(data.size()), data.name.c_str());
}

// --write-reference: --data's images (and their Inception statistics when the weights are
// found) in guided-diffusion's reference-batch layout.
void run_write_reference(const EvalFlags& flags, const GlobalOptions& global) {
  if (flags.data_option->count() == 0 || !flags.samples.empty() || !flags.sampling.model.empty()) {
    throw InputError("--write-reference takes the images of --data (e.g. --data cifar10:DIR --split test)");
  }
  Communicator& communicator = *global.communicator;
  if (communicator.is_main()) check_output_path("--write-reference", flags.write_reference);
  const std::string cache =
      flags.evaluation.cache_dir.empty() ? default_cache_directory() : flags.evaluation.cache_dir;
  const std::string weights = locate_fid_inception_weights(flags.evaluation.inception_weights, cache);
  if (weights.empty() && flags.evaluation.features == "inception") {
    throw FileError(missing_fid_inception_weights_message(cache));
  }
  std::unique_ptr<FeatureNetwork> inception;
  if (!weights.empty()) inception = load_fid_inception_network(weights, global.torch_device());
  DatasetRequest request = flags.data;
  request.channels = 3;  // guided-diffusion's evaluator reads RGB
  const Dataset data = load_dataset(request);
  const ReferenceBatch batch = make_reference_batch(data, inception.get(), communicator);
  if (!communicator.is_main()) return;
  write_reference_batch(flags.write_reference, batch);
  std::printf("reference batch '%s': %lld images of %s (arr_0%s)%s\n", flags.write_reference.c_str(),
              static_cast<long long>(batch.images.size(0)), data.name.c_str(), batch.labels.defined() ? ", arr_1" : "",
              inception ? ", with FID Inception statistics mu, sigma, mu_s, sigma_s" : "; no Inception weights, so no statistics");
}

void run_eval(const EvalFlags& flags, const GlobalOptions& global) {
  // The two other modes write no scores: their flags would be dropped without a word.
  if (flags.calibrate_features || !flags.write_reference.empty()) {
    const std::string mode =
        flags.calibrate_features ? "--calibrate-features" : "--write-reference";
    if (flags.calibrate_features && !flags.write_reference.empty()) {
      throw InputError("give --calibrate-features or --write-reference, not both");
    }
    for (const auto& [flag, value] :
         {std::pair<const char*, const std::string*>{"--json", &flags.json},
          {"--labels", &flags.labels}}) {
      if (!value->empty())
        throw InputError(std::string(flag) + " does not apply to " + mode + " (it scores nothing)");
    }
  }
  if (flags.calibrate_features) return run_calibration(flags, global);
  if (!flags.write_reference.empty()) return run_write_reference(flags, global);
  Communicator& communicator = *global.communicator;
  check_distinct_outputs(
      {{"--json", flags.json}, {"--reference-stats", flags.evaluation.reference_stats}},
      {{"--samples", flags.samples}, {"--labels", flags.labels}});
  if (!flags.json.empty() && communicator.is_main()) check_output_path("--json", flags.json);
  Evaluation evaluation(flags.evaluation, global.torch_device(), communicator);
  const ImagesToScore input = images_to_score(flags, global, evaluation);
  evaluation.check_images(input.images);
  // In a data-parallel run every rank computes features of its share; rank 0 reports.
  const SampleScores scores = evaluation.score(input.images, input.labels);
  if (!communicator.is_main()) return;
  if (!scores.fid_warning.empty()) std::fprintf(stderr, "guidiff: warning: %s\n", scores.fid_warning.c_str());
  std::printf("%s", scores_table({{input.name, scores}}).c_str());
  std::printf("feature space: %s; reference: %s (%s split, %lld images)\n", evaluation.feature_space().c_str(),
              flags.evaluation.reference.c_str(), flags.evaluation.reference_split.c_str(),
              static_cast<long long>(scores.reference_count));
  if (std::isfinite(scores.reference_near_black_fraction)) {
    std::printf("black: the fraction of near-black pixels (8-bit level <= %lld), %.3f in the reference data\n",
                static_cast<long long>(kNearBlackLevel), scores.reference_near_black_fraction);
  }
  if (!flags.json.empty()) {
    nlohmann::json json = scores.to_json();
    json["source"] = input.source;
    json["feature_space"] = evaluation.feature_space();
    json["reference"] = evaluation.reference().description;
    json["guidiff_version"] = GUIDIFF_VERSION;
    write_file_atomically(flags.json, json.dump(2) + "\n");
  }
}

}  // namespace

Command add_eval_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command = app.add_subcommand("eval", "score images (npz, folder, data set or a model's samples): FID, IS, precision/recall, class accuracy");
  auto flags = std::make_shared<EvalFlags>();
  EvalFlags& f = *flags;
  command->add_option("--samples", f.samples, "an .npz (arr_0 uint8 NHWC, arr_1 labels) or a folder of PNG/JPEG images");
  command->add_option("--labels", f.labels, "requested classes of the --samples images, int .npy [N] (for class accuracy)");
  f.data_option = command->add_option("--data", f.data.spec, "score a labelled data set instead (fashion-mnist, folder:DIR, ...)");
  f.split_option = command->add_option("--split", f.data.split, "--data split: train or test")
                       ->capture_default_str();
  command->add_option("--json", f.json, "write the scores as JSON here");
  command->add_option("--write-reference", f.write_reference,
                      "instead of scoring, write --data's images as a guided-diffusion reference batch .npz (arr_0, arr_1, "
                      "and mu/sigma/mu_s/sigma_s when the Inception weights are found)");
  command->add_flag("--calibrate-features", f.calibrate_features,
                    "instead of scoring, put the --evaluator's feature stages on one scale over the --data images (rewrites its .json)");
  add_evaluation_flags(*command, f.evaluation);
  const size_t before_sampling = command->get_options().size();
  add_sampling_flags(*command, f.sampling);
  const std::vector<CLI::Option*> options = command->get_options();
  f.sampling_options.assign(options.begin() + static_cast<std::ptrdiff_t>(before_sampling), options.end());
  return {command, [flags, &global] { run_eval(*flags, global); }};
}

}  // namespace guidiff::cli
