// UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
// of Diffusion Models", Sec. 3) in the data prediction over the sigma-space view, with
// B(h) = e^h - 1 ("bh2"). In lambda = -log sigma and h = lambda_t - lambda_s, both halves are
//   x_t = e^{-h} x_s + (1 - e^{-h}) m_s + (1 - e^{-h}) sum_k rho_k D_k,
// with D_k = (m_k - m_s) / r_k the differences to earlier answers m_k at r_k = (lambda_k -
// lambda_s) / h, and rho solving R rho = phi-moments (below). UniP-p predicts x_t from p - 1
// earlier answers; UniC-p corrects it once the model has been called at the predicted x_t,
// using that answer (r = 1) too, and the same answer then starts the next prediction.
#include <array>
#include <cmath>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/sampling/sigma_denoiser.hpp"
#include "guidiff/sampling/sigma_samplers.hpp"

namespace guidiff {
namespace {

using sigma_sampling::lambda_of;
using sigma_sampling::SigmaRun;

struct PastDenoised {
  double lambda;
  torch::Tensor denoised;
};

// R rho = b for the rows r^0 .. r^{n-1} of the given r values, by Gaussian elimination
// with partial pivoting (n <= 3: the r values are distinct, R is a Vandermonde matrix).
std::vector<double> solve_vandermonde(const std::vector<double>& r, const std::vector<double>& b) {
  const size_t n = r.size();
  std::vector<std::vector<double>> a(n, std::vector<double>(n + 1));
  for (size_t row = 0; row < n; ++row) {
    for (size_t col = 0; col < n; ++col) a[row][col] = std::pow(r[col], double(row));
    a[row][n] = b[row];
  }
  for (size_t col = 0; col < n; ++col) {
    size_t pivot = col;
    for (size_t row = col + 1; row < n; ++row) {
      if (std::abs(a[row][col]) > std::abs(a[pivot][col])) pivot = row;
    }
    std::swap(a[col], a[pivot]);
    for (size_t row = col + 1; row < n; ++row) {
      const double factor = a[row][col] / a[col][col];
      for (size_t k = col; k <= n; ++k) a[row][k] -= factor * a[col][k];
    }
  }
  std::vector<double> x(n);
  for (size_t row = n; row-- > 0;) {
    double sum = a[row][n];
    for (size_t k = row + 1; k < n; ++k) sum -= a[row][k] * x[k];
    x[row] = sum / a[row][row];
  }
  return x;
}

// The right-hand side b_1..b_n of UniPC's order conditions R rho = b for a step of size h in
// the data prediction (hh = -h): b_j = j! psi_j / B(hh), B(hh) = e^{hh} - 1 (bh2), where
// psi_1 = (e^{hh} - 1)/hh - 1 and psi_{j+1} = psi_j / hh - 1/(j+1)! are the exponential
// integrator's phi functions, shifted and scaled (psi_j ~ hh / (j+1)! as h -> 0).
std::vector<double> order_conditions(double h, size_t n) {
  const double hh = -h;
  const double b_of_h = std::expm1(hh);
  std::vector<double> b;
  double h_phi = std::expm1(hh) / hh - 1.0;  // h phi_2 scaled as in the recursion
  double factorial = 1.0;
  for (size_t j = 1; j <= n; ++j) {
    b.push_back(h_phi * factorial / b_of_h);
    factorial *= double(j + 1);
    h_phi = h_phi / hh - 1.0 / factorial;
  }
  return b;
}

// x_t = e^{-h} x_s + (1 - e^{-h}) (m_s + sum_k rho_k D_k).
torch::Tensor unipc_update(const torch::Tensor& x_s, double h, const torch::Tensor& m_s,
                           const std::vector<torch::Tensor>& differences, const std::vector<double>& rho) {
  torch::Tensor correction = torch::zeros_like(m_s);
  for (size_t k = 0; k < differences.size(); ++k) correction = correction + rho[k] * differences[k];
  return std::exp(-h) * x_s - std::expm1(-h) * (m_s + correction);
}

// The differences D_k = (m_k - m_s) / r_k to the `count` answers before past[0] (= m_s).
void earlier_differences(const std::vector<PastDenoised>& past, double h, size_t count, std::vector<double>& r,
                         std::vector<torch::Tensor>& differences) {
  for (size_t k = 1; k <= count; ++k) {
    r.push_back((past[k].lambda - past[0].lambda) / h);
    differences.push_back((past[k].denoised - past[0].denoised) / r.back());
  }
}

// UniP-p: x at lambda_t from x_s and the last p answers (past[0] at lambda_s).
torch::Tensor unip_predict(const torch::Tensor& x_s, const std::vector<PastDenoised>& past, double lambda_t,
                           int order) {
  const double h = lambda_t - past[0].lambda;
  std::vector<double> r;
  std::vector<torch::Tensor> differences;
  earlier_differences(past, h, static_cast<size_t>(order - 1), r, differences);
  std::vector<double> rho;
  if (order == 2) {
    rho = {0.5};  // the reference implementation's choice; exact to the order needed
  } else if (order > 2) {
    rho = solve_vandermonde(r, order_conditions(h, r.size()));
  }
  return unipc_update(x_s, h, past[0].denoised, differences, rho);
}

// UniC-p: corrects x_t (predicted from x_s with order p) with m_t, the model's answer there.
torch::Tensor unic_correct(const torch::Tensor& x_s, const std::vector<PastDenoised>& past, double lambda_t,
                           const torch::Tensor& m_t, int order) {
  const double h = lambda_t - past[0].lambda;
  std::vector<double> r;
  std::vector<torch::Tensor> differences;
  earlier_differences(past, h, static_cast<size_t>(order - 1), r, differences);
  r.push_back(1.0);
  differences.push_back(m_t - past[0].denoised);  // D at r = 1
  const std::vector<double> rho = order == 1 ? std::vector<double>{0.5} : solve_vandermonde(r, order_conditions(h, r.size()));
  return unipc_update(x_s, h, past[0].denoised, differences, rho);
}

}  // namespace

SamplingResult sample_unipc(Denoiser& model, const SigmaSchedule& schedule, const SampleBatch& batch,
                            const SampleNoise& noise, const UniPcOptions& options) {
  if (options.order < 1 || options.order > 3) {
    throw InputError("unipc sampler: order must be 1, 2 or 3, got " + std::to_string(options.order));
  }
  SigmaRun run("unipc", model, schedule, batch, noise, options, /*stochastic=*/false, /*allows_renoise=*/false);
  const int64_t steps = run.num_steps();
  torch::Tensor x = run.start();
  torch::Tensor x_previous;        // the corrected x at the previous level
  int previous_order = 0;          // the order x was predicted with
  std::vector<PastDenoised> past;  // the model's answers, most recent first
  for (int64_t i = 0; i < steps; ++i) {
    const double sigma = run.sigma(i), sigma_next = run.sigma(i + 1);
    const double lambda = lambda_of(sigma);
    const torch::Tensor answer = run.denoise(x, sigma).denoised;
    // UniC: the answer at the predicted x corrects it, for free.
    if (i > 0) x = unic_correct(x_previous, past, lambda, answer, previous_order);
    past.insert(past.begin(), PastDenoised{lambda, answer});
    if (static_cast<int>(past.size()) > options.order) past.pop_back();
    // Warm-up: order <= the answers available; the last steps come down to first order.
    const int order = static_cast<int>(std::min<int64_t>({int64_t{options.order}, i + 1, steps - i}));
    x_previous = x;
    previous_order = order;
    // UniP: predict the next level (to sigma = 0, the first-order step gives x = the answer).
    x = sigma_next == 0.0 ? answer : unip_predict(x, past, lambda_of(sigma_next), order);
    run.step_done(i, x);
  }
  return run.finish(x);
}

}  // namespace guidiff
