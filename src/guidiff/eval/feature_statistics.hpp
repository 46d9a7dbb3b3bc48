// Gaussian summaries of feature sets (mean and covariance of, e.g., Inception pool features),
// the Frechet distance between two of them (FID), and the reference-statistics cache file.
//
// The cache file is safetensors (io/safetensors.hpp) holding
//   "mean"        F64 [D]
//   "covariance"  F64 [D, D]
//   "features"    F32 [N, D]   optional: the raw features, which precision/recall and
//                              density/coverage (metrics.hpp) need besides FID
//   "spatial_mean" F64 [S], "spatial_covariance" F64 [S, S]   optional: a second feature
//                              set's moments (sFID's spatial features)
// and metadata "guidiff_feature_statistics" = JSON {"format": 1, "count": <samples behind the
// mean and covariance>, "description": <free JSON, e.g. dataset name and feature network>}.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace guidiff {

struct FeatureStatistics {
  torch::Tensor mean;        // float64 [D]
  torch::Tensor covariance;  // float64 [D, D], unbiased (divided by count - 1)
  int64_t count = 0;         // number of feature vectors the moments were computed from
  // Optional (may be undefined): the feature vectors themselves, float32 [N, D]. N may differ
  // from `count` (a subset kept for the nearest-neighbour metrics).
  torch::Tensor features;
};

// Mean and scatter of feature vectors streamed in batches, in float64, in O(D^2) memory
// whatever the number of rows: each batch's own mean and centred scatter are merged with the
// pairwise update of Chan, Golub & LeVeque (1979): with delta = mean_b - mean_a and
// n = n_a + n_b, mean = mean_a + delta n_b / n and M = M_a + M_b + delta delta^T n_a n_b / n.
class FeatureMoments {
 public:
  // Adds rows [B, D] (any floating dtype and device; B may be 0). Throws InputError if the rows
  // are not 2-D, D differs from earlier rows', or a value is NaN or infinite.
  void add(const torch::Tensor& rows);
  // Adds another accumulation (same D, or either empty).
  void merge(const FeatureMoments& other);
  int64_t count() const { return count_; }
  // Mean and unbiased covariance; `features` undefined. Throws InputError if count < 2.
  FeatureStatistics statistics() const;
  // The accumulation as one float64 row [3 + D + D*D] (count, D, 0, mean, scatter), undefined
  // when empty, and back: for gathering the shares of a distributed run.
  torch::Tensor to_row() const;
  static FeatureMoments from_row(const torch::Tensor& row);

 private:
  int64_t count_ = 0;
  torch::Tensor mean_;     // float64 [D]
  torch::Tensor scatter_;  // float64 [D, D]: sum of (x - mean)(x - mean)^T
};

// Mean and unbiased covariance of features [N, D] (any floating dtype), computed in float64
// in blocks of rows (FeatureMoments), so a 50,000 x 2048 set needs no float64 copy of itself;
// `features` of the result stays undefined. Throws InputError if features is not 2-D, has
// N < 2 rows or D = 0 columns, or holds NaN or infinity.
FeatureStatistics feature_statistics(const torch::Tensor& features);

// The Frechet distance between the Gaussians N(mu1, S1) and N(mu2, S2):
//   d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})
// (Dowson & Landau 1982; as FID, Heusel et al. 2017, eq. 6). Symmetric in its arguments up
// to rounding and never negative. Throws InputError if the dimensions differ, a tensor is
// missing or malformed, or holds NaN or infinity; NumericError if the eigendecomposition
// produces non-finite values.
double frechet_distance(const FeatureStatistics& a, const FeatureStatistics& b);

// "" when `count` feature vectors of dimension `dim` give a usable FID, otherwise a one-line
// warning naming the count: below `dim` the covariance is rank-deficient, and below 1000 FID
// is strongly biased upward (the bias falls roughly as 1/count; Chong & Forsyth 2020), so
// such numbers are comparable only to FIDs computed from the same count.
std::string fid_sample_warning(int64_t count, int64_t dim);

// Writes `statistics` (and its features, when defined, as float32) with `description` to
// `path` atomically (format above). Throws InputError if the statistics are malformed (mean
// not [D], covariance not [D, D], count < 2, features not [N, D]) or not finite; FileError if
// the file cannot be written.
void save_feature_statistics(const std::string& path, const FeatureStatistics& statistics,
                             const nlohmann::json& description, const FeatureStatistics* spatial = nullptr);

// Reads a file written by save_feature_statistics; stores its description in `*description`
// when given. Throws FileError naming the file (and the tensor or key at fault) when it is
// missing, truncated or not safetensors, lacks "mean" or "covariance" or the metadata, or a
// tensor has the wrong dtype, a shape that disagrees with the others, or non-finite values.
// The spatial moments, when the file has them and `spatial` is given, go to `*spatial` (its mean
// stays undefined otherwise; count as the main statistics').
FeatureStatistics load_feature_statistics(const std::string& path, nlohmann::json* description = nullptr,
                                          FeatureStatistics* spatial = nullptr);

}  // namespace guidiff
