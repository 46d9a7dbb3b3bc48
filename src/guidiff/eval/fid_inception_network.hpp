// The FID Inception-v3 network (fid_inception.hpp) as a FeatureNetwork, and where its weights
// are found. Features: pool3 (FID, precision/recall); spatial features: mixed_6/conv's first 7
// channels (sFID); probabilities: softmax(pool3 W^T) over ImageNet's 1008 classes (IS only).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>

#include "guidiff/eval/evaluator.hpp"
#include "guidiff/eval/fid_inception.hpp"

namespace guidiff {

// pytorch-fid's weight file, its download address, and the environment variable naming it.
constexpr const char* kFidInceptionWeightsName = "pt_inception-2015-12-05-6726825d.pth";
constexpr const char* kFidInceptionWeightsUrl =
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";
constexpr const char* kFidInceptionWeightsVariable = "GUIDIFF_INCEPTION_WEIGHTS";

// Images per forward pass, whatever batch run_feature_network's caller asks for. At 299x299 the activations
// take about 30 MB per image, so the evaluator's batches of 500 in one pass would peak near
// 15 GiB; passes of 25 peak at 1.2 GiB (docs/evaluation.md). They also stay below the heap's
// 1 GiB trim threshold (src/guidiff/core/allocator.hpp), so freed activations are reused
// rather than handed back and faulted in anew: passes of 50 ran at half the speed.
constexpr int64_t kFidInceptionImagesPerPass = 25;

// Where the weights are: `path` when non-empty, else $GUIDIFF_INCEPTION_WEIGHTS when set, else
// <cache_directory>/pt_inception-2015-12-05-6726825d.pth when that file exists; "" when none is
// given and the cache has none. Throws FileError naming the flag or variable when the file
// it names does not exist.
std::string locate_fid_inception_weights(const std::string& path, const std::string& cache_directory);

// The one-line message for weights that are nowhere: where they were looked for and the
// download command.
std::string missing_fid_inception_weights_message(const std::string& cache_directory);

// The network with the weights at `weights_path` (load_fid_inception's errors) on `device`.
std::unique_ptr<FeatureNetwork> load_fid_inception_network(const std::string& weights_path, const torch::Device& device);

// A loaded network as a FeatureNetwork; `identity` stands for its weights in descriptions and
// cache keys (e.g. file_identity of the weight file). run_feature_network gives it at most
// `images_per_pass` images per forward pass (its largest_batch; InputError unless >= 1).
std::unique_ptr<FeatureNetwork> fid_inception_feature_network(FidInception network, const std::string& identity,
                                                              const torch::Device& device,
                                                              int64_t images_per_pass = kFidInceptionImagesPerPass);

}  // namespace guidiff
