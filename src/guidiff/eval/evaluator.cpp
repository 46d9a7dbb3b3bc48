// The evaluator network and TorchScript feature extractors (see evaluator.hpp).
#include "guidiff/eval/evaluator.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "guidiff/core/errors.hpp"
#include "guidiff/distributed/shard.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/models/network_adapters.hpp"
#include "guidiff/models/torchscript_models.hpp"

namespace guidiff {

std::string file_identity(const std::string& path) {
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  const auto time = std::filesystem::last_write_time(path, error);
  if (error) return path;
  return path + " " + std::to_string(size) + " " + std::to_string(time.time_since_epoch().count());
}

namespace {

class EvaluatorNetwork : public FeatureNetwork {
 public:
  EvaluatorNetwork(Model model, std::string weights_file)
      : model_(std::move(model)),
        network_(std::dynamic_pointer_cast<CnnClassifier>(model_.classifier)->network()),
        weights_file_(std::move(weights_file)) {}

  FeatureOutput run_batch(const torch::Tensor& images) override {
    const auto parameter = network_->parameters().front();
    const std::vector<torch::Tensor> means = network_->stage_means(images.to(parameter.device(), parameter.scalar_type()));
    FeatureOutput output;
    output.features = network_->evaluation_features(means).to(torch::kCPU, torch::kFloat32);
    output.probabilities = torch::softmax(network_->logits_from_penultimate(means.back()), 1).to(torch::kCPU, torch::kFloat32);
    return output;
  }
  std::string description() const override { return "guidiff cnn_classifier '" + weights_file_ + "'"; }
  // The feature layout (stages, weights, calibration) is part of the key: the same weights
  // with another layout are another feature space.
  std::string cache_key() const override {
    const auto& config = network_->config();
    const nlohmann::json layout = {{"feature_stages", config.evaluation_stages()},
                                   {"feature_weights", config.feature_weights},
                                   {"feature_scales", config.feature_scales}};
    return "cnn_classifier " + file_identity(weights_file_) + " " + layout.dump();
  }
  std::vector<int64_t> image_shape() const override {
    const auto& config = network_->config();
    return {config.in_channels, config.image_size, config.image_size};
  }

 private:
  Model model_;
  CnnClassifierNet network_;
  std::string weights_file_;
};

class TorchScriptFeatureNetwork : public FeatureNetwork {
 public:
  TorchScriptFeatureNetwork(const std::string& path, const torch::Device& device)
      : path_(path), device_(device), module_(load_torchscript_module(path, device)) {}

  FeatureOutput run_batch(const torch::Tensor& images) override {
    const torch::jit::IValue output = call_torchscript_forward(module_, {images.to(device_, torch::kFloat32)}, path_);
    FeatureOutput result;
    if (output.isTensor()) {
      result.features = output.toTensor();
    } else if (output.isTuple() && output.toTuple()->elements().size() == 2 &&
               output.toTuple()->elements()[0].isTensor() && output.toTuple()->elements()[1].isTensor()) {
      result.features = output.toTuple()->elements()[0].toTensor();
      const torch::Tensor logits = output.toTuple()->elements()[1].toTensor();
      check_rows("logits", logits, images.size(0));
      result.probabilities = torch::softmax(logits.to(torch::kFloat32), 1).to(torch::kCPU);
    } else {
      throw ModelError("feature network '" + path_ + "': forward must return features [N, D] or (features, logits), got " +
                       output.tagKind());
    }
    check_rows("features", result.features, images.size(0));
    result.features = result.features.to(torch::kCPU, torch::kFloat32);
    return result;
  }
  std::string description() const override { return "TorchScript '" + path_ + "'"; }
  std::string cache_key() const override { return "TorchScript " + file_identity(path_); }
  std::vector<int64_t> image_shape() const override { return {}; }

 private:
  void check_rows(const char* what, const torch::Tensor& tensor, int64_t rows) const {
    if (tensor.dim() != 2 || tensor.size(0) != rows || tensor.size(1) == 0 || !tensor.is_floating_point()) {
      throw ModelError("feature network '" + path_ + "' returned " + what + " of shape " + c10::str(tensor.sizes()) +
                       " for " + std::to_string(rows) + " images; expected a floating [" + std::to_string(rows) + ", D]");
    }
    if (!torch::isfinite(tensor).all().item<bool>()) {
      throw ModelError("feature network '" + path_ + "' returned NaN or infinite " + what);
    }
  }

  std::string path_;
  torch::Device device_;
  torch::jit::script::Module module_;
};

}  // namespace

std::unique_ptr<FeatureNetwork> load_evaluator_network(const std::string& path, const torch::Device& device) {
  Model model = load_model(path, device);
  if (model.kind != ModelKind::cnn_classifier) {
    throw InputError("evaluator '" + path + "' holds a " + std::string(model_kind_name(model.kind)) +
                     "; the evaluator must be a cnn_classifier (recipes/fashion_mnist_evaluator.sh)");
  }
  const std::string weights = model_files(path).weights;
  return std::make_unique<EvaluatorNetwork>(std::move(model), weights);
}

std::vector<double> calibrate_evaluator_features(const std::string& path, const torch::Tensor& images,
                                                 const torch::Device& device) {
  Model model = load_model(path, device);
  return calibrate_evaluator_features(model, path, images, device);
}

std::vector<double> calibrate_evaluator_features(Model& model, const std::string& path,
                                                 const torch::Tensor& images,
                                                 const torch::Device& device) {
  if (model.kind != ModelKind::cnn_classifier) {
    throw InputError("evaluator '" + path + "' holds a " + std::string(model_kind_name(model.kind)) +
                     "; only a cnn_classifier's features can be calibrated");
  }
  CnnClassifierNet network = std::dynamic_pointer_cast<CnnClassifier>(model.classifier)->network();
  if (!images.defined() || images.dim() != 4 || images.size(0) < 2 || !images.is_floating_point()) {
    throw InputError("calibrating evaluator '" + path + "' needs at least 2 floating images [N, C, H, W], got " +
                     (images.defined() ? c10::str(images.sizes()) : std::string("nothing")));
  }
  const std::vector<int64_t> stages = network->config().evaluation_stages();
  std::vector<std::vector<torch::Tensor>> blocks(stages.size());
  {
    torch::NoGradGuard no_grad;
    constexpr int64_t kBatch = 500;
    for (int64_t begin = 0; begin < images.size(0); begin += kBatch) {
      const torch::Tensor batch = images.slice(0, begin, std::min(begin + kBatch, images.size(0)));
      const std::vector<torch::Tensor> means = network->stage_means(batch.to(device, torch::kFloat32));
      for (size_t k = 0; k < stages.size(); ++k) {
        blocks[k].push_back(means.at(static_cast<size_t>(stages[k])).to(torch::kCPU, torch::kFloat64));
      }
    }
  }
  std::vector<double> scales;
  for (size_t k = 0; k < stages.size(); ++k) {
    const double total_variance = torch::cat(blocks[k]).var(0, /*unbiased=*/true).sum().item<double>();
    if (!(std::isfinite(total_variance) && total_variance > 0.0)) {
      throw NumericError("calibrating evaluator '" + path + "': the features of stage " + std::to_string(stages[k]) +
                         " have total variance " + std::to_string(total_variance) + " over the images");
    }
    scales.push_back(1.0 / std::sqrt(total_variance));
  }
  nlohmann::json config = model.config;
  config["feature_scales"] = scales;
  build_model(config);  // the updated config must still be valid
  model.config = std::move(config);
  // The whole file (class names, source and all), not the network's config alone.
  write_file_atomically(model_files(path).config, model_file_json(model).dump(2) + "\n");
  return scales;
}

std::unique_ptr<FeatureNetwork> load_torchscript_feature_network(const std::string& path, const torch::Device& device) {
  return std::make_unique<TorchScriptFeatureNetwork>(path, device);
}

FeatureOutput run_feature_network(FeatureNetwork& network, const torch::Tensor& images, int64_t batch_size,
                                  Communicator& communicator) {
  const std::string name = network.description();
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0 || !images.is_floating_point()) {
    throw InputError("images for " + name + " must be a non-empty floating [N, C, H, W] tensor, got " +
                     (images.defined() ? c10::str(images.sizes()) : std::string("nothing")));
  }
  const std::vector<int64_t> expected = network.image_shape();
  const std::vector<int64_t> actual = images.sizes().slice(1).vec();
  if (!expected.empty() && expected != actual) {
    throw InputError("images are " + c10::str(torch::IntArrayRef(actual)) + " (C, H, W) but " + name + " takes " +
                     c10::str(torch::IntArrayRef(expected)));
  }
  if (torch::isnan(images).any().item<bool>()) throw InputError("images for " + name + " contain NaN");
  if (batch_size < 1) throw InputError("feature batch size must be >= 1, got " + std::to_string(batch_size));
  if (network.largest_batch() > 0) batch_size = std::min(batch_size, network.largest_batch());
  torch::NoGradGuard no_grad;
  const Shard rows = batch_aligned_shard(images.size(0), batch_size, communicator.rank(), communicator.world_size());
  std::vector<torch::Tensor> features, probabilities;
  FeatureMoments spatial_moments;
  for (int64_t begin = rows.begin; begin < rows.end; begin += batch_size) {
    FeatureOutput batch = network.run_batch(images.slice(0, begin, std::min(begin + batch_size, rows.end)));
    features.push_back(batch.features);
    if (batch.probabilities.defined()) probabilities.push_back(batch.probabilities);
    if (batch.spatial_features.defined()) spatial_moments.add(batch.spatial_features);
  }
  FeatureOutput output;
  // Each rank's moments as one row; merged in rank order (the same sums as one process up to
  // the order of additions).
  const torch::Tensor moment_rows = communicator.all_gather_rows(spatial_moments.to_row(), "gathering the spatial feature moments");
  if (moment_rows.defined()) {
    for (int64_t rank_row = 0; rank_row < moment_rows.size(0); ++rank_row) {
      output.spatial_moments.merge(FeatureMoments::from_row(moment_rows[rank_row]));
    }
  }
  if (!features.empty()) output.features = torch::cat(features);
  if (!features.empty() && probabilities.size() == features.size()) output.probabilities = torch::cat(probabilities);
  // A rank without batches contributes undefined tensors: no rows.
  output.features = communicator.all_gather_rows(output.features, "gathering the image features");
  output.probabilities = communicator.all_gather_rows(output.probabilities, "gathering the class probabilities");
  return output;
}

}  // namespace guidiff
