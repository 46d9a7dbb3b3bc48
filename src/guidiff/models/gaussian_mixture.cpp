#include "guidiff/models/gaussian_mixture.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/json_integer.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff {

namespace {

constexpr double kLogTwoPi = 1.8378770664093454835606594728112;  // log(2 pi)

const torch::TensorOptions kFloat64 = torch::TensorOptions().dtype(torch::kFloat64);

// The covariances' eigendecomposition S_k = U_k diag(lambda_k) U_k^T. Because the noised
// covariance abar S_k + (1 - abar) I = U_k diag(abar lambda_k + 1 - abar) U_k^T shares U_k,
// one decomposition serves every noise level: log-determinants and Mahalanobis distances
// for N samples x K components cost O(N K D^2) instead of N K Cholesky factorisations.
// Diagonal covariances (the demo's) skip U entirely.
struct CovarianceEigen {
  torch::Tensor eigenvalues;   // float64 [K, D]
  torch::Tensor eigenvectors;  // float64 [K, D, D] (columns), or undefined when S is diagonal
};

// Whether every off-diagonal entry of [K, D, D] is exactly zero. The diagonal of an SPD
// matrix is strictly positive, so that holds iff exactly K * D entries are non-zero (one
// contiguous scan, no [K, D, D] temporary).
bool all_diagonal(const torch::Tensor& covariances) {
  const int64_t diagonal_entries = covariances.size(0) * covariances.size(1);
  return torch::count_nonzero(covariances).item<int64_t>() == diagonal_entries;
}

CovarianceEigen eigen_of(const torch::Tensor& covariances) {
  if (all_diagonal(covariances)) {
    return {torch::diagonal(covariances, 0, -2, -1).contiguous(), torch::Tensor()};
  }
  auto [values, vectors] = torch::linalg_eigh(covariances);
  return {values, vectors};
}

// The mixture's components under noise level abar, seen from points x, in each
// component's eigenbasis: residual = U_k^T (x - sqrt(abar) m_k) and the matching
// variances abar lambda_k + (1 - abar). Both float64 [N, K, D]; differentiable in x.
struct NoisedResiduals {
  torch::Tensor residual;
  torch::Tensor variance;
  CovarianceEigen eigen;
};

torch::Tensor checked_points(const GaussianMixture& mixture, const torch::Tensor& x) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != mixture.dim()) {
    std::ostringstream message;
    message << "gaussian mixture: x must be [N, " << mixture.dim() << "], got "
            << (x.defined() ? x.sizes() : torch::IntArrayRef{});
    throw InputError(message.str());
  }
  if (!x.is_floating_point()) throw InputError("gaussian mixture: x must be floating point");
  return x.to(torch::kFloat64);
}

// abar per sample as float64 [N] on x's device; a single value is broadcast.
torch::Tensor checked_alpha_squared(const torch::Tensor& abar, const torch::Tensor& x) {
  if (!abar.defined()) throw InputError("gaussian mixture: abar is undefined");
  auto values = abar.detach().to(x.device(), torch::kFloat64).reshape({-1});
  if (values.numel() == 1) values = values.expand({x.size(0)});
  if (values.numel() != x.size(0)) {
    throw InputError("gaussian mixture: abar must have one value per sample (" +
                     std::to_string(x.size(0)) + "), got " + std::to_string(values.numel()));
  }
  if (values.numel() > 0 &&
      !(values.isfinite().all().item<bool>() && values.ge(0).all().item<bool>() &&
        values.le(1).all().item<bool>())) {
    throw InputError("gaussian mixture: abar must lie in [0, 1]");
  }
  return values;
}

NoisedResiduals noised_residuals(const GaussianMixture& mixture, const torch::Tensor& x,
                                 const torch::Tensor& abar) {
  const auto device = x.device();
  const auto means = mixture.means.to(device, torch::kFloat64);
  CovarianceEigen eigen = eigen_of(mixture.covariances.to(device, torch::kFloat64));
  const auto a = abar.view({-1, 1, 1});
  // x_t = sqrt(abar) x0 + sqrt(1 - abar) e: component mean sqrt(abar) m_k (DDPM eq. 4).
  auto difference = x.unsqueeze(1) - a.sqrt() * means.unsqueeze(0);  // [N, K, D]
  auto residual = eigen.eigenvectors.defined()
                      ? torch::einsum("kdj,nkd->nkj", {eigen.eigenvectors, difference})
                      : difference;
  auto variance = a * eigen.eigenvalues.unsqueeze(0) + (1.0 - a);  // [N, K, D]
  return {residual, variance, std::move(eigen)};
}

torch::Tensor log_joint_from(const GaussianMixture& mixture, const NoisedResiduals& noised) {
  const auto log_weights = mixture.weights.to(noised.residual.device(), torch::kFloat64).log();
  const auto mahalanobis = (noised.residual.square() / noised.variance).sum(-1);  // [N, K]
  const auto log_det = noised.variance.log().sum(-1);                             // [N, K]
  const double dim = static_cast<double>(mixture.dim());
  return log_weights.unsqueeze(0) - 0.5 * (dim * kLogTwoPi + log_det + mahalanobis);
}

// -Sigma_k^{-1} (x - sqrt(abar) m_k) per sample and component, [N, K, D].
torch::Tensor component_scores(const NoisedResiduals& noised) {
  auto whitened = noised.residual / noised.variance;
  if (noised.eigen.eigenvectors.defined()) {
    whitened = torch::einsum("kdj,nkj->nkd", {noised.eigen.eigenvectors, whitened});
  }
  return -whitened;
}

// bool [K, C]: component k belongs to class c.
torch::Tensor class_membership(const GaussianMixture& mixture, torch::Device device) {
  const auto classes = torch::arange(mixture.num_classes, torch::dtype(torch::kInt64).device(device));
  return mixture.component_class.to(device, torch::kInt64).unsqueeze(1).eq(classes.unsqueeze(0));
}

// Labels y in [0, C] (C = all classes) as int64 [N] on x's device.
torch::Tensor checked_labels(const GaussianMixture& mixture, const torch::Tensor& y, int64_t n,
                             const torch::Device& device) {
  if (y.dim() != 1 || y.size(0) != n || y.is_floating_point() || y.is_complex()) {
    throw InputError("class labels y must be integer [" + std::to_string(n) + "]");
  }
  auto labels = y.to(device, torch::kInt64);
  if (n > 0 && (labels.min().item<int64_t>() < 0 ||
                labels.max().item<int64_t>() > mixture.num_classes)) {
    throw InputError("class labels y must lie in [0, " + std::to_string(mixture.num_classes) +
                     "] (" + std::to_string(mixture.num_classes) + " = unconditional)");
  }
  return labels;
}

// Flattens x_t [N, ...] to [N, D] for the mixture.
torch::Tensor flattened(const GaussianMixture& mixture, const torch::Tensor& x_t) {
  if (!x_t.defined() || x_t.dim() < 1 || x_t.numel() != x_t.size(0) * mixture.dim()) {
    std::ostringstream message;
    message << "mixture model: x_t must have " << mixture.dim() << " values per sample, got shape "
            << (x_t.defined() ? x_t.sizes() : torch::IntArrayRef{});
    throw InputError(message.str());
  }
  return x_t.reshape({x_t.size(0), mixture.dim()});
}

// The demo's 2-D layout: four classes, one per quadrant; classes 0 and 3 have two
// components each, so guidance must pick a class, not a component.
struct DemoComponent {
  double weight, mean_x, mean_y, var_x, var_y;
  int64_t label;
};
constexpr DemoComponent kDemoComponents[] = {
    {0.15, -0.70, 0.40, 0.010, 0.004, 0},  // class 0: upper left, two lobes
    {0.15, -0.40, 0.70, 0.004, 0.010, 0},
    {0.25, 0.60, 0.60, 0.010, 0.010, 1},   // class 1: upper right
    {0.25, -0.60, -0.60, 0.008, 0.010, 2},  // class 2: lower left
    {0.10, 0.35, -0.55, 0.006, 0.006, 3},  // class 3: lower right, two lobes
    {0.10, 0.75, -0.75, 0.006, 0.006, 3},
};
constexpr double kDemoExtraOffset = 0.15;    // |mean| in coordinates beyond the first two
constexpr double kDemoExtraVariance = 0.01;  // variance in coordinates beyond the first two

std::string json_context(const std::string& path) { return "mixture file '" + path + "': "; }

}  // namespace

void GaussianMixture::validate() const {
  auto fail = [](const std::string& what) { throw InputError("gaussian mixture: " + what); };
  if (!weights.defined() || weights.dim() != 1 || weights.size(0) < 1) {
    fail("weights must be a non-empty vector [K]");
  }
  if (!weights.is_floating_point()) fail("weights must be floating point");
  const int64_t k = weights.size(0);
  const auto w = weights.to(torch::kFloat64);
  if (!w.isfinite().all().item<bool>() || !w.gt(0).all().item<bool>()) {
    fail("weights must be positive and finite");
  }
  if (std::abs(w.sum().item<double>() - 1.0) > 1e-6) fail("weights must sum to 1");
  if (!means.defined() || means.dim() != 2 || means.size(0) != k || means.size(1) < 1) {
    fail("means must be [K, D] with K = " + std::to_string(k) + " (one per weight)");
  }
  if (!means.is_floating_point() || !means.isfinite().all().item<bool>()) {
    fail("means must be finite floating point numbers");
  }
  const int64_t d = means.size(1);
  if (!covariances.defined() || covariances.dim() != 3 || covariances.size(0) != k ||
      covariances.size(1) != d || covariances.size(2) != d) {
    fail("covariances must be [K, D, D] = [" + std::to_string(k) + ", " + std::to_string(d) +
         ", " + std::to_string(d) + "]");
  }
  if (!covariances.is_floating_point() || !covariances.isfinite().all().item<bool>()) {
    fail("covariances must be finite floating point numbers");
  }
  const auto s = covariances.to(torch::kFloat64);
  const double scale = s.abs().max().item<double>();
  if ((s - s.transpose(1, 2)).abs().max().item<double>() > 1e-9 * std::max(scale, 1e-300)) {
    fail("covariances must be symmetric");
  }
  auto [factor, info] = torch::linalg_cholesky_ex(s);
  if (info.ne(0).any().item<bool>()) {
    const auto bad = info.ne(0).nonzero().flatten()[0].item<int64_t>();
    fail("covariance of component " + std::to_string(bad) + " is not positive definite");
  }
  if (num_classes < 1) fail("num_classes must be at least 1");
  if (!component_class.defined() || component_class.dim() != 1 || component_class.size(0) != k ||
      component_class.is_floating_point()) {
    fail("classes must be an integer vector [K] with K = " + std::to_string(k));
  }
  const auto classes = component_class.to(torch::kInt64);
  if (classes.min().item<int64_t>() < 0 || classes.max().item<int64_t>() >= num_classes) {
    fail("classes must lie in [0, " + std::to_string(num_classes) + ")");
  }
  const auto counts = torch::bincount(classes, {}, num_classes);
  if (counts.eq(0).any().item<bool>()) {
    const auto empty = counts.eq(0).nonzero().flatten()[0].item<int64_t>();
    fail("class " + std::to_string(empty) + " has no component");
  }
}

GaussianMixture GaussianMixture::demo(int64_t dim) {
  // Its exact denoiser keeps a dim x dim float64 covariance (and its factor) per component:
  // 6 x 1024^2 x 8 bytes, 50 MB, at the largest; above, a typo would exhaust memory.
  if (dim < 2 || dim > 1024) {
    throw InputError("gaussian mixture demo: dim must be 2 to 1024, got " + std::to_string(dim));
  }
  const int64_t k = static_cast<int64_t>(std::size(kDemoComponents));
  GaussianMixture mixture;
  mixture.num_classes = 4;
  mixture.weights = torch::empty({k}, kFloat64);
  mixture.means = torch::empty({k, dim}, kFloat64);
  mixture.component_class = torch::empty({k}, torch::kInt64);
  auto variances = torch::full({k, dim}, kDemoExtraVariance, kFloat64);
  auto w = mixture.weights.accessor<double, 1>();
  auto m = mixture.means.accessor<double, 2>();
  auto v = variances.accessor<double, 2>();
  auto c = mixture.component_class.accessor<int64_t, 1>();
  for (int64_t i = 0; i < k; ++i) {
    const auto& component = kDemoComponents[i];
    w[i] = component.weight;
    c[i] = component.label;
    m[i][0] = component.mean_x;
    m[i][1] = component.mean_y;
    v[i][0] = component.var_x;
    v[i][1] = component.var_y;
    // Beyond the plane: a fixed +-offset pattern per component, so the extra coordinates
    // carry some signal but stay within [-1, 1].
    for (int64_t j = 2; j < dim; ++j) {
      m[i][j] = ((i * 7 + j * 3) % 5 < 2 ? -1.0 : 1.0) * kDemoExtraOffset;
    }
  }
  mixture.covariances = torch::diag_embed(variances);
  mixture.validate();
  return mixture;
}

GaussianMixture GaussianMixture::from_json_file(const std::string& path) {
  std::string text;
  try {
    text = read_file_bytes(path);
  } catch (const FileError& error) {
    throw FileError(std::string("mixture file: ") + error.what());
  }
  nlohmann::json document;
  try {
    document = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw FileError(json_context(path) + "not valid JSON (" + json_error_text(error) + ")");
  }
  GaussianMixture mixture;
  try {
    if (!document.is_object()) throw InputError(json_context(path) + "top level must be an object");
    const std::vector<std::string> keys = {"num_classes", "weights", "means", "covariances",
                                           "classes"};
    for (const std::string& key : keys) {
      if (!document.contains(key)) throw InputError(json_context(path) + "missing \"" + key + "\"");
    }
    for (const auto& item : document.items()) {  // a misspelt key is otherwise silently unused
      if (std::find(keys.begin(), keys.end(), item.key()) == keys.end()) {
        throw InputError(json_context(path) + "unknown key \"" + item.key() +
                         "\" (expected num_classes, weights, means, covariances and classes)");
      }
    }
    // get<int64_t>() would truncate 2.5 to 2 without a word.
    if (!json_integer_fits<int64_t>(document.at("num_classes"))) {
      throw InputError(json_context(path) + "\"num_classes\" must be a whole number, got " +
                       document.at("num_classes").dump());
    }
    const nlohmann::json& class_list = document.at("classes");
    if (!class_list.is_array() ||
        !std::all_of(class_list.begin(), class_list.end(),
                     [](const auto& c) { return json_integer_fits<int64_t>(c); })) {
      throw InputError(json_context(path) + "\"classes\" must be a list of whole numbers, got " +
                       class_list.dump());
    }
    mixture.num_classes = document.at("num_classes").get<int64_t>();
    const auto weights = document.at("weights").get<std::vector<double>>();
    const auto means = document.at("means").get<std::vector<std::vector<double>>>();
    const auto covariances =
        document.at("covariances").get<std::vector<std::vector<std::vector<double>>>>();
    const auto classes = document.at("classes").get<std::vector<int64_t>>();
    const int64_t k = static_cast<int64_t>(weights.size());
    const int64_t d = means.empty() ? 0 : static_cast<int64_t>(means[0].size());
    if (static_cast<int64_t>(means.size()) != k || static_cast<int64_t>(covariances.size()) != k ||
        static_cast<int64_t>(classes.size()) != k) {
      throw InputError(json_context(path) + "weights, means, covariances and classes must have " +
                       "one entry per component (" + std::to_string(k) + ")");
    }
    mixture.weights = torch::tensor(weights, kFloat64);
    mixture.component_class = torch::tensor(classes, torch::kInt64);
    mixture.means = torch::empty({k, d}, kFloat64);
    mixture.covariances = torch::empty({k, d, d}, kFloat64);
    auto m = mixture.means.accessor<double, 2>();
    auto s = mixture.covariances.accessor<double, 3>();
    for (int64_t i = 0; i < k; ++i) {
      if (static_cast<int64_t>(means[i].size()) != d || static_cast<int64_t>(covariances[i].size()) != d) {
        throw InputError(json_context(path) + "component " + std::to_string(i) +
                         ": mean and covariance must have dimension " + std::to_string(d));
      }
      for (int64_t a = 0; a < d; ++a) {
        m[i][a] = means[i][a];
        if (static_cast<int64_t>(covariances[i][a].size()) != d) {
          throw InputError(json_context(path) + "component " + std::to_string(i) +
                           ": covariance rows must have length " + std::to_string(d));
        }
        for (int64_t b = 0; b < d; ++b) s[i][a][b] = covariances[i][a][b];
      }
    }
    mixture.validate();
  } catch (const nlohmann::json::exception& error) {
    throw InputError(json_context(path) + "wrong field type (" + json_error_text(error) + ")");
  } catch (const InputError& error) {
    const std::string message = error.what();
    if (message.rfind("mixture file", 0) == 0) throw;
    throw InputError(json_context(path) + message);
  }
  return mixture;
}

std::pair<torch::Tensor, torch::Tensor> GaussianMixture::sample(int64_t n, uint64_t seed) const {
  if (n < 0) throw InputError("gaussian mixture: number of samples must be >= 0, got " + std::to_string(n));
  if (n == 0) {
    return {torch::empty({0, dim()}, kFloat64), torch::empty({0}, torch::kInt64)};
  }
  auto generator = at::detail::createCPUGenerator(seed);
  const auto w = weights.to(torch::kFloat64);
  const auto component = at::multinomial(w, n, /*replacement=*/true, generator);
  const auto standard = at::randn({n, dim()}, generator, kFloat64);
  const auto factors = torch::linalg_cholesky(covariances.to(torch::kFloat64));
  const auto m = means.to(torch::kFloat64);
  auto x = torch::empty({n, dim()}, kFloat64);
  // x = m_k + L_k z with S_k = L_k L_k^T, one component at a time (never N copies of L).
  for (int64_t k = 0; k < num_components(); ++k) {
    const auto rows = component.eq(k).nonzero().flatten();
    if (rows.numel() == 0) continue;
    x.index_copy_(0, rows, m[k] + torch::matmul(standard.index_select(0, rows), factors[k].t()));
  }
  return {x, component_class.to(torch::kInt64).index_select(0, component)};
}

GaussianMixture GaussianMixture::restricted_to_class(int64_t c) const {
  if (c < 0 || c >= num_classes) {
    throw InputError("gaussian mixture: class " + std::to_string(c) + " outside [0, " +
                     std::to_string(num_classes) + ")");
  }
  // A one-class mixture (every component labelled 0), so it validates and can back an
  // unconditional MixtureDenoiser of p(x | c).
  const auto rows = component_class.to(torch::kInt64).eq(c).nonzero().flatten();
  GaussianMixture restricted;
  restricted.num_classes = 1;
  const auto w = weights.to(torch::kFloat64).index_select(0, rows);
  restricted.weights = w / w.sum();
  restricted.means = means.to(torch::kFloat64).index_select(0, rows);
  restricted.covariances = covariances.to(torch::kFloat64).index_select(0, rows);
  restricted.component_class = torch::zeros({rows.size(0)}, torch::kInt64);
  return restricted;
}

torch::Tensor GaussianMixture::log_joint(const torch::Tensor& x, const torch::Tensor& abar) const {
  const auto points = checked_points(*this, x);
  return log_joint_from(*this, noised_residuals(*this, points, checked_alpha_squared(abar, points)));
}

torch::Tensor GaussianMixture::score(const torch::Tensor& x, const torch::Tensor& abar,
                                     const torch::Tensor& y) const {
  const auto points = checked_points(*this, x);
  const auto noised = noised_residuals(*this, points, checked_alpha_squared(abar, points));
  auto log_joint = log_joint_from(*this, noised);
  if (y.defined()) {
    // p_t(x | y): keep only y's components (the constant log p(y) cancels in the softmax).
    const auto labels = checked_labels(*this, y, points.size(0), points.device());
    const auto membership = class_membership(*this, points.device());  // [K, C]
    const auto all_classes = torch::ones({1, num_components()}, membership.options());
    const auto keep = torch::cat({membership.t(), all_classes}, 0).index_select(0, labels);
    log_joint = log_joint.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  }
  // grad log sum_k w_k N_k = sum_k r_k grad log N_k, responsibilities r = softmax(log joint).
  const auto responsibilities = torch::softmax(log_joint, 1);
  return (responsibilities.unsqueeze(-1) * component_scores(noised)).sum(1);
}

torch::Tensor GaussianMixture::class_log_posterior(const torch::Tensor& x,
                                                   const torch::Tensor& abar) const {
  const auto lj = log_joint(x, abar);  // [N, K]
  const auto membership = class_membership(*this, lj.device());
  // log p_t(x, c) = logsumexp over c's components; -inf masks the others.
  const auto mask = torch::zeros(membership.sizes(), lj.options())
                        .masked_fill(membership.logical_not(), -std::numeric_limits<double>::infinity());
  const auto log_class_joint = torch::logsumexp(lj.unsqueeze(2) + mask.unsqueeze(0), 1);  // [N, C]
  return log_class_joint - torch::logsumexp(lj, 1, /*keepdim=*/true);
}

torch::Tensor GaussianMixture::nearest_component(const torch::Tensor& x) const {
  const auto points = checked_points(*this, x);
  return log_joint(points, torch::ones({points.size(0)}, kFloat64)).argmax(1);
}

MixtureDenoiser::MixtureDenoiser(GaussianMixture mixture, NoiseLevelMap noise_levels,
                                 bool class_conditional)
    : mixture_(std::move(mixture)),
      noise_levels_(std::move(noise_levels)),
      class_conditional_(class_conditional) {
  mixture_.validate();
}

DenoiserOutput MixtureDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                        const torch::Tensor& y) {
  const auto x = flattened(mixture_, x_t);
  torch::Tensor labels;
  if (class_conditional_) {
    if (!y.defined()) throw InputError("mixture denoiser: class-conditional model needs labels y");
    labels = y;
  }
  const auto abar = noise_levels_.alpha_squared(time).to(x.device(), torch::kFloat64);
  const auto score = mixture_.score(x, abar, labels);
  // eps = -sqrt(1 - abar) grad log p_t(x_t)  (score view of DDPM eq. 4)
  const auto eps = -(1.0 - abar).sqrt().unsqueeze(1) * score;
  return {eps.to(x_t.scalar_type()).reshape(x_t.sizes()), torch::Tensor()};
}

MixtureClassifier::MixtureClassifier(GaussianMixture mixture, NoiseLevelMap noise_levels)
    : mixture_(std::move(mixture)), noise_levels_(std::move(noise_levels)) {
  mixture_.validate();
}

torch::Tensor MixtureClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  // Kept on the autograd graph: guidance differentiates these logits in x_t.
  const auto x = flattened(mixture_, x_t);
  const auto abar = noise_levels_.alpha_squared(time).to(x.device(), torch::kFloat64);
  return mixture_.class_log_posterior(x, abar).to(x_t.scalar_type());
}

}  // namespace guidiff
