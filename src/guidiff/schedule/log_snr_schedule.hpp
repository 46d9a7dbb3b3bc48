// The continuous-time schedule of Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance"):
// time is the log signal-to-noise ratio lambda, alpha_lambda^2 = sigmoid(lambda),
// sigma_lambda^2 = sigmoid(-lambda) = 1 - alpha_lambda^2.
#pragma once
#include <torch/torch.h>

namespace guidiff {

struct LogSnrSchedule {
  double lambda_min = -20.0;  // the noisiest level (u = 1)
  double lambda_max = 20.0;   // the cleanest level (u = 0)

  // lambda(u) = -2 log tan(a u + b), b = arctan(exp(-lambda_max/2)),
  // a = arctan(exp(-lambda_min/2)) - b (Ho & Salimans Sec. 2, cosine-interpolated form).
  // Decreasing in u, lambda(0) = lambda_max, lambda(1) = lambda_min. Same dtype as u.
  torch::Tensor lambda_of_u(const torch::Tensor& u) const;

  // Throws InputError unless lambda_min < lambda_max and both are finite.
  void validate() const;
};

// alpha_lambda^2 = sigmoid(lambda) and sigma_lambda^2 = sigmoid(-lambda).
torch::Tensor alpha_squared_of_log_snr(const torch::Tensor& lambda);
torch::Tensor sigma_squared_of_log_snr(const torch::Tensor& lambda);

}  // namespace guidiff
