// The plain CNN image classifier (see cnn_classifier.hpp).
#include "guidiff/models/cnn_classifier.hpp"

#include <cmath>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/config_fields.hpp"
#include "guidiff/models/unet_blocks.hpp"

namespace guidiff {

void CnnClassifierConfig::validate() const {
  const auto fail = [](const char* field, const std::string& what) {
    throw InputError(std::string("cnn_classifier config: field \"") + field + "\" " + what);
  };
  if (image_size < 1) fail("image_size", "must be >= 1");
  if (in_channels < 1) fail("in_channels", "must be >= 1");
  if (channels.empty()) fail("channels", "must list at least one stage");
  for (const int64_t width : channels) {
    if (width < 1 || norm_groups < 1 || width % norm_groups != 0) {
      fail("channels", "entries must be positive multiples of norm_groups (" + std::to_string(norm_groups) + ")");
    }
  }
  if (convs_per_stage < 1) fail("convs_per_stage", "must be >= 1");
  if (!(dropout >= 0.0 && dropout < 1.0)) fail("dropout", "must lie in [0, 1)");
  if (num_classes < 1) fail("num_classes", "must be >= 1");
  // Every stage but the last halves the side; the last must keep at least one pixel.
  if ((image_size >> (channels.size() - 1)) < 1) fail("channels", "has more stages than image_size can be halved");
  const auto stages = static_cast<int64_t>(channels.size());
  for (size_t k = 0; k < feature_stages.size(); ++k) {
    if (feature_stages[k] < 0 || feature_stages[k] >= stages || (k > 0 && feature_stages[k] <= feature_stages[k - 1])) {
      fail("feature_stages", "must list stage indices in [0, " + std::to_string(stages) + ") in increasing order");
    }
  }
  const size_t blocks = evaluation_stages().size();
  for (const auto& [field, values] : {std::pair<const char*, const std::vector<double>*>{"feature_weights", &feature_weights},
                                      {"feature_scales", &feature_scales}}) {
    if (!values->empty() && values->size() != blocks) {
      fail(field, "must have one entry per feature stage (" + std::to_string(blocks) + ") or none");
    }
    for (const double value : *values) {
      if (!(std::isfinite(value) && value > 0.0)) fail(field, "entries must be finite and > 0");
    }
  }
}

std::vector<int64_t> CnnClassifierConfig::evaluation_stages() const {
  if (!feature_stages.empty()) return feature_stages;
  return {static_cast<int64_t>(channels.size()) - 1};
}

void to_json(nlohmann::json& object, const CnnClassifierConfig& config) {
  object = {{"image_size", config.image_size},   {"in_channels", config.in_channels},
            {"channels", config.channels},       {"convs_per_stage", config.convs_per_stage},
            {"norm_groups", config.norm_groups}, {"dropout", config.dropout},
            {"num_classes", config.num_classes}};
  // Written only when set, so a plain classifier's file stays as it was.
  if (!config.feature_stages.empty()) object["feature_stages"] = config.feature_stages;
  if (!config.feature_weights.empty()) object["feature_weights"] = config.feature_weights;
  if (!config.feature_scales.empty()) object["feature_scales"] = config.feature_scales;
}

void from_json(const nlohmann::json& object, CnnClassifierConfig& config) {
  ConfigFields fields(object, "cnn_classifier config");
  CnnClassifierConfig result;
  fields.read("image_size", result.image_size);
  fields.read("in_channels", result.in_channels);
  fields.read("channels", result.channels);
  fields.read("convs_per_stage", result.convs_per_stage);
  fields.read("norm_groups", result.norm_groups);
  fields.read("dropout", result.dropout);
  fields.read("num_classes", result.num_classes);
  fields.read("feature_stages", result.feature_stages);
  fields.read("feature_weights", result.feature_weights);
  fields.read("feature_scales", result.feature_scales);
  fields.reject_unknown();
  config = std::move(result);
}

CnnClassifierNetImpl::CnnClassifierNetImpl(const CnnClassifierConfig& config) : config_(config) {
  config_.validate();
  torch::nn::Sequential body;
  int64_t width_in = config_.in_channels;
  for (size_t stage = 0; stage < config_.channels.size(); ++stage) {
    const int64_t width = config_.channels[stage];
    for (int64_t i = 0; i < config_.convs_per_stage; ++i) {
      body->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(width_in, width, 3).padding(1)));
      body->push_back(make_group_norm(config_.norm_groups, width));
      body->push_back(torch::nn::SiLU());
      width_in = width;
    }
    stage_ends_.push_back(body->size() - 1);
    if (stage + 1 < config_.channels.size()) body->push_back(torch::nn::MaxPool2d(2));
  }
  body_ = register_module("body", body);
  dropout_ = register_module("dropout", torch::nn::Dropout(config_.dropout));
  head_ = register_module("head", torch::nn::Linear(width_in, config_.num_classes));
}

std::vector<torch::Tensor> CnnClassifierNetImpl::stage_means(const torch::Tensor& x) {
  const int64_t side = config_.image_size;
  if (!x.defined() || x.dim() != 4 || x.size(1) != config_.in_channels || x.size(2) != side || x.size(3) != side) {
    throw InputError("cnn_classifier expects images [N, " + std::to_string(config_.in_channels) + ", " +
                     std::to_string(side) + ", " + std::to_string(side) + "], got " +
                     (x.defined() ? c10::str(x.sizes()) : std::string("nothing")));
  }
  std::vector<torch::Tensor> means;
  torch::Tensor h = x;
  size_t index = 0, next_stage = 0;
  for (auto& module : *body_) {
    h = module.forward(h);
    if (next_stage < stage_ends_.size() && index == stage_ends_[next_stage]) {
      means.push_back(h.mean({2, 3}));
      ++next_stage;
    }
    ++index;
  }
  return means;
}

torch::Tensor CnnClassifierNetImpl::evaluation_features(const std::vector<torch::Tensor>& stage_means) const {
  const std::vector<int64_t> stages = config_.evaluation_stages();
  std::vector<torch::Tensor> blocks;
  for (size_t k = 0; k < stages.size(); ++k) {
    const double weight = config_.feature_weights.empty() ? 1.0 : config_.feature_weights[k];
    const double scale = config_.feature_scales.empty() ? 1.0 : config_.feature_scales[k];
    const torch::Tensor& block = stage_means.at(static_cast<size_t>(stages[k]));
    blocks.push_back(weight * scale == 1.0 ? block : block * (weight * scale));
  }
  return blocks.size() == 1 ? blocks.front() : torch::cat(blocks, 1);
}

torch::Tensor CnnClassifierNetImpl::features(const torch::Tensor& x) { return evaluation_features(stage_means(x)); }

torch::Tensor CnnClassifierNetImpl::logits_from_penultimate(const torch::Tensor& penultimate) {
  return head_->forward(dropout_->forward(penultimate));
}

torch::Tensor CnnClassifierNetImpl::forward(const torch::Tensor& x) { return logits_from_penultimate(stage_means(x).back()); }

}  // namespace guidiff
