// guided-diffusion's reference batches (see reference_batch.hpp).
#include "guidiff/eval/reference_batch.hpp"

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npz.hpp"

namespace guidiff {
namespace {

const torch::Tensor* find_array(const NamedArrays& arrays, const std::string& name) {
  for (const auto& [key, value] : arrays) {
    if (key == name) return &value;
  }
  return nullptr;
}

// mu/sigma or mu_s/sigma_s, checked; mean undefined when the file has neither.
FeatureStatistics read_statistics(const NamedArrays& arrays, const std::string& path, const std::string& mean_name,
                                  const std::string& covariance_name) {
  const torch::Tensor* mean = find_array(arrays, mean_name);
  const torch::Tensor* covariance = find_array(arrays, covariance_name);
  FeatureStatistics statistics;
  if (mean == nullptr && covariance == nullptr) return statistics;
  const std::string file = "reference batch '" + path + "': ";
  if (mean == nullptr || covariance == nullptr) {
    throw FileError(file + "has '" + (mean ? mean_name : covariance_name) + "' without '" +
                    (mean ? covariance_name : mean_name) + "'");
  }
  if (mean->dim() != 1 || mean->size(0) == 0 || covariance->dim() != 2 || covariance->size(0) != mean->size(0) ||
      covariance->size(1) != mean->size(0)) {
    throw FileError(file + "'" + mean_name + "' " + shape_string(*mean) + " and '" + covariance_name + "' " +
                    shape_string(*covariance) + " are not [D] and [D, D]");
  }
  if (!mean->is_floating_point() || !covariance->is_floating_point() || !mean->isfinite().all().item<bool>() ||
      !covariance->isfinite().all().item<bool>()) {
    throw FileError(file + "'" + mean_name + "' and '" + covariance_name + "' must be finite floating-point arrays");
  }
  statistics.mean = mean->to(torch::kFloat64);
  statistics.covariance = covariance->to(torch::kFloat64);
  return statistics;
}

}  // namespace

bool is_reference_batch(const std::string& spec) {
  return spec.size() > 4 && spec.compare(spec.size() - 4, 4, ".npz") == 0;
}

ReferenceBatch read_reference_batch(const std::string& path) {
  const NamedArrays arrays = read_npz(path);  // FileError naming the file
  ReferenceBatch batch;
  batch.pool_statistics = read_statistics(arrays, path, "mu", "sigma");
  batch.spatial_statistics = read_statistics(arrays, path, "mu_s", "sigma_s");
  if (find_array(arrays, "arr_0") != nullptr) {
    const SampleBatchNpz images = read_sample_batch_npz(path);  // checks arr_0 and arr_1
    batch.images = images.images;
    batch.labels = images.labels;
    if (batch.pool_statistics.mean.defined()) batch.pool_statistics.count = batch.images.size(0);
    if (batch.spatial_statistics.mean.defined()) batch.spatial_statistics.count = batch.images.size(0);
  } else if (!batch.pool_statistics.mean.defined()) {
    throw FileError("reference batch '" + path + "' has neither images (arr_0) nor statistics (mu, sigma)");
  }
  return batch;
}

void write_reference_batch(const std::string& path, const ReferenceBatch& batch) {
  NamedArrays arrays;
  if (batch.images.defined()) {
    if (batch.images.scalar_type() != torch::kUInt8 || batch.images.dim() != 4 ||
        (batch.images.size(3) != 1 && batch.images.size(3) != 3)) {
      throw InputError("reference batch '" + path + "': images must be uint8 [N, H, W, 1 or 3], got " +
                       shape_string(batch.images));
    }
    arrays.emplace_back("arr_0", batch.images.size(3) == 1 ? batch.images.expand({-1, -1, -1, 3}).contiguous()
                                                           : batch.images.contiguous());
    if (batch.labels.defined()) {
      if (batch.labels.dim() != 1 || batch.labels.size(0) != batch.images.size(0)) {
        throw InputError("reference batch '" + path + "': labels must be [" + std::to_string(batch.images.size(0)) +
                         "], got " + shape_string(batch.labels));
      }
      arrays.emplace_back("arr_1", batch.labels.to(torch::kLong));
    }
  }
  for (const auto& [statistics, mean_name, covariance_name] :
       {std::tuple<const FeatureStatistics*, const char*, const char*>{&batch.pool_statistics, "mu", "sigma"},
        {&batch.spatial_statistics, "mu_s", "sigma_s"}}) {
    if (statistics->mean.defined()) {
      arrays.emplace_back(mean_name, statistics->mean.to(torch::kCPU, torch::kFloat64));
      arrays.emplace_back(covariance_name, statistics->covariance.to(torch::kCPU, torch::kFloat64));
    }
  }
  if (arrays.empty()) throw InputError("reference batch '" + path + "': nothing to write");
  write_npz(path, arrays);
}

ReferenceBatch make_reference_batch(const Dataset& data, FeatureNetwork* inception, Communicator& communicator) {
  if (!data.holds_images()) throw InputError("data set '" + data.name + "' holds no images for a reference batch");
  ReferenceBatch batch;
  batch.images = images_to_uint8_nhwc(data.images);
  if (batch.images.size(3) == 1) batch.images = batch.images.expand({-1, -1, -1, 3}).contiguous();
  batch.labels = data.labels;
  if (inception != nullptr) {
    // The features of the images as they are stored (8-bit), as a reader of the file would get.
    const FeatureOutput output = run_feature_network(*inception, uint8_nhwc_to_images(batch.images), 500, communicator);
    batch.pool_statistics = feature_statistics(output.features);
    if (output.spatial_moments.count() >= 2) batch.spatial_statistics = output.spatial_moments.statistics();
  }
  return batch;
}

}  // namespace guidiff
