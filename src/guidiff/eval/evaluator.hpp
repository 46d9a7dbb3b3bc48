// Feature networks: what turns images into the features behind FID, precision/recall and
// density/coverage, and the class probabilities behind IS and class accuracy.
//   - guidiff's evaluator: a cnn_classifier checkpoint (models/fashion-mnist/evaluator,
//     recipes/fashion_mnist_evaluator.sh): penultimate (globally pooled) features + softmax.
//   - the FID Inception-v3 network (fid_inception_network.hpp): pool3 features, sFID's spatial
//     features and the Inception Score's probabilities over ImageNet's classes.
//   - any TorchScript module (`--features net.pt`), e.g. an exported Inception network:
//     forward(x) -> features [N, D], or -> (features [N, D], logits [N, K]).
// Images go in as float [N, C, H, W] in [-1, 1], the range guidiff samples in; a TorchScript
// module does its own resizing and normalisation.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "guidiff/distributed/communicator.hpp"
#include "guidiff/eval/feature_statistics.hpp"
#include "guidiff/models/model_files.hpp"

namespace guidiff {

struct FeatureOutput {
  torch::Tensor features;       // float32 [N, D], CPU
  torch::Tensor probabilities;  // float32 [N, K] rows summing to 1, CPU; undefined if the network has none
  // A second feature set of which only the statistics are kept (sFID's spatial features):
  // run_batch returns its rows, float32 [N, S] on the CPU (undefined: none);
  // run_feature_network folds them into spatial_moments and leaves spatial_features undefined.
  torch::Tensor spatial_features;
  FeatureMoments spatial_moments;
};

class FeatureNetwork {
 public:
  virtual ~FeatureNetwork() = default;
  // One batch; checks the output (InputError/ModelError naming the network).
  virtual FeatureOutput run_batch(const torch::Tensor& images) = 0;
  // What the network is, for messages and reports: its kind and file.
  virtual std::string description() const = 0;
  // The description plus the file's size and modification time: the key of the
  // reference-statistics cache, so a retrained network gets new statistics.
  virtual std::string cache_key() const = 0;
  // The image shape {C, H, W} the network accepts, or empty when it takes any.
  virtual std::vector<int64_t> image_shape() const = 0;
  // Whether `probabilities` are over the data set's classes (class accuracy can use them), or
  // over other classes (the Inception network's ImageNet classes: IS only).
  virtual bool probabilities_are_data_classes() const { return true; }
  // The most images run_batch should be given at once (0: any number). run_feature_network
  // never hands it more, whatever batch its caller asks for.
  virtual int64_t largest_batch() const { return 0; }
};

// "<path> <size> <modification time>": a file's identity for cache keys, so that a retrained or
// replaced network gets new statistics. The path alone when the file cannot be read.
std::string file_identity(const std::string& path);

// guidiff's own evaluator: a cnn_classifier checkpoint (dir, prefix or file). Throws
// FileError naming the path when it is missing or broken, InputError when it holds another
// kind of network.
std::unique_ptr<FeatureNetwork> load_evaluator_network(const std::string& path, const torch::Device& device);

// Calibrates the evaluation features of the cnn_classifier evaluator at `path` (dir, prefix
// or file) on `images` (float [N, C, H, W] in [-1, 1], N >= 2): for each feature stage k,
// feature_scales[k] = 1 / sqrt(total variance of stage k's spatial means over the images),
// the total variance being the sum of the per-dimension (unbiased) variances. Each block then
// has unit total variance before its weight, so feature_weights alone set how much each depth
// counts in FID, whatever the activations' magnitudes. Rewrites the evaluator's JSON config
// atomically (the weights file is untouched) and returns the scales. Throws as
// load_evaluator_network, InputError for images it cannot take, and NumericError when a block
// has zero or non-finite variance.
std::vector<double> calibrate_evaluator_features(const std::string& path, const torch::Tensor& images,
                                                 const torch::Device& device);
// The same for an evaluator already loaded from `path` (on `device`), so a caller that read
// its config first loads it once. `evaluator.config` gets the scales too.
std::vector<double> calibrate_evaluator_features(Model& evaluator, const std::string& path,
                                                 const torch::Tensor& images,
                                                 const torch::Device& device);

// A TorchScript feature extractor. Throws FileError naming the path when it cannot be
// loaded; its forward's output is checked on every batch (ModelError naming the path:
// not a tensor or a (tensor, tensor) tuple, not [N, D] for N images, non-finite values).
std::unique_ptr<FeatureNetwork> load_torchscript_feature_network(const std::string& path, const torch::Device& device);

// Runs `network` over images [N, C, H, W] (any floating dtype, in [-1, 1]) in batches,
// without autograd. Throws InputError naming the network when the images are not 4-D, are
// empty, hold NaN, or do not have the shape the network accepts (both shapes quoted). With a
// distributed `communicator` every rank runs its whole batches (batch_aligned_shard) and gets
// all N outputs back, in order: the same batches, so the same numbers, as one process.
// Batches are `batch_size` images, or the network's largest_batch() where that is smaller.
// Spatial features are not kept: their moments are accumulated batch by batch (and merged
// across ranks), so memory stays O(S^2) for any N.
FeatureOutput run_feature_network(FeatureNetwork& network, const torch::Tensor& images, int64_t batch_size = 500,
                                  Communicator& communicator = single_process_communicator());

}  // namespace guidiff
