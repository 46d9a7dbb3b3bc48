// Sample-quality metrics on feature vectors and classifier outputs: Inception Score,
// improved precision and recall, density and coverage, and class accuracy (FID and its
// statistics cache are in feature_statistics.hpp, included here). Everything runs on CPU in
// float64; inputs may be any floating dtype and device.
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "guidiff/eval/feature_statistics.hpp"

namespace guidiff {

// Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the
// mean prediction over the split. probabilities: [N, K], rows non-negative and summing to 1
// within 1e-3. The rows are cut into `splits` consecutive parts, part i being rows
// [i N / splits, (i + 1) N / splits) (equal when splits divides N, as in the reference code);
// returns the mean score over the parts and, through `std_out`, their population standard
// deviation. Throws InputError if the shape is wrong, a row is not a distribution, a value is
// NaN, or splits is outside [1, N].
double inception_score(const torch::Tensor& probabilities, int64_t splits, double* std_out = nullptr);

// The manifold of a point set is the union of the closed balls B(x, r_k(x)) around its points,
// r_k(x) being the distance from x to its k-th nearest neighbour in the set (x itself
// excluded; duplicates count).
struct PrecisionRecall {
  double precision = 0;  // fraction of fake points inside the real manifold
  double recall = 0;     // fraction of real points inside the fake manifold
};

// Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-3), Euclidean distance in
// feature space. real [N, D], fake [M, D]. Throws InputError if the dimensions differ, a set
// has no more than k points (N <= k or M <= k), k < 1, or a value is NaN or infinite.
PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake, int64_t k = 3);

struct DensityCoverage {
  double density = 0;   // mean number of real balls holding a fake point, divided by k (may exceed 1)
  double coverage = 0;  // fraction of real balls holding at least one fake point
};

// Density and coverage (Naeem et al. 2020, eq. 3-4), with balls around the real points only:
//   density  = 1/(k M) sum_j sum_i 1[fake_j in B(real_i, r_k(real_i))]
//   coverage = 1/N     sum_i 1[exists j: fake_j in B(real_i, r_k(real_i))]
// Balls are closed (distance <= radius), as for precision/recall; the authors' code uses `<`,
// which differs only for points exactly on a sphere. Throws InputError as precision_recall
// (only the real set needs more than k points; the fake set needs at least one).
DensityCoverage density_coverage(const torch::Tensor& real, const torch::Tensor& fake, int64_t k = 5);

// Both of the above from one set of distance passes: the real x real distances once (both
// metrics' real balls), the fake x fake once (precision/recall's fake balls) and the fake x real
// once, where the two functions alone make five passes. Gives the same values as calling them.
// A k of 0 leaves that metric out (its fields stay 0); otherwise throws as the functions do.
struct NeighbourMetrics {
  PrecisionRecall precision_recall;
  DensityCoverage density_coverage;
};
NeighbourMetrics neighbour_metrics(const torch::Tensor& real, const torch::Tensor& fake, int64_t precision_recall_k = 3,
                                   int64_t density_coverage_k = 5);

// The fraction of rows whose argmax equals the requested label. probabilities_or_logits:
// [N, C] (argmax is the same for both); requested_labels: integer [N] in [0, C). Throws
// InputError if the shapes disagree, N == 0, a label is out of range or a value is NaN.
double class_accuracy(const torch::Tensor& probabilities_or_logits, const torch::Tensor& requested_labels);

// The accuracy among the rows that requested class c, for c = 0..num_classes-1, float64
// [num_classes]; NaN for a class no row requested. Labels must lie in [0, min(C, num_classes)).
// Throws InputError as class_accuracy, or if num_classes < 1.
torch::Tensor per_class_accuracy(const torch::Tensor& probabilities_or_logits, const torch::Tensor& requested_labels,
                                 int64_t num_classes);

// Background cleanliness: the fraction of pixels that are near-black once quantized as an
// 8-bit PNG stores them (round((x + 1) * 127.5) <= kNearBlackLevel in every channel).
// Fashion-MNIST's backgrounds are exactly 0, so about half its pixels count; grey speckle on
// a generated background lowers the fraction, which FID in a classifier's feature space can
// miss. images: [N, C, H, W] in [-1, 1]. NaN pixels never count. Throws InputError for an
// empty or non-4-D tensor.
constexpr int64_t kNearBlackLevel = 8;
double near_black_fraction(const torch::Tensor& images);

}  // namespace guidiff
