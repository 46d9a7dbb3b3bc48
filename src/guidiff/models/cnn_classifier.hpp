// A plain convolutional image classifier (no time input): the evaluator network whose
// penultimate features and softmax feed FID, precision/recall, IS and class accuracy
// (eval/evaluator.hpp). Architecture, one stage per entry of `channels`:
//   stage i: [Conv3x3(c_in, c_i), GroupNorm, SiLU] x convs_per_stage, then 2x2 max-pool
//            (the last stage pools globally: spatial mean)
//   features = the globally pooled last stage                        [N, channels.back()]
//   logits   = Linear(Dropout(features))                             [N, num_classes]
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

  // Throws InputError "cnn_classifier config: field "<name>" ..." for the first invalid field.
  void validate() const;
};

void to_json(nlohmann::json& object, const CnnClassifierConfig& config);
void from_json(const nlohmann::json& object, CnnClassifierConfig& config);  // strict (ConfigFields)

class CnnClassifierNetImpl : public torch::nn::Module {
 public:
  explicit CnnClassifierNetImpl(const CnnClassifierConfig& config);  // InputError naming the field
  // x: float [N, in_channels, image_size, image_size] -> features [N, channels.back()].
  torch::Tensor features(const torch::Tensor& x);
  // -> logits [N, num_classes], differentiable in x.
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor logits_from_features(const torch::Tensor& features);
  const CnnClassifierConfig& config() const { return config_; }

 private:
  CnnClassifierConfig config_;
  torch::nn::Sequential body_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  torch::nn::Linear head_{nullptr};
};
TORCH_MODULE(CnnClassifierNet);

}  // namespace guidiff
