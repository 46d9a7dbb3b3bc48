// The FID Inception network as a FeatureNetwork (see fid_inception_network.hpp).
#include "guidiff/eval/fid_inception_network.hpp"

#include <cstdlib>
#include <filesystem>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

class FidInceptionFeatureNetwork : public FeatureNetwork {
 public:
  FidInceptionFeatureNetwork(FidInception network, std::string identity, const torch::Device& device,
                             int64_t images_per_pass)
      : network_(std::move(network)), identity_(std::move(identity)), device_(device), images_per_pass_(images_per_pass) {
    if (images_per_pass_ < 1) throw InputError("images per Inception pass must be >= 1, got " + std::to_string(images_per_pass_));
    network_->to(device_);
    network_->eval();
  }

  FeatureOutput run_batch(const torch::Tensor& images) override {
    torch::NoGradGuard no_grad;
    const FidInceptionOutputs outputs = network_->forward(fid_inception_input(images.to(device_)));
    FeatureOutput result;
    result.features = outputs.pool3.to(torch::kCPU, torch::kFloat32);
    result.probabilities = network_->score_probabilities(outputs.pool3).to(torch::kCPU, torch::kFloat32);
    result.spatial_features = outputs.spatial.to(torch::kCPU, torch::kFloat32);
    return result;
  }
  std::string description() const override { return "FID Inception-v3 '" + identity_ + "'"; }
  std::string cache_key() const override { return "fid_inception " + identity_; }
  std::vector<int64_t> image_shape() const override { return {}; }
  bool probabilities_are_data_classes() const override { return false; }
  int64_t largest_batch() const override { return images_per_pass_; }

 private:
  FidInception network_;
  std::string identity_;
  torch::Device device_;
  int64_t images_per_pass_;
};

bool is_file(const std::string& path) {
  std::error_code ignored;
  return std::filesystem::is_regular_file(path, ignored);
}

}  // namespace

std::string locate_fid_inception_weights(const std::string& path, const std::string& cache_directory) {
  if (!path.empty()) {
    if (!is_file(path)) throw FileError("--inception-weights '" + path + "' does not exist");
    return path;
  }
  if (const char* variable = std::getenv(kFidInceptionWeightsVariable); variable != nullptr && *variable != '\0') {
    if (!is_file(variable)) {
      throw FileError(std::string("$") + kFidInceptionWeightsVariable + " names '" + variable + "', which does not exist");
    }
    return variable;
  }
  const std::string cached = (std::filesystem::path(cache_directory) / kFidInceptionWeightsName).string();
  return is_file(cached) ? cached : std::string();
}

std::string missing_fid_inception_weights_message(const std::string& cache_directory) {
  const std::string cached = (std::filesystem::path(cache_directory) / kFidInceptionWeightsName).string();
  return std::string("the FID Inception weights are not in '") + cached + "' and neither --inception-weights nor $" +
         kFidInceptionWeightsVariable + " is given; download them with: curl -L --create-dirs -o '" + cached + "' " +
         kFidInceptionWeightsUrl;
}

std::unique_ptr<FeatureNetwork> load_fid_inception_network(const std::string& weights_path, const torch::Device& device) {
  return fid_inception_feature_network(load_fid_inception(weights_path), file_identity(weights_path), device);
}

std::unique_ptr<FeatureNetwork> fid_inception_feature_network(FidInception network, const std::string& identity,
                                                              const torch::Device& device, int64_t images_per_pass) {
  return std::make_unique<FidInceptionFeatureNetwork>(std::move(network), identity, device, images_per_pass);
}

}  // namespace guidiff
