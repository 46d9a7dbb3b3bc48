// Every metric of a set of generated images at once, against a reference data set: FID, IS,
// precision/recall, density/coverage and class accuracy, in the feature space of a
// FeatureNetwork (evaluator.hpp). Also the reference statistics, computed once per (data
// set, split, network) and cached as a file.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/data/dataset_spec.hpp"
#include "guidiff/eval/evaluator.hpp"
#include "guidiff/eval/feature_statistics.hpp"

namespace guidiff {

struct ScoreOptions {
  int64_t inception_splits = 10;    // capped at the number of samples
  int64_t precision_recall_k = 3;   // Kynkaanniemi et al.'s default
  int64_t density_coverage_k = 5;   // Naeem et al.'s default
  // Neighbour metrics against every reference feature (guided-diffusion's evaluator) instead
  // of the first min(N, reference) (equal-sized sets, as in the papers).
  bool neighbours_from_whole_reference = false;
};

// NaN marks a metric that could not be computed (no class probabilities, no labels).
struct SampleScores {
  int64_t count = 0;            // samples scored
  int64_t reference_count = 0;  // reference images behind the FID statistics
  int64_t neighbour_count = 0;  // reference images used for precision/recall, density/coverage (= count when it can)
  double fid = 0;
  double sfid = NAN;            // spatial FID (Nash et al. 2021), with a network that has spatial features
  double inception_score = NAN, inception_score_std = NAN;
  double precision = 0, recall = 0, density = 0, coverage = 0;
  double class_accuracy = NAN;              // with requested labels and class probabilities
  std::vector<double> per_class_accuracy;   // per requested class (NaN: none requested)
  // near_black_fraction (metrics.hpp) of these images and of the reference data set (NaN:
  // not known, e.g. scores saved by an older guidiff or a reference made in memory).
  double near_black_fraction = NAN, reference_near_black_fraction = NAN;
  std::string fid_warning;                  // fid_sample_warning(count, D), or ""
  nlohmann::json to_json() const;           // NaN as null
  // The inverse of to_json (null as NaN). Throws nlohmann::json::exception for a missing or
  // mistyped field; the near-black fractions may be missing (older files): NaN.
  static SampleScores from_json(const nlohmann::json& json);
};

// The reference side of every comparison: moments for FID and the features themselves for
// the nearest-neighbour metrics.
struct ReferenceSet {
  FeatureStatistics statistics;  // with .features: every reference feature, in a seeded random order
                                 // (undefined when a reference batch has statistics only)
  FeatureStatistics spatial_statistics;  // sFID's; mean undefined when the network has no spatial features
  // {"dataset", "split", "network", "count", "near_black_fraction"} (reference_set's; a set
  // made in memory may hold less)
  nlohmann::json description;
};

// Images [N, C, H, W] in [-1, 1] plus, optionally, the class each image was asked to be
// (int64 [N]; undefined: no class accuracy). The near-black fractions come from the images
// and from the reference's description. `features` gives the features, the spatial features
// (sFID) when it has them, and the IS probabilities when it has them; the class
// probabilities come from `features` when they are over the data classes, else from
// `classifier` (may be null) when the images fit it (which also gives IS when `features` has
// no probabilities). Precision/recall and density/coverage compare the samples with the
// first min(N, reference) reference features (equal-sized sets, as in the papers).
// Throws InputError for images the networks cannot take (shapes quoted), labels of the wrong
// length or outside the probabilities' classes, and the metrics' own errors (e.g. N <= k).
// With a distributed `communicator` (every rank passing the same images) the networks run
// on every rank's share of the images (run_feature_network), rank 0 computes the metrics
// from all the features, and every rank returns rank 0's scores: the numbers of one process.
SampleScores score_images(FeatureNetwork& features, FeatureNetwork* classifier, const torch::Tensor& images,
                          const torch::Tensor& requested_labels, const ReferenceSet& reference,
                          const ScoreOptions& options = {},
                          Communicator& communicator = single_process_communicator());

// The scoring half of score_images: the metrics of features [N, D] and class probabilities
// [N, K] (undefined: no IS or class accuracy) that a network gave for the images; IS from
// `score_probabilities` instead when defined (e.g. Inception's over ImageNet classes), and
// sFID from `spatial` when it and the reference's spatial statistics hold some. Without
// reference features (a reference batch of statistics only) the neighbour metrics are NaN.
SampleScores score_features(const torch::Tensor& features, const torch::Tensor& probabilities,
                            const torch::Tensor& requested_labels, const ReferenceSet& reference,
                            const ScoreOptions& options = {}, const torch::Tensor& score_probabilities = {},
                            const FeatureMoments& spatial = {});

// The reference side for a reference batch (reference_batch.hpp) at `path`: the features of
// its images under `network` (cached as reference_set does), with its own statistics (mu,
// sigma, mu_s, sigma_s) in place of the computed ones where it has them, as guided-diffusion's
// evaluator does.
ReferenceSet reference_batch_set(FeatureNetwork& network, const std::string& path, const std::string& cache_file,
                                 const std::string& cache_directory,
                                 const std::function<void(const std::string&)>& log = {},
                                 Communicator& communicator = single_process_communicator());

// Where caches go: $GUIDIFF_CACHE_DIR, else $XDG_CACHE_HOME/guidiff, else $HOME/.cache/guidiff.
std::string default_cache_directory();

// The reference statistics of `data` under `network`. With a non-empty `cache_file` (or,
// when it is empty, a file named after the data set, split and network in `cache_directory`)
// a matching cache is loaded; otherwise the data set is read, run through the network and
// the cache written atomically. A cache for another data set or network, or one that
// cannot be read, is recomputed and replaced (reported through `log`). With a distributed
// `communicator` the cache is used only if every rank can read it; otherwise all ranks
// compute the features together and rank 0 writes the cache.
ReferenceSet reference_set(FeatureNetwork& network, const DatasetRequest& data, const std::string& cache_file,
                           const std::string& cache_directory, const std::function<void(const std::string&)>& log = {},
                           Communicator& communicator = single_process_communicator());

}  // namespace guidiff
