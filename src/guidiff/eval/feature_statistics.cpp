#include "guidiff/eval/feature_statistics.hpp"

#include <algorithm>
#include <map>
#include <utility>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/json_integer.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/safetensors.hpp"

namespace guidiff {
namespace {

constexpr const char* kMetadataKey = "guidiff_feature_statistics";
constexpr int64_t kFormat = 1;

bool all_finite(const torch::Tensor& tensor) { return tensor.isfinite().all().item<bool>(); }

// Averages away the rounding asymmetry of a computed symmetric matrix, so that the symmetric
// eigensolver (which reads one triangle) sees the matrix we mean.
torch::Tensor symmetrized(const torch::Tensor& matrix) { return (matrix + matrix.t()) * 0.5; }

// The PSD square root V diag(sqrt(max(lambda, 0))) V^T of a symmetric PSD matrix. A
// covariance is PSD in exact arithmetic; eigenvalues a few ulps below zero are rounding.
torch::Tensor psd_square_root(const torch::Tensor& symmetric) {
  auto [eigenvalues, eigenvectors] = torch::linalg_eigh(symmetric, "L");
  if (!all_finite(eigenvalues) || !all_finite(eigenvectors)) {
    throw NumericError("Frechet distance: the eigendecomposition of a covariance produced NaN or infinity");
  }
  return (eigenvectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(0)).mm(eigenvectors.t());
}

// Checks one side of a Frechet distance and returns its dimension D.
int64_t checked_dimension(const FeatureStatistics& statistics, const char* which) {
  const std::string side = std::string("Frechet distance: the ") + which + " statistics' ";
  if (!statistics.mean.defined() || statistics.mean.dim() != 1 || statistics.mean.size(0) == 0) {
    throw InputError(side + "mean must be a non-empty 1-D tensor, got " +
                     shape_string(statistics.mean));
  }
  const int64_t dim = statistics.mean.size(0);
  if (!statistics.covariance.defined() || statistics.covariance.dim() != 2 ||
      statistics.covariance.size(0) != dim || statistics.covariance.size(1) != dim) {
    throw InputError(side + "covariance must be [" + std::to_string(dim) + ", " + std::to_string(dim) +
                     "] to match its mean, got " +
                     shape_string(statistics.covariance));
  }
  if (!statistics.mean.is_floating_point() || !statistics.covariance.is_floating_point() ||
      !all_finite(statistics.mean) || !all_finite(statistics.covariance)) {
    throw InputError(side + "mean and covariance must be floating point and finite (found NaN, infinity or integers)");
  }
  return dim;
}

// Checks statistics about to be saved (same rules as the loader applies to a file).
void check_savable(const FeatureStatistics& statistics) {
  const std::string what = "cannot save feature statistics: ";
  if (!statistics.mean.defined() || statistics.mean.dim() != 1 || statistics.mean.size(0) == 0) {
    throw InputError(what + "mean must be a non-empty 1-D tensor, got " +
                     shape_string(statistics.mean));
  }
  const int64_t dim = statistics.mean.size(0);
  if (!statistics.covariance.defined() || statistics.covariance.dim() != 2 ||
      statistics.covariance.size(0) != dim || statistics.covariance.size(1) != dim) {
    throw InputError(what + "covariance must be [" + std::to_string(dim) + ", " + std::to_string(dim) + "], got " +
                     shape_string(statistics.covariance));
  }
  if (statistics.count < 2) {
    throw InputError(what + "count must be at least 2, got " + std::to_string(statistics.count));
  }
  if (statistics.features.defined() &&
      (statistics.features.dim() != 2 || statistics.features.size(1) != dim || statistics.features.size(0) == 0)) {
    throw InputError(what + "features must be [N, " + std::to_string(dim) + "] with N >= 1, got " +
                     shape_string(statistics.features));
  }
  for (const auto& [name, tensor] : {std::pair<const char*, const torch::Tensor*>{"mean", &statistics.mean},
                                     {"covariance", &statistics.covariance},
                                     {"features", &statistics.features}}) {
    if (tensor->defined() && (!tensor->is_floating_point() || !all_finite(*tensor))) {
      throw InputError(what + name + " must be floating point and finite");
    }
  }
}

FileError statistics_file_error(const std::string& file, const std::string& what) {
  return FileError("feature statistics file '" + file + "': " + what);
}

}  // namespace

FeatureStatistics feature_statistics(const torch::Tensor& features) {
  if (!features.defined() || features.dim() != 2) {
    throw InputError("feature statistics need features [N, D], got " +
                     shape_string(features));
  }
  if (features.size(0) < 2 || features.size(1) == 0) {
    throw InputError("feature statistics need at least 2 feature vectors of dimension >= 1, got " +
                     shape_string(features));
  }
  if (!features.is_floating_point() || !all_finite(features)) {
    throw InputError("feature statistics: the features must be floating point and finite (found NaN, infinity or integers)");
  }
  FeatureMoments moments;
  constexpr int64_t kRowsPerBlock = 4096;  // 64 MB of float64 at D = 2048
  for (int64_t begin = 0; begin < features.size(0); begin += kRowsPerBlock) {
    moments.add(features.slice(0, begin, std::min(begin + kRowsPerBlock, features.size(0))));
  }
  return moments.statistics();
}

void FeatureMoments::add(const torch::Tensor& rows) {
  if (!rows.defined() || rows.dim() != 2 || (count_ > 0 && rows.size(1) != mean_.size(0))) {
    throw InputError("feature moments: rows must be [B, " + (count_ > 0 ? std::to_string(mean_.size(0)) : std::string("D")) +
                     "], got " + shape_string(rows));
  }
  if (rows.size(0) == 0) return;
  if (!rows.is_floating_point() || !all_finite(rows)) {
    throw InputError("feature moments: the features must be floating point and finite (found NaN, infinity or integers)");
  }
  const torch::Tensor x = rows.to(torch::kCPU, torch::kFloat64);
  FeatureMoments batch;
  batch.count_ = x.size(0);
  batch.mean_ = x.mean(0);
  // Centred before multiplying: no cancellation of E[xx^T] - mu mu^T when the mean is large.
  const torch::Tensor centred = x - batch.mean_.unsqueeze(0);
  batch.scatter_ = centred.t().mm(centred);
  merge(batch);
}

void FeatureMoments::merge(const FeatureMoments& other) {
  if (other.count_ == 0) return;
  if (count_ == 0) {
    *this = other;
    return;
  }
  if (other.mean_.size(0) != mean_.size(0)) {
    throw InputError("feature moments: cannot merge dimension " + std::to_string(other.mean_.size(0)) + " into " +
                     std::to_string(mean_.size(0)));
  }
  const double n_a = static_cast<double>(count_), n_b = static_cast<double>(other.count_), n = n_a + n_b;
  const torch::Tensor delta = other.mean_ - mean_;
  mean_ = mean_ + delta * (n_b / n);
  scatter_ = scatter_ + other.scatter_ + torch::outer(delta, delta) * (n_a * n_b / n);
  count_ += other.count_;
}

FeatureStatistics FeatureMoments::statistics() const {
  if (count_ < 2) {
    throw InputError("feature statistics need at least 2 feature vectors, got " + std::to_string(count_));
  }
  FeatureStatistics statistics;
  statistics.mean = mean_.clone();
  statistics.covariance = symmetrized(scatter_ / static_cast<double>(count_ - 1));
  statistics.count = count_;
  return statistics;
}

torch::Tensor FeatureMoments::to_row() const {
  if (count_ == 0) return {};
  const double header[3] = {static_cast<double>(count_), static_cast<double>(mean_.size(0)), 0.0};
  return torch::cat({torch::tensor(std::vector<double>(header, header + 3), torch::kFloat64), mean_, scatter_.flatten()})
      .unsqueeze(0);
}

FeatureMoments FeatureMoments::from_row(const torch::Tensor& row) {
  const torch::Tensor flat = row.to(torch::kCPU, torch::kFloat64).flatten();
  FeatureMoments moments;
  if (flat.numel() < 3) throw InputError("feature moments row has " + std::to_string(flat.numel()) + " values");
  const auto count = static_cast<int64_t>(flat[0].item<double>());
  const auto dim = static_cast<int64_t>(flat[1].item<double>());
  if (count < 0 || dim < 1 || flat.numel() != 3 + dim + dim * dim) {
    throw InputError("feature moments row of " + std::to_string(flat.numel()) + " values does not hold count " +
                     std::to_string(count) + " and dimension " + std::to_string(dim));
  }
  moments.count_ = count;
  moments.mean_ = flat.slice(0, 3, 3 + dim).clone();
  moments.scatter_ = flat.slice(0, 3 + dim).reshape({dim, dim}).clone();
  return moments;
}

double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b) {
  const int64_t dim_a = checked_dimension(a, "first");
  const int64_t dim_b = checked_dimension(b, "second");
  if (dim_a != dim_b) {
    throw InputError("Frechet distance: feature dimensions differ (" + std::to_string(dim_a) + " vs " +
                     std::to_string(dim_b) + ")");
  }
  const torch::Tensor mu1 = a.mean.to(torch::kCPU, torch::kFloat64);
  const torch::Tensor mu2 = b.mean.to(torch::kCPU, torch::kFloat64);
  const torch::Tensor s1 = symmetrized(a.covariance.to(torch::kCPU, torch::kFloat64));
  const torch::Tensor s2 = symmetrized(b.covariance.to(torch::kCPU, torch::kFloat64));

  // tr (S1 S2)^{1/2}: S1 S2 = R (R S2 R) R^{-1} with R = S1^{1/2}, so S1 S2 is similar to the
  // symmetric PSD matrix R S2 R (by continuity also when S1 is singular) and the trace of its
  // principal square root is the sum of the square roots of the eigenvalues of R S2 R. This
  // stays in real symmetric arithmetic, unlike scipy.linalg.sqrtm(S1 @ S2), which needs a
  // complex Schur form and returns spurious imaginary parts for near-singular covariances.
  const torch::Tensor root_s1 = psd_square_root(s1);
  const torch::Tensor sandwiched = symmetrized(root_s1.mm(s2).mm(root_s1));
  const torch::Tensor eigenvalues = torch::linalg_eigvalsh(sandwiched, "L");
  if (!all_finite(eigenvalues)) {
    throw NumericError("Frechet distance: the eigenvalues of S1^(1/2) S2 S1^(1/2) are NaN or infinite");
  }
  const double trace_sqrt = eigenvalues.clamp_min(0).sqrt().sum().item<double>();
  const double mean_term = (mu1 - mu2).square().sum().item<double>();
  const double distance = mean_term + s1.trace().item<double>() + s2.trace().item<double>() - 2.0 * trace_sqrt;
  // d^2 >= 0 exactly (it is a squared Wasserstein-2 distance); a negative value is rounding.
  return std::max(distance, 0.0);
}

std::string fid_sample_warning(int64_t count, int64_t dim) {
  if (count < dim) {
    return "FID from only " + std::to_string(count) + " feature vectors of dimension " + std::to_string(dim) +
           ": the covariance is rank-deficient and the distance is biased upward; compare only with FIDs from the "
           "same count";
  }
  if (count < 1000) {
    return "FID from only " + std::to_string(count) +
           " feature vectors is strongly biased upward; compare only with FIDs from the same count (10000 or more "
           "is usual)";
  }
  return "";
}

void save_feature_statistics(const std::string& path, const FeatureStatistics& statistics,
                             const nlohmann::json& description, const FeatureStatistics* spatial) {
  check_savable(statistics);
  NamedTensors tensors = {
      {"mean", statistics.mean.to(torch::kCPU, torch::kFloat64)},
      {"covariance", statistics.covariance.to(torch::kCPU, torch::kFloat64)},
  };
  if (statistics.features.defined()) {
    tensors.emplace_back("features", statistics.features.to(torch::kCPU, torch::kFloat32));
  }
  if (spatial != nullptr) {
    check_savable(*spatial);
    tensors.emplace_back("spatial_mean", spatial->mean.to(torch::kCPU, torch::kFloat64));
    tensors.emplace_back("spatial_covariance", spatial->covariance.to(torch::kCPU, torch::kFloat64));
  }
  const nlohmann::json metadata = {{"format", kFormat}, {"count", statistics.count}, {"description", description}};
  save_safetensors(path, tensors, {{kMetadataKey, metadata.dump()}});  // atomic
}

FeatureStatistics load_feature_statistics(const std::string& path, nlohmann::json* description,
                                          FeatureStatistics* spatial) {
  const SafetensorsContents contents = load_safetensors(path);  // FileError naming the file

  const auto found = contents.metadata.find(kMetadataKey);
  if (found == contents.metadata.end()) {
    throw statistics_file_error(path, std::string("metadata key '") + kMetadataKey +
                                          "' is missing (not a guidiff feature statistics file)");
  }
  nlohmann::json metadata;
  try {
    metadata = nlohmann::json::parse(found->second);
  } catch (const nlohmann::json::exception& error) {
    throw statistics_file_error(path, std::string("metadata '") + kMetadataKey + "' is not valid JSON (" +
                                          json_error_text(error) + ")");
  }
  if (!metadata.is_object() || !metadata.contains("format") || !metadata.contains("count") ||
      !metadata.contains("description")) {
    throw statistics_file_error(path, std::string("metadata '") + kMetadataKey +
                                          "' must be an object with keys format, count and description");
  }
  if (metadata.at("format") != kFormat) {
    throw statistics_file_error(path, "metadata format is " + metadata.at("format").dump() +
                                          "; this guidiff reads format " + std::to_string(kFormat));
  }
  const auto& count = metadata.at("count");
  if (!json_integer_fits<int64_t>(count) || count.get<int64_t>() < 2) {
    throw statistics_file_error(path, "metadata count must be an integer >= 2, got " + count.dump());
  }

  for (const auto& [name, tensor] : contents.tensors) {
    if (name != "mean" && name != "covariance" && name != "features" && name != "spatial_mean" &&
        name != "spatial_covariance") {
      throw statistics_file_error(path, "unexpected tensor '" + name + "'");
    }
  }
  const auto tensor = [&](const char* name, torch::ScalarType type, bool required) -> torch::Tensor {
    const torch::Tensor* stored = contents.find(name);
    if (stored == nullptr) {
      if (required) throw statistics_file_error(path, std::string("tensor '") + name + "' is missing");
      return {};
    }
    if (stored->scalar_type() != type) {
      throw statistics_file_error(path, std::string("tensor '") + name + "' must be " + c10::toString(type) +
                                            ", got " + c10::toString(stored->scalar_type()));
    }
    if (!all_finite(*stored)) {
      throw statistics_file_error(path, std::string("tensor '") + name + "' holds NaN or infinity");
    }
    return *stored;
  };
  FeatureStatistics statistics;
  statistics.mean = tensor("mean", torch::kFloat64, true);
  statistics.covariance = tensor("covariance", torch::kFloat64, true);
  statistics.features = tensor("features", torch::kFloat32, false);
  statistics.count = count.get<int64_t>();

  if (statistics.mean.dim() != 1 || statistics.mean.size(0) == 0) {
    throw statistics_file_error(path, "tensor 'mean' must be [D] with D >= 1, got " + shape_string(statistics.mean));
  }
  const int64_t dim = statistics.mean.size(0);
  if (statistics.covariance.dim() != 2 || statistics.covariance.size(0) != dim ||
      statistics.covariance.size(1) != dim) {
    throw statistics_file_error(path, "tensor 'covariance' must be [" + std::to_string(dim) + ", " +
                                          std::to_string(dim) + "] to match 'mean', got " +
                                          shape_string(statistics.covariance));
  }
  if (statistics.features.defined() && (statistics.features.dim() != 2 || statistics.features.size(0) == 0 ||
                                        statistics.features.size(1) != dim)) {
    throw statistics_file_error(path, "tensor 'features' must be [N, " + std::to_string(dim) +
                                          "] to match 'mean', got " + shape_string(statistics.features));
  }
  const torch::Tensor spatial_mean = tensor("spatial_mean", torch::kFloat64, false);
  const torch::Tensor spatial_covariance = tensor("spatial_covariance", torch::kFloat64, false);
  if (spatial_mean.defined() != spatial_covariance.defined() ||
      (spatial_mean.defined() && (spatial_mean.dim() != 1 || spatial_covariance.dim() != 2 ||
                                  spatial_covariance.size(0) != spatial_mean.size(0) ||
                                  spatial_covariance.size(1) != spatial_mean.size(0)))) {
    throw statistics_file_error(path, "tensors 'spatial_mean' " + shape_string(spatial_mean) + " and 'spatial_covariance' " +
                                          shape_string(spatial_covariance) + " must come together as [S] and [S, S]");
  }
  if (spatial != nullptr && spatial_mean.defined()) {
    spatial->mean = spatial_mean;
    spatial->covariance = spatial_covariance;
    spatial->count = statistics.count;
  }
  if (description != nullptr) *description = metadata.at("description");
  return statistics;
}

}  // namespace guidiff
