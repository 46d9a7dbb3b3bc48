// Scoring a set of images against a reference set (see sample_scores.hpp).
#include "guidiff/eval/sample_scores.hpp"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/eval/metrics.hpp"

namespace guidiff {
namespace {

nlohmann::json number_or_null(double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); }

// A file name from free text: letters, digits, '-', '_' and '.'; everything else '_'.
std::string file_name_part(const std::string& text) {
  std::string out;
  for (char c : text) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.') ? c : '_';
  return out;
}

}  // namespace

nlohmann::json SampleScores::to_json() const {
  nlohmann::json per_class = nlohmann::json::array();
  for (double value : per_class_accuracy) per_class.push_back(number_or_null(value));
  return {{"count", count},
          {"reference_count", reference_count},
          {"neighbour_count", neighbour_count},
          {"fid", number_or_null(fid)},
          {"inception_score", number_or_null(inception_score)},
          {"inception_score_std", number_or_null(inception_score_std)},
          {"precision", precision},
          {"recall", recall},
          {"density", density},
          {"coverage", coverage},
          {"class_accuracy", number_or_null(class_accuracy)},
          {"per_class_accuracy", per_class},
          {"near_black_fraction", number_or_null(near_black_fraction)},
          {"reference_near_black_fraction", number_or_null(reference_near_black_fraction)},
          {"fid_warning", fid_warning}};
}

SampleScores SampleScores::from_json(const nlohmann::json& json) {
  const auto number = [](const nlohmann::json& value) { return value.is_null() ? NAN : value.get<double>(); };
  SampleScores scores;
  scores.count = json.at("count").get<int64_t>();
  scores.reference_count = json.at("reference_count").get<int64_t>();
  scores.neighbour_count = json.at("neighbour_count").get<int64_t>();
  scores.fid = number(json.at("fid"));
  scores.inception_score = number(json.at("inception_score"));
  scores.inception_score_std = number(json.at("inception_score_std"));
  scores.precision = number(json.at("precision"));
  scores.recall = number(json.at("recall"));
  scores.density = number(json.at("density"));
  scores.coverage = number(json.at("coverage"));
  scores.class_accuracy = number(json.at("class_accuracy"));
  for (const auto& value : json.at("per_class_accuracy")) scores.per_class_accuracy.push_back(number(value));
  scores.near_black_fraction = number(json.value("near_black_fraction", nlohmann::json()));
  scores.reference_near_black_fraction = number(json.value("reference_near_black_fraction", nlohmann::json()));
  scores.fid_warning = json.at("fid_warning").get<std::string>();
  return scores;
}

SampleScores score_images(FeatureNetwork& features, FeatureNetwork* classifier, const torch::Tensor& images,
                          const torch::Tensor& requested_labels, const ReferenceSet& reference,
                          const ScoreOptions& options, Communicator& communicator) {
  if (requested_labels.defined() && (requested_labels.dim() != 1 || requested_labels.size(0) != images.size(0))) {
    throw InputError("there are " + std::to_string(images.size(0)) + " images but the labels have shape " +
                     c10::str(requested_labels.sizes()));
  }
  const FeatureOutput output = run_feature_network(features, images, 500, communicator);
  torch::Tensor probabilities = output.probabilities;
  if (!probabilities.defined() && classifier != nullptr) {
    const std::vector<int64_t> shape = classifier->image_shape();
    if (shape.empty() || shape == images.sizes().slice(1).vec()) {
      probabilities = run_feature_network(*classifier, images, 500, communicator).probabilities;
    }
  }
  SampleScores scores;
  if (communicator.distributed()) {
    // Rank 0 scores; the others receive its scores as JSON (an error on rank 0 reaches them
    // as rank 0's failure).
    torch::Tensor text;
    if (communicator.is_main()) {
      const std::string json = score_features(output.features, probabilities, requested_labels, reference, options).to_json().dump();
      text = torch::from_blob(const_cast<char*>(json.data()), {static_cast<int64_t>(json.size())}, torch::kUInt8).clone();
    }
    text = communicator.all_gather_rows(text, "sharing the scores").contiguous();
    const auto* bytes = reinterpret_cast<const char*>(text.data_ptr<uint8_t>());
    scores = SampleScores::from_json(nlohmann::json::parse(std::string(bytes, static_cast<size_t>(text.numel()))));
  } else {
    scores = score_features(output.features, probabilities, requested_labels, reference, options);
  }
  // Every rank holds all the images, so each computes the same fraction.
  scores.near_black_fraction = near_black_fraction(images);
  const auto reference_fraction = reference.description.find("near_black_fraction");
  if (reference_fraction != reference.description.end() && reference_fraction->is_number()) {
    scores.reference_near_black_fraction = reference_fraction->get<double>();
  }
  return scores;
}

SampleScores score_features(const torch::Tensor& features, const torch::Tensor& probabilities,
                            const torch::Tensor& requested_labels, const ReferenceSet& reference,
                            const ScoreOptions& options) {
  const FeatureStatistics& stats = reference.statistics;
  if (features.size(1) != stats.mean.size(0)) {
    throw InputError("the sample features have dimension " + std::to_string(features.size(1)) +
                     " but the reference statistics " + std::to_string(stats.mean.size(0)) +
                     " (computed with another feature network?)");
  }
  SampleScores scores;
  scores.count = features.size(0);
  scores.reference_count = stats.count;
  scores.fid = frechet_distance(feature_statistics(features), stats);
  scores.fid_warning = fid_sample_warning(scores.count, features.size(1));
  if (!stats.features.defined()) throw InputError("the reference statistics hold no features for precision/recall");
  const torch::Tensor neighbours = stats.features.slice(0, 0, std::min(scores.count, stats.features.size(0)));
  scores.neighbour_count = neighbours.size(0);
  const PrecisionRecall pr = precision_recall(neighbours, features, options.precision_recall_k);
  scores.precision = pr.precision;
  scores.recall = pr.recall;
  const DensityCoverage dc = density_coverage(neighbours, features, options.density_coverage_k);
  scores.density = dc.density;
  scores.coverage = dc.coverage;
  if (probabilities.defined()) {
    scores.inception_score = inception_score(probabilities, std::min(options.inception_splits, scores.count),
                                             &scores.inception_score_std);
    if (requested_labels.defined()) {
      scores.class_accuracy = class_accuracy(probabilities, requested_labels);
      const torch::Tensor per_class = per_class_accuracy(probabilities, requested_labels, probabilities.size(1));
      for (int64_t c = 0; c < per_class.size(0); ++c) scores.per_class_accuracy.push_back(per_class[c].item<double>());
    }
  }
  return scores;
}

std::string default_cache_directory() {
  if (const char* dir = std::getenv("GUIDIFF_CACHE_DIR"); dir != nullptr && *dir != '\0') return dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    return (std::filesystem::path(xdg) / "guidiff").string();
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return (std::filesystem::path(home) / ".cache" / "guidiff").string();
  }
  return ".guidiff-cache";
}

ReferenceSet reference_set(FeatureNetwork& network, const DatasetRequest& data, const std::string& cache_file,
                           const std::string& cache_directory, const std::function<void(const std::string&)>& log,
                           Communicator& communicator) {
  const auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  nlohmann::json wanted = {{"dataset", data.spec},
                           {"split", data.split},
                           {"image_size", data.image_size},
                           {"channels", data.channels},
                           {"network", network.cache_key()}};
  std::string path = cache_file;
  if (path.empty()) {
    std::ostringstream name;
    name << file_name_part(data.spec) << '-' << data.split << '-' << std::hex
         << std::hash<std::string>{}(wanted.dump()) << ".stats";
    path = (std::filesystem::path(cache_directory) / name.str()).string();
  }
  std::error_code ignored;
  std::optional<ReferenceSet> cached;
  if (std::filesystem::exists(path, ignored)) {
    try {
      nlohmann::json found;
      FeatureStatistics statistics = load_feature_statistics(path, &found);
      nlohmann::json found_key = found;
      found_key.erase("count");
      found_key.erase("near_black_fraction");
      if (found_key != wanted || !statistics.features.defined()) {
        say("reference statistics '" + path + "' are for " + found.dump() + "; recomputing them");
      } else if (!found.contains("near_black_fraction")) {
        say("reference statistics '" + path + "' predate the near-black fraction; recomputing them");
      } else {
        cached = ReferenceSet{std::move(statistics), found};
      }
    } catch (const Error& error) {
      say(std::string("reference statistics cache unusable (") + error.what() + "); recomputing it");
    }
  }
  // Every rank takes the cache, or none does (and all compute the features together).
  if (!communicator.any(!cached, "checking the reference statistics cache")) return std::move(*cached);
  const Dataset dataset = load_dataset(data);
  if (!dataset.holds_images()) throw InputError("reference data '" + data.spec + "' holds no images");
  say("computing reference statistics of " + dataset.name + " (" + std::to_string(dataset.size()) +
      " images) with " + network.description());
  const FeatureOutput output = run_feature_network(network, dataset.images, 500, communicator);
  ReferenceSet reference;
  reference.statistics = feature_statistics(output.features);
  // A seeded random order, so that any prefix is a fair subset for the neighbour metrics.
  torch::Generator generator = at::detail::createCPUGenerator(0);
  reference.statistics.features = output.features.index_select(0, torch::randperm(output.features.size(0), generator));
  reference.description = wanted;
  reference.description["count"] = reference.statistics.count;
  reference.description["near_black_fraction"] = near_black_fraction(dataset.images);
  if (communicator.is_main()) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ignored);
    save_feature_statistics(path, reference.statistics, reference.description);
    say("reference statistics cached in '" + path + "'");
  }
  return reference;
}

}  // namespace guidiff
