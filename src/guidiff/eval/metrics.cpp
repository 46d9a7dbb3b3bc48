#include "guidiff/eval/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {
namespace {

// Entries of the distance matrix computed at a time: 10M float64 entries are 80 MB, e.g. 1024
// rows of 10,000 columns, where the whole 10k x 10k matrix would be 800 MB. A fixed count of
// rows instead (1024 rows of 50,000 columns: 410 MB per temporary) made each block's several
// temporaries outgrow the heap's 1 GiB trim threshold (core/allocator.hpp), and at 50,000
// points more than half the CPU time went to the kernel handing pages back and faulting them
// in again.
// At most 1024 rows: more buys nothing from the matrix products.
constexpr int64_t kBlockEntries = 10'000'000;
constexpr int64_t kMinBlockRows = 16, kMaxBlockRows = 1024;

// A point set as float64 CPU [N, D], after checking it has at least `minimum_points` rows.
torch::Tensor checked_points(const torch::Tensor& points, int64_t minimum_points, const std::string& metric,
                             const char* which, int64_t k) {
  if (!points.defined() || points.dim() != 2 || points.size(1) == 0) {
    throw InputError(metric + ": " + which + " features must be [N, D] with D >= 1, got " + shape_string(points));
  }
  if (points.size(0) < minimum_points) {
    throw InputError(metric + ": " + which + " set has " + std::to_string(points.size(0)) + " points but needs " +
                     (minimum_points > 1 ? "more than k = " + std::to_string(k) : std::string("at least 1")));
  }
  if (!points.is_floating_point() || !points.isfinite().all().item<bool>()) {
    throw InputError(metric + ": " + which + " features must be floating point and finite (found NaN, infinity or integers)");
  }
  return points.to(torch::kCPU, torch::kFloat64).contiguous();
}

void check_same_dimension(const torch::Tensor& real, const torch::Tensor& fake, const std::string& metric) {
  if (real.size(1) != fake.size(1)) {
    throw InputError(metric + ": real and fake feature dimensions differ (" + std::to_string(real.size(1)) + " vs " +
                     std::to_string(fake.size(1)) + ")");
  }
}

void check_k(int64_t k, const std::string& metric) {
  if (k < 1) throw InputError(metric + ": k must be at least 1, got " + std::to_string(k));
}

// Calls visit(begin, distances) for consecutive row blocks of the [rows.size(0), columns.size(0)]
// Euclidean distance matrix, distances covering rows [begin, begin + distances.size(0)).
// torch::cdist switches to the |a|^2 + |b|^2 - 2 a.b form (matrix products) above 25 rows or
// columns: fast, at a relative error near 1e-16 in squared distance, so only points within
// rounding of a sphere can change sides.
void for_each_distance_block(const torch::Tensor& rows, const torch::Tensor& columns,
                             const std::function<void(int64_t, const torch::Tensor&)>& visit) {
  const int64_t block_rows =
      std::clamp(kBlockEntries / std::max<int64_t>(columns.size(0), 1), kMinBlockRows, kMaxBlockRows);
  for (int64_t begin = 0; begin < rows.size(0); begin += block_rows) {
    const int64_t end = std::min(begin + block_rows, rows.size(0));
    visit(begin, torch::cdist(rows.slice(0, begin, end), columns));
  }
}

// r_k(x) for every point x of the set and each k of `ks`: the distance to its k-th nearest
// neighbour, x itself excluded. A point's distance to itself (0) is the smallest in its row, so
// r_k is the (k+1)-th smallest distance of the row; duplicates of x count as neighbours at
// distance 0. Returns float64 [N, ks.size()], column i for ks[i]: one pass over the N x N
// distances serves every k (precision/recall's k = 3 and density/coverage's k = 5).
torch::Tensor kth_neighbour_radii(const torch::Tensor& points, const std::vector<int64_t>& ks) {
  const int64_t largest_k = *std::max_element(ks.begin(), ks.end());
  const torch::Tensor column_index = torch::tensor(ks, torch::kLong);  // index k of a sorted row: its (k+1)-th smallest
  torch::Tensor radii = torch::empty({points.size(0), static_cast<int64_t>(ks.size())}, torch::kFloat64);
  for_each_distance_block(points, points, [&](int64_t begin, const torch::Tensor& distances) {
    const torch::Tensor nearest =
        std::get<0>(distances.topk(largest_k + 1, 1, /*largest=*/false, /*sorted=*/true));
    radii.slice(0, begin, begin + distances.size(0)).copy_(nearest.index_select(1, column_index));
  });
  return radii;
}

// Which rows predicted their requested label (bool [N]), after checking both inputs.
torch::Tensor correct_predictions(const torch::Tensor& outputs, const torch::Tensor& labels, const char* metric) {
  const std::string name = metric;
  if (!outputs.defined() || outputs.dim() != 2 || outputs.size(0) == 0 || outputs.size(1) == 0) {
    throw InputError(name + ": classifier outputs must be [N, C] with N, C >= 1, got " + shape_string(outputs));
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != outputs.size(0)) {
    throw InputError(name + ": requested labels must be [" + std::to_string(outputs.size(0)) +
                     "] to match the classifier outputs, got " + shape_string(labels));
  }
  if (labels.is_floating_point() || labels.is_complex() || labels.scalar_type() == torch::kBool) {
    throw InputError(name + ": requested labels must be integers, got " + c10::toString(labels.scalar_type()));
  }
  if (!outputs.is_floating_point() || outputs.isnan().any().item<bool>()) {
    throw InputError(name + ": classifier outputs must be floating point without NaN");
  }
  const torch::Tensor requested = labels.to(torch::kCPU, torch::kLong);
  const int64_t classes = outputs.size(1);
  if (requested.lt(0).any().item<bool>() || requested.ge(classes).any().item<bool>()) {
    throw InputError(name + ": requested labels must lie in [0, " + std::to_string(classes) + "), got " +
                     std::to_string(requested.min().item<int64_t>()) + " .. " +
                     std::to_string(requested.max().item<int64_t>()));
  }
  return outputs.to(torch::kCPU).argmax(1).eq(requested);
}

}  // namespace

double inception_score(const torch::Tensor& probabilities, int64_t splits, double* std_out) {
  const std::string metric = "inception score";
  if (!probabilities.defined() || probabilities.dim() != 2 || probabilities.size(0) == 0 ||
      probabilities.size(1) == 0) {
    throw InputError(metric + ": class probabilities must be [N, K] with N, K >= 1, got " + shape_string(probabilities));
  }
  const int64_t count = probabilities.size(0);
  if (splits < 1 || splits > count) {
    throw InputError(metric + ": splits must lie in [1, " + std::to_string(count) + "], got " + std::to_string(splits));
  }
  if (!probabilities.is_floating_point() || !probabilities.isfinite().all().item<bool>()) {
    throw InputError(metric + ": class probabilities must be floating point and finite");
  }
  const torch::Tensor p = probabilities.to(torch::kCPU, torch::kFloat64);
  if (p.lt(0).any().item<bool>()) throw InputError(metric + ": class probabilities must be non-negative");
  const torch::Tensor off = (p.sum(1) - 1.0).abs();
  const int64_t worst = off.argmax().item<int64_t>();
  if (off[worst].item<double>() > 1e-3) {
    throw InputError(metric + ": row " + std::to_string(worst) + " of the class probabilities sums to " +
                     std::to_string(p[worst].sum().item<double>()) + ", not 1 (pass softmax outputs, not logits)");
  }

  torch::Tensor scores = torch::empty({splits}, torch::kFloat64);
  for (int64_t i = 0; i < splits; ++i) {
    const torch::Tensor part = p.slice(0, i * count / splits, (i + 1) * count / splits);
    const torch::Tensor marginal = part.mean(0, /*keepdim=*/true);  // p(y) over this split
    // KL(p(y|x) || p(y)) = sum_y p log p - p log p(y); xlogy makes 0 log 0 = 0, and p(y) > 0
    // wherever some p(y|x) > 0, so no term is infinite.
    const torch::Tensor kl = (torch::xlogy(part, part) - torch::xlogy(part, marginal)).sum(1);
    scores[i] = kl.mean().exp();
  }
  const double mean = scores.mean().item<double>();
  if (std_out != nullptr) *std_out = scores.std(/*unbiased=*/false).item<double>();  // numpy's np.std
  return mean;
}

NeighbourMetrics neighbour_metrics(const torch::Tensor& real, const torch::Tensor& fake, int64_t precision_recall_k,
                                   int64_t density_coverage_k) {
  const bool want_pr = precision_recall_k > 0, want_dc = density_coverage_k > 0;
  const std::string metric = want_pr && want_dc ? "precision/recall and density/coverage"
                             : want_pr          ? "precision/recall"
                                                : "density/coverage";
  if (!want_pr && !want_dc) throw InputError("neighbour metrics: neither metric was asked for");
  if (precision_recall_k != 0) check_k(precision_recall_k, metric);
  if (density_coverage_k != 0) check_k(density_coverage_k, metric);
  const int64_t real_k = std::max(precision_recall_k, density_coverage_k);
  const torch::Tensor real_points = checked_points(real, real_k + 1, metric, "real", real_k);
  const torch::Tensor fake_points =
      checked_points(fake, want_pr ? precision_recall_k + 1 : 1, metric, "fake", precision_recall_k);
  check_same_dimension(real_points, fake_points, metric);

  // One pass over the real x real distances gives the real balls of both metrics.
  std::vector<int64_t> real_ks;
  if (want_pr) real_ks.push_back(precision_recall_k);
  if (want_dc) real_ks.push_back(density_coverage_k);
  const torch::Tensor real_radii = kth_neighbour_radii(real_points, real_ks);
  const torch::Tensor real_radii_pr = want_pr ? real_radii.select(1, 0).unsqueeze(0) : torch::Tensor();
  const torch::Tensor real_radii_dc = want_dc ? real_radii.select(1, want_pr ? 1 : 0).unsqueeze(0) : torch::Tensor();
  const torch::Tensor fake_radii =
      want_pr ? kth_neighbour_radii(fake_points, {precision_recall_k}).select(1, 0) : torch::Tensor();

  // One pass over the fake x real distances serves every test. Row j against the real radii
  // (columns) says whether fake_j lies in the real manifold (precision) and in which real balls
  // (density); column i against the fake radii (rows) says whether real_i lies in fake_j's ball
  // (recall); a real ball holding any row is covered (coverage).
  int64_t fake_inside = 0;   // fake points in the real manifold
  int64_t memberships = 0;   // pairs (i, j) with fake_j in B(real_i, r_k(real_i)), density's k
  torch::Tensor real_inside = torch::zeros({real_points.size(0)}, torch::kBool);
  torch::Tensor covered = torch::zeros({real_points.size(0)}, torch::kBool);
  for_each_distance_block(fake_points, real_points, [&](int64_t begin, const torch::Tensor& distances) {
    if (want_pr) {
      fake_inside += distances.le(real_radii_pr).any(1).sum().item<int64_t>();
      const torch::Tensor block_radii = fake_radii.slice(0, begin, begin + distances.size(0));
      real_inside.logical_or_(distances.le(block_radii.unsqueeze(1)).any(0));
    }
    if (want_dc) {
      const torch::Tensor inside = distances.le(real_radii_dc);
      memberships += inside.sum().item<int64_t>();
      covered.logical_or_(inside.any(0));
    }
  });
  const double fake_count = static_cast<double>(fake_points.size(0));
  NeighbourMetrics result;
  if (want_pr) {
    result.precision_recall.precision = static_cast<double>(fake_inside) / fake_count;
    result.precision_recall.recall = real_inside.to(torch::kFloat64).mean().item<double>();
  }
  if (want_dc) {
    result.density_coverage.density =
        static_cast<double>(memberships) / (static_cast<double>(density_coverage_k) * fake_count);
    result.density_coverage.coverage = covered.to(torch::kFloat64).mean().item<double>();
  }
  return result;
}

PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake, int64_t k) {
  check_k(k, "precision/recall");
  return neighbour_metrics(real, fake, k, 0).precision_recall;
}

DensityCoverage density_coverage(const torch::Tensor& real, const torch::Tensor& fake, int64_t k) {
  check_k(k, "density/coverage");
  return neighbour_metrics(real, fake, 0, k).density_coverage;
}

double class_accuracy(const torch::Tensor& probabilities_or_logits, const torch::Tensor& requested_labels) {
  return correct_predictions(probabilities_or_logits, requested_labels, "class accuracy")
      .to(torch::kFloat64)
      .mean()
      .item<double>();
}

double near_black_fraction(const torch::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.numel() == 0) {
    throw InputError("near-black fraction: expected images [N, C, H, W] with N > 0, got " +
                     (images.defined() ? shape_string(images) : std::string("no tensor")));
  }
  // The 8-bit level a PNG would store; NaN compares false, so it is never black.
  const torch::Tensor level = ((images.to(torch::kFloat64) + 1.0) * 127.5).round();
  const torch::Tensor black = level.le(static_cast<double>(kNearBlackLevel)).all(1);
  return black.to(torch::kFloat64).mean().item<double>();
}

torch::Tensor per_class_accuracy(const torch::Tensor& probabilities_or_logits, const torch::Tensor& requested_labels,
                                 int64_t num_classes) {
  if (num_classes < 1) {
    throw InputError("per-class accuracy: num_classes must be at least 1, got " + std::to_string(num_classes));
  }
  const torch::Tensor correct =
      correct_predictions(probabilities_or_logits, requested_labels, "per-class accuracy").to(torch::kFloat64);
  const torch::Tensor labels = requested_labels.to(torch::kCPU, torch::kLong);
  if (labels.ge(num_classes).any().item<bool>()) {
    throw InputError("per-class accuracy: requested label " + std::to_string(labels.max().item<int64_t>()) +
                     " is not below num_classes = " + std::to_string(num_classes));
  }
  const torch::Tensor requested = torch::bincount(labels, {}, num_classes).to(torch::kFloat64);
  const torch::Tensor hits = torch::bincount(labels, correct, num_classes);
  return torch::where(requested.gt(0), hits / requested.clamp_min(1),
                      torch::full({num_classes}, std::numeric_limits<double>::quiet_NaN(), torch::kFloat64));
}

}  // namespace guidiff
