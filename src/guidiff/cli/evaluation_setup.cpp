// Evaluation flags and the scorer shared by `eval` and `sweep` (see evaluation_setup.hpp).
#include "guidiff/cli/evaluation_setup.hpp"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "guidiff/core/errors.hpp"
#include "guidiff/eval/fid_inception_network.hpp"

namespace guidiff::cli {
namespace {

// Refuses, before minutes of reference statistics, a cache path that could not be written:
// a directory where a file goes, a file where a directory goes, or a regular file among its
// parent directories. Missing directories are fine: the cache creates them.
void check_cache_path(const std::string& flag, const std::string& path, bool is_directory) {
  if (path.empty()) return;
  namespace fs = std::filesystem;
  std::error_code ignored;
  if (fs::exists(path, ignored) && fs::is_directory(path, ignored) != is_directory) {
    throw FileError(flag + " '" + path + "' is " + (is_directory ? "not a directory" : "a directory, not a file name"));
  }
  for (fs::path parent = fs::path(path).parent_path(); !parent.empty(); parent = parent.parent_path()) {
    if (fs::exists(parent, ignored)) {
      if (!fs::is_directory(parent, ignored)) {
        throw FileError(flag + " '" + path + "': '" + parent.string() + "' is not a directory");
      }
      break;
    }
    if (parent == parent.parent_path()) break;
  }
}

}  // namespace

void add_evaluation_flags(CLI::App& command, EvaluationFlags& flags) {
  flags.evaluator_option =
      command.add_option("--evaluator", flags.evaluator, "evaluator network (cnn_classifier checkpoint): features, IS, class accuracy")
          ->capture_default_str();
  command.add_option("--features", flags.features,
                     "feature network for FID/precision/recall: inception (FID Inception-v3: also sFID and IS), evaluator, or a "
                     "TorchScript extractor (forward(x) -> [N, D] or (features, logits)); default: inception when its "
                     "weights are found, else evaluator");
  command.add_option("--inception-weights", flags.inception_weights,
                     "pytorch-fid's pt_inception-2015-12-05-6726825d.pth (default $GUIDIFF_INCEPTION_WEIGHTS, else in the cache dir)");
  command.add_option("--reference", flags.reference, "reference data set (same specs as --data of train) or a guided-diffusion reference batch .npz")
      ->capture_default_str();
  command.add_option("--reference-split", flags.reference_split, "train or test")->capture_default_str();
  command.add_option("--reference-stats", flags.reference_stats, "reference statistics cache file (default: in --cache-dir)");
  command.add_option("--cache-dir", flags.cache_dir,
                     "cache directory (default $GUIDIFF_CACHE_DIR, else $XDG_CACHE_HOME/guidiff, "
                     "else ~/.cache/guidiff)");
  command.add_option("--inception-splits", flags.inception_splits, "IS splits")->capture_default_str();
}

Evaluation::Evaluation(const EvaluationFlags& flags, const torch::Device& device, Communicator& communicator)
    : flags_(flags), communicator_(communicator) {
  if (flags.inception_splits < 1) throw InputError("--inception-splits must be >= 1");
  check_cache_path("--cache-dir", flags.cache_dir, true);
  check_cache_path("--reference-stats", flags.reference_stats, false);
  options_.inception_splits = flags.inception_splits;
  // The feature network: Inception (asked for, or by default when its weights are found), the
  // evaluator, or a TorchScript file. The evaluator also gives class accuracy (and IS when the
  // feature network has no probabilities); with another feature network it is skipped when
  // the default one is not there.
  const std::string cache_directory = flags.cache_dir.empty() ? default_cache_directory() : flags.cache_dir;
  std::string inception_weights;
  if (!flags.inception_weights.empty() && !flags.features.empty() &&
      flags.features != "inception") {
    throw InputError("--inception-weights applies to the Inception features, not --features " +
                     flags.features);
  }
  if (flags.features.empty() || flags.features == "inception") {
    inception_weights = locate_fid_inception_weights(flags.inception_weights, cache_directory);
    if (inception_weights.empty() && flags.features == "inception") {
      throw FileError(missing_fid_inception_weights_message(cache_directory));
    }
  }
  const bool evaluator_features = inception_weights.empty() && (flags.features.empty() || flags.features == "evaluator");
  std::error_code ignored;
  const bool evaluator_given = flags.evaluator_option != nullptr && flags.evaluator_option->count() > 0;
  const bool evaluator_present = std::filesystem::exists(flags.evaluator, ignored) ||
                                 std::filesystem::exists(flags.evaluator + ".safetensors", ignored);
  if (evaluator_features || evaluator_given || evaluator_present) {
    if (!evaluator_present) {
      throw FileError("evaluator '" + flags.evaluator +
                      "' not found: run from the guidiff source directory, or pass --evaluator (recipes/fashion_mnist_evaluator.sh trains one)");
    }
    evaluator_ = load_evaluator_network(flags.evaluator, device);
  }
  if (!inception_weights.empty()) {
    features_ = load_fid_inception_network(inception_weights, device);
    feature_space_ = features_->description();
    reads_colour_ = true;
    // guided-diffusion's evaluator: every sample against every reference image.
    options_.neighbours_from_whole_reference = true;
  } else if (!evaluator_features) {
    features_ = load_torchscript_feature_network(flags.features, device);
    feature_space_ = "TorchScript features '" + flags.features + "'";
  } else {
    feature_space_ = "evaluator '" + flags.evaluator + "'";
  }
}

const ReferenceSet& Evaluation::reference() {
  if (!reference_) {
    DatasetRequest data;
    data.spec = flags_.reference;
    data.split = flags_.reference_split;
    data.flag = "--reference";
    data.split_flag = "--reference-split";
    data.channels = image_channels();
    FeatureNetwork& network = features_ ? *features_ : *evaluator_;
    const bool speaks = communicator_.is_main();
    reference_ = reference_set(
        network, data, flags_.reference_stats, flags_.cache_dir.empty() ? default_cache_directory() : flags_.cache_dir,
        [speaks](const std::string& line) {
          if (speaks) std::fprintf(stderr, "%s\n", line.c_str());
        },
        communicator_);
  }
  return *reference_;
}

void Evaluation::check_images(const torch::Tensor& images) {
  // One image through the network checks the shape it takes and its output, before minutes
  // of reference statistics.
  FeatureNetwork& network = features_ ? *features_ : *evaluator_;
  run_feature_network(network, images.defined() && images.dim() == 4 ? images.slice(0, 0, 1) : images);
}

void Evaluation::check_classes(const torch::Tensor& images, int64_t classes) {
  if (!evaluator_ || classes < 1 || !evaluator_->probabilities_are_data_classes()) return;
  const torch::Tensor probabilities = run_feature_network(*evaluator_, images.slice(0, 0, 1)).probabilities;
  if (probabilities.defined() && probabilities.size(1) < classes) {
    throw InputError("the evaluator " + evaluator_->description() + " tells " + std::to_string(probabilities.size(1)) +
                     " classes apart, so samples of the model's " + std::to_string(classes) +
                     " classes cannot be scored for class accuracy (give --evaluator a network of the model's classes)");
  }
}

SampleScores Evaluation::score(const torch::Tensor& images, const torch::Tensor& labels) {
  check_images(images);
  const ReferenceSet& set = reference();
  FeatureNetwork& network = features_ ? *features_ : *evaluator_;
  return score_images(network, evaluator_.get(), images, labels, set, options_, communicator_);
}

int64_t Evaluation::image_channels() const {
  if (reads_colour_) return 3;  // Inception takes RGB; grey data sets stay grey (and are replicated)
  for (const FeatureNetwork* network : {features_.get(), evaluator_.get()}) {
    if (network != nullptr && !network->image_shape().empty()) return network->image_shape()[0];
  }
  return 3;
}

std::string scores_table(const std::vector<std::pair<std::string, SampleScores>>& rows) {
  size_t name_width = 7;
  for (const auto& row : rows) name_width = std::max(name_width, row.first.size());
  const auto cell = [](double value, const char* format) {
    if (!std::isfinite(value)) return std::string("-");
    char text[32];
    std::snprintf(text, sizeof text, format, value);
    return std::string(text);
  };
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-*s %6s %8s %8s %7s %7s %7s %7s %7s %9s %6s\n", static_cast<int>(name_width),
                "setting", "N", "FID", "sFID", "IS", "prec", "recall", "density", "cover", "class_acc", "black");
  out += line;
  for (const auto& [name, s] : rows) {
    std::snprintf(line, sizeof line, "%-*s %6lld %8s %8s %7s %7s %7s %7s %7s %9s %6s\n", static_cast<int>(name_width),
                  name.c_str(), static_cast<long long>(s.count), cell(s.fid, "%.2f").c_str(), cell(s.sfid, "%.2f").c_str(),
                  cell(s.inception_score, "%.3f").c_str(), cell(s.precision, "%.3f").c_str(),
                  cell(s.recall, "%.3f").c_str(), cell(s.density, "%.3f").c_str(), cell(s.coverage, "%.3f").c_str(),
                  cell(s.class_accuracy, "%.3f").c_str(), cell(s.near_black_fraction, "%.3f").c_str());
    out += line;
  }
  return out;
}

}  // namespace guidiff::cli
