// The continuous log-SNR schedule of Ho & Salimans 2022 (see log_snr_schedule.hpp).
#include "guidiff/schedule/log_snr_schedule.hpp"

#include <cmath>
#include <string>

#include "guidiff/core/errors.hpp"

namespace guidiff {

void LogSnrSchedule::validate() const {
  if (!std::isfinite(lambda_min) || !std::isfinite(lambda_max) || !(lambda_min < lambda_max)) {
    throw InputError("log-SNR range needs finite lambda_min < lambda_max (got lambda_min = " +
                     std::to_string(lambda_min) + ", lambda_max = " + std::to_string(lambda_max) +
                     ")");
  }
}

torch::Tensor LogSnrSchedule::lambda_of_u(const torch::Tensor& u) const {
  validate();
  // Ho & Salimans Sec. 2: lambda(u) = -2 log tan(a u + b) with b = arctan(exp(-lambda_max/2))
  // and a = arctan(exp(-lambda_min/2)) - b, so lambda(0) = lambda_max, lambda(1) = lambda_min
  // and lambda decreases strictly (tan increases on (0, pi/2)). Evaluated in float64.
  const double b = std::atan(std::exp(-lambda_max / 2.0));
  const double a = std::atan(std::exp(-lambda_min / 2.0)) - b;
  const auto u64 = u.to(torch::kFloat64);
  return (-2.0 * torch::tan(a * u64 + b).log()).to(u.scalar_type());
}

// A Gaussian with log-SNR lambda has alpha^2 / sigma^2 = exp(lambda) and alpha^2 + sigma^2 = 1
// (variance preserving), hence alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).
torch::Tensor alpha_squared_of_log_snr(const torch::Tensor& lambda) {
  return torch::sigmoid(lambda);
}
torch::Tensor sigma_squared_of_log_snr(const torch::Tensor& lambda) {
  return torch::sigmoid(-lambda);
}

}  // namespace guidiff
