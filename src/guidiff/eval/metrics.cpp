#include "guidiff/eval/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {
namespace {

// Rows of the distance matrix computed at a time: a [1024, 10000] float64 block is 80 MB,
// where the whole 10k x 10k matrix would be 800 MB.
constexpr int64_t kBlockRows = 1024;

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
  for (int64_t begin = 0; begin < rows.size(0); begin += kBlockRows) {
    const int64_t end = std::min(begin + kBlockRows, rows.size(0));
    visit(begin, torch::cdist(rows.slice(0, begin, end), columns));
  }
}

// r_k(x) for every point x of the set: the distance to its k-th nearest neighbour, x itself
// excluded. A point's distance to itself (0) is the smallest in its row, so r_k is the
// (k+1)-th smallest distance of the row; duplicates of x count as neighbours at distance 0.
torch::Tensor kth_neighbour_radii(const torch::Tensor& points, int64_t k) {
  torch::Tensor radii = torch::empty({points.size(0)}, torch::kFloat64);
  for_each_distance_block(points, points, [&](int64_t begin, const torch::Tensor& distances) {
    radii.slice(0, begin, begin + distances.size(0)).copy_(std::get<0>(distances.kthvalue(k + 1, 1)));
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

PrecisionRecall precision_recall(const torch::Tensor& real, const torch::Tensor& fake, int64_t k) {
  const std::string metric = "precision/recall";
  check_k(k, metric);
  const torch::Tensor real_points = checked_points(real, k + 1, metric, "real", k);
  const torch::Tensor fake_points = checked_points(fake, k + 1, metric, "fake", k);
  check_same_dimension(real_points, fake_points, metric);

  const torch::Tensor real_radii = kth_neighbour_radii(real_points, k);
  const torch::Tensor fake_radii = kth_neighbour_radii(fake_points, k);
  // One pass over the fake x real distances serves both directions: row j tested against the
  // real radii (columns) says whether fake_j is in the real manifold; column i tested against
  // the fake radii (rows) says whether real_i is in fake_j's ball.
  int64_t fake_inside = 0;
  torch::Tensor real_inside = torch::zeros({real_points.size(0)}, torch::kBool);
  for_each_distance_block(fake_points, real_points, [&](int64_t begin, const torch::Tensor& distances) {
    fake_inside += distances.le(real_radii.unsqueeze(0)).any(1).sum().item<int64_t>();
    const torch::Tensor block_radii = fake_radii.slice(0, begin, begin + distances.size(0));
    real_inside.logical_or_(distances.le(block_radii.unsqueeze(1)).any(0));
  });
  PrecisionRecall result;
  result.precision = static_cast<double>(fake_inside) / static_cast<double>(fake_points.size(0));
  result.recall = real_inside.to(torch::kFloat64).mean().item<double>();
  return result;
}

DensityCoverage density_coverage(const torch::Tensor& real, const torch::Tensor& fake, int64_t k) {
  const std::string metric = "density/coverage";
  check_k(k, metric);
  const torch::Tensor real_points = checked_points(real, k + 1, metric, "real", k);
  const torch::Tensor fake_points = checked_points(fake, 1, metric, "fake", k);
  check_same_dimension(real_points, fake_points, metric);

  const torch::Tensor real_radii = kth_neighbour_radii(real_points, k);
  int64_t memberships = 0;  // pairs (i, j) with fake_j in B(real_i, r_k(real_i))
  torch::Tensor covered = torch::zeros({real_points.size(0)}, torch::kBool);
  for_each_distance_block(fake_points, real_points, [&](int64_t /*begin*/, const torch::Tensor& distances) {
    const torch::Tensor inside = distances.le(real_radii.unsqueeze(0));
    memberships += inside.sum().item<int64_t>();
    covered.logical_or_(inside.any(0));
  });
  DensityCoverage result;
  result.density = static_cast<double>(memberships) / (static_cast<double>(k) * static_cast<double>(fake_points.size(0)));
  result.coverage = covered.to(torch::kFloat64).mean().item<double>();
  return result;
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
