// A plain convolutional image classifier (no time input): the evaluator network whose
// features and softmax feed FID, precision/recall, IS and class accuracy
// (eval/evaluator.hpp). Architecture, one stage per entry of `channels`:
//   stage i: [Conv3x3(c_in, c_i), GroupNorm, SiLU] x convs_per_stage, then 2x2 max-pool
//            (the last stage pools globally: spatial mean)
//   penultimate = the globally pooled last stage                      [N, channels.back()]
//   logits      = Linear(Dropout(penultimate))                         [N, num_classes]
// The evaluation features (what FID compares) are the spatial means of the outputs of the
// stages listed in `feature_stages`, each stage's block multiplied by
// feature_weights[k] * feature_scales[k] and concatenated. With the defaults (the last stage
// only, weight and scale 1) they are the penultimate features.
// It implements Classifier (ignoring the time), so `guidiff train classifier --max-t 1`
// trains it on clean images with the same loop, EMA and resume as every other model.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace guidiff {

struct CnnClassifierConfig {
  int64_t image_size = 28;
  int64_t in_channels = 1;
  std::vector<int64_t> channels = {32, 64, 128};
  int64_t convs_per_stage = 1;
  int64_t norm_groups = 8;
  double dropout = 0.0;
  int64_t num_classes = 10;
  // Evaluation features: stage indices (strictly increasing; empty: the last stage), the
  // relative weight of each stage's block (empty: all 1), and the calibration that puts every
  // block on one scale (empty: all 1; see calibrate_feature_scales in eval/evaluator.hpp).
  std::vector<int64_t> feature_stages;
  std::vector<double> feature_weights;
  std::vector<double> feature_scales;

  // Throws InputError "cnn_classifier config: field "<name>" ..." for the first invalid field.
  void validate() const;
  // feature_stages, or {last stage} when it is empty.
  std::vector<int64_t> evaluation_stages() const;
};

void to_json(nlohmann::json& object, const CnnClassifierConfig& config);
void from_json(const nlohmann::json& object, CnnClassifierConfig& config);  // strict (ConfigFields)

class CnnClassifierNetImpl : public torch::nn::Module {
 public:
  explicit CnnClassifierNetImpl(const CnnClassifierConfig& config);  // InputError naming the field
  // x: float [N, in_channels, image_size, image_size] -> the spatial mean of every stage's
  // output, [N, channels[i]] for stage i. The last is the penultimate layer.
  std::vector<torch::Tensor> stage_means(const torch::Tensor& x);
  // The evaluation features of `stage_means`' result: [N, sum of the feature stages' widths].
  torch::Tensor evaluation_features(const std::vector<torch::Tensor>& stage_means) const;
  // evaluation_features(stage_means(x)).
  torch::Tensor features(const torch::Tensor& x);
  // -> logits [N, num_classes], differentiable in x.
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor logits_from_penultimate(const torch::Tensor& penultimate);
  const CnnClassifierConfig& config() const { return config_; }

 private:
  CnnClassifierConfig config_;
  torch::nn::Sequential body_{nullptr};
  std::vector<size_t> stage_ends_;  // index in body_ of each stage's last module (its last SiLU)
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(CnnClassifierNet);

}  // namespace guidiff
