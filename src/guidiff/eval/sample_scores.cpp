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
#include "guidiff/eval/reference_batch.hpp"
#include "guidiff/io/image.hpp"

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
          {"sfid", number_or_null(sfid)},
          {"inception_score", number_or_null(inception_score)},
          {"inception_score_std", number_or_null(inception_score_std)},
          {"precision", number_or_null(precision)},
          {"recall", number_or_null(recall)},
          {"density", number_or_null(density)},
          {"coverage", number_or_null(coverage)},
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
  scores.sfid = json.contains("sfid") ? number(json.at("sfid")) : NAN;
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
  // Probabilities over other classes (Inception's ImageNet classes) serve IS only.
  const bool data_classes = features.probabilities_are_data_classes();
  torch::Tensor probabilities = data_classes ? output.probabilities : torch::Tensor();
  const torch::Tensor score_probabilities = data_classes ? torch::Tensor() : output.probabilities;
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
      const std::string json = score_features(output.features, probabilities, requested_labels, reference, options,
                                              score_probabilities, output.spatial_moments)
                                   .to_json()
                                   .dump();
      text = torch::from_blob(const_cast<char*>(json.data()), {static_cast<int64_t>(json.size())}, torch::kUInt8).clone();
    }
    text = communicator.all_gather_rows(text, "sharing the scores").contiguous();
    const auto* bytes = reinterpret_cast<const char*>(text.data_ptr<uint8_t>());
    scores = SampleScores::from_json(nlohmann::json::parse(std::string(bytes, static_cast<size_t>(text.numel()))));
  } else {
    scores = score_features(output.features, probabilities, requested_labels, reference, options, score_probabilities,
                            output.spatial_moments);
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
                            const ScoreOptions& options, const torch::Tensor& score_probabilities,
                            const FeatureMoments& spatial) {
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
  if (spatial.count() >= 2 && reference.spatial_statistics.mean.defined()) {
    scores.sfid = frechet_distance(spatial.statistics(), reference.spatial_statistics);
  }
  if (stats.features.defined()) {
    const int64_t used = options.neighbours_from_whole_reference ? stats.features.size(0)
                                                                 : std::min(scores.count, stats.features.size(0));
    const torch::Tensor neighbours = stats.features.slice(0, 0, used);
    scores.neighbour_count = neighbours.size(0);
    // The real subset has as many images as there are samples: too few samples would be
    // reported as too small a real set.
    const int64_t k = std::max(options.precision_recall_k, options.density_coverage_k);
    if (scores.neighbour_count <= k) {
      throw InputError("precision/recall and density/coverage use k = " + std::to_string(k) +
                       " nearest neighbours, so they need more than " + std::to_string(k) +
                       " samples and reference images; got " + std::to_string(scores.count) +
                       " samples and " + std::to_string(stats.features.size(0)) +
                       " reference images");
    }
    const NeighbourMetrics neighbour =
        neighbour_metrics(neighbours, features, options.precision_recall_k, options.density_coverage_k);
    scores.precision = neighbour.precision_recall.precision;
    scores.recall = neighbour.precision_recall.recall;
    scores.density = neighbour.density_coverage.density;
    scores.coverage = neighbour.density_coverage.coverage;
  } else {
    scores.precision = scores.recall = scores.density = scores.coverage = NAN;
  }
  const torch::Tensor& is_probabilities = score_probabilities.defined() ? score_probabilities : probabilities;
  if (is_probabilities.defined()) {
    scores.inception_score = inception_score(is_probabilities, std::min(options.inception_splits, scores.count),
                                             &scores.inception_score_std);
  }
  if (probabilities.defined()) {
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

namespace {

struct ImagesToReference {
  std::string name;      // for messages
  torch::Tensor images;  // float [N, C, H, W] in [-1, 1]
};

// The reference features of the images `load` gives, under `network`: loaded from the cache
// file when it was written for `wanted` (its key), else computed and cached. File name stem
// `stem` in `cache_directory` unless `cache_file` is given.
ReferenceSet cached_reference(FeatureNetwork& network, const nlohmann::json& wanted, const std::string& stem,
                              const std::function<ImagesToReference()>& load, const std::string& cache_file,
                              const std::string& cache_directory, const std::function<void(const std::string&)>& log,
                              Communicator& communicator) {
  const auto say = [&](const std::string& line) {
    if (log) log(line);
  };
  std::string path = cache_file;
  if (path.empty()) {
    std::ostringstream name;
    name << file_name_part(stem) << '-' << std::hex << std::hash<std::string>{}(wanted.dump()) << ".stats";
    path = (std::filesystem::path(cache_directory) / name.str()).string();
  }
  std::error_code ignored;
  std::optional<ReferenceSet> cached;
  if (std::filesystem::exists(path, ignored)) {
    try {
      nlohmann::json found;
      FeatureStatistics spatial;
      FeatureStatistics statistics = load_feature_statistics(path, &found, &spatial);
      nlohmann::json found_key = found;
      found_key.erase("count");
      found_key.erase("near_black_fraction");
      if (found_key != wanted || !statistics.features.defined()) {
        say("reference statistics '" + path + "' are for " + found.dump() + "; recomputing them");
      } else if (!found.contains("near_black_fraction")) {
        say("reference statistics '" + path + "' predate the near-black fraction; recomputing them");
      } else {
        cached = ReferenceSet{std::move(statistics), std::move(spatial), found};
      }
    } catch (const Error& error) {
      // A file the user named may be anything (a dataset, a report): never overwrite what is not
      // ours. Our own writes are atomic, so a stats file we wrote is never half-written.
      if (!cache_file.empty()) {
        throw InputError("reference statistics file '" + path +
                         "' exists and is not usable statistics (" + error.what() +
                         "); not overwriting it: delete it or name another file");
      }
      say(std::string("reference statistics cache unusable (") + error.what() + "); recomputing it");
    }
  }
  // Every rank takes the cache, or none does (and all compute the features together).
  if (!communicator.any(!cached, "checking the reference statistics cache")) return std::move(*cached);
  const ImagesToReference input = load();
  say("computing reference statistics of " + input.name + " (" + std::to_string(input.images.size(0)) +
      " images) with " + network.description());
  const FeatureOutput output = run_feature_network(network, input.images, 500, communicator);
  ReferenceSet reference;
  reference.statistics = feature_statistics(output.features);
  // A seeded random order, so that any prefix is a fair subset for the neighbour metrics.
  torch::Generator generator = at::detail::createCPUGenerator(0);
  reference.statistics.features = output.features.index_select(0, torch::randperm(output.features.size(0), generator));
  if (output.spatial_moments.count() >= 2) reference.spatial_statistics = output.spatial_moments.statistics();
  reference.description = wanted;
  reference.description["count"] = reference.statistics.count;
  reference.description["near_black_fraction"] = near_black_fraction(input.images);
  if (communicator.is_main()) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ignored);
    save_feature_statistics(path, reference.statistics, reference.description,
                            reference.spatial_statistics.mean.defined() ? &reference.spatial_statistics : nullptr);
    say("reference statistics cached in '" + path + "'");
  }
  return reference;
}

}  // namespace

ReferenceSet reference_set(FeatureNetwork& network, const DatasetRequest& data, const std::string& cache_file,
                           const std::string& cache_directory, const std::function<void(const std::string&)>& log,
                           Communicator& communicator) {
  if (is_reference_batch(data.spec)) {
    return reference_batch_set(network, data.spec, cache_file, cache_directory, log, communicator);
  }
  const nlohmann::json wanted = {{"dataset", data.spec},
                                 {"split", data.split},
                                 {"image_size", data.image_size},
                                 {"channels", data.channels},
                                 {"network", network.cache_key()}};
  const auto load = [&data] {
    const Dataset dataset = load_dataset(data);
    if (!dataset.holds_images()) throw InputError("reference data '" + data.spec + "' holds no images");
    return ImagesToReference{dataset.name, dataset.images};
  };
  return cached_reference(network, wanted, data.spec + "-" + data.split, load, cache_file, cache_directory, log,
                          communicator);
}

ReferenceSet reference_batch_set(FeatureNetwork& network, const std::string& path, const std::string& cache_file,
                                 const std::string& cache_directory, const std::function<void(const std::string&)>& log,
                                 Communicator& communicator) {
  const ReferenceBatch batch = read_reference_batch(path);
  ReferenceSet reference;
  if (batch.images.defined()) {
    const nlohmann::json wanted = {{"reference_batch", file_identity(path)}, {"network", network.cache_key()}};
    const auto load = [&batch, &path] { return ImagesToReference{path, uint8_nhwc_to_images(batch.images)}; };
    reference = cached_reference(network, wanted, std::filesystem::path(path).stem().string(), load, cache_file,
                                 cache_directory, log, communicator);
  } else {
    reference.description = {{"reference_batch", path}, {"network", network.cache_key()}, {"count", 0}};
  }
  // The file's own statistics win, as in guided-diffusion's evaluator (they came from
  // TensorFlow's graph, which guidiff's features approximate; docs/evaluation.md).
  if (batch.pool_statistics.mean.defined()) {
    torch::Tensor features = reference.statistics.features;
    reference.statistics = batch.pool_statistics;
    reference.statistics.features = features;
    if (reference.statistics.count == 0 && features.defined()) reference.statistics.count = features.size(0);
  }
  if (batch.spatial_statistics.mean.defined()) reference.spatial_statistics = batch.spatial_statistics;
  if (!reference.statistics.mean.defined()) {
    throw InputError("reference batch '" + path + "' has no usable statistics");
  }
  return reference;
}

}  // namespace guidiff
