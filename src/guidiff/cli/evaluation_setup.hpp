// The evaluation flags that `guidiff eval` and `guidiff sweep` share (feature network,
// evaluator, reference data and its statistics cache) and the scorer they build.
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "guidiff/eval/evaluator.hpp"
#include "guidiff/eval/sample_scores.hpp"

namespace guidiff::cli {

struct EvaluationFlags {
  std::string evaluator = "models/fashion-mnist/evaluator";  // cnn_classifier checkpoint
  // "inception" (FID Inception-v3), "evaluator", or a TorchScript extractor's path; empty:
  // Inception when its weights are found, else the evaluator.
  std::string features;
  std::string inception_weights;                             // empty: $GUIDIFF_INCEPTION_WEIGHTS or the cache
  std::string reference = "fashion-mnist", reference_split = "test";
  std::string reference_stats;                               // cache file; empty: one in cache_dir
  std::string cache_dir;                                     // empty: default_cache_directory()
  int64_t inception_splits = 10;
  CLI::Option* evaluator_option = nullptr;
};

void add_evaluation_flags(CLI::App& command, EvaluationFlags& flags);

class Evaluation {
 public:
  // Loads the networks (the reference statistics wait for the first score()). With a
  // distributed communicator, reference statistics and scores are computed by all ranks
  // together (sample_scores.hpp); every rank must make the same calls.
  Evaluation(const EvaluationFlags& flags, const torch::Device& device,
             Communicator& communicator = single_process_communicator());
  // Throws InputError when the feature network cannot take images of this shape, before any
  // reference statistics are computed.
  void check_images(const torch::Tensor& images);
  // Throws InputError when samples that ask for classes 0..classes-1 cannot get a class
  // accuracy because the evaluator tells fewer classes apart (before any sampling).
  void check_classes(const torch::Tensor& images, int64_t classes);
  // images float [N, C, H, W] in [-1, 1]; labels int64 [N] (requested classes) or undefined.
  // The first call loads or computes (and caches) the reference statistics.
  SampleScores score(const torch::Tensor& images, const torch::Tensor& labels);
  // "evaluator 'models/fashion-mnist/evaluator'", "FID Inception-v3 '...'" or "TorchScript
  // features 'x.pt'", for reports.
  const std::string& feature_space() const { return feature_space_; }
  const ReferenceSet& reference();
  // The channels images should be read with: 3 for Inception, else the feature network's, else
  // the evaluator's, else 3.
  int64_t image_channels() const;

 private:
  std::unique_ptr<FeatureNetwork> evaluator_, features_;
  EvaluationFlags flags_;
  Communicator& communicator_;
  std::optional<ReferenceSet> reference_;
  ScoreOptions options_;
  std::string feature_space_;
  bool reads_colour_ = false;  // image folders are read as RGB (the Inception network)
};

// A fixed-width table, one row per named result, of every metric.
std::string scores_table(const std::vector<std::pair<std::string, SampleScores>>& rows);

}  // namespace guidiff::cli
