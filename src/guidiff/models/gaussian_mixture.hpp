// A labelled Gaussian mixture in D dimensions with every quantity of its forward process in
// closed form. x_t = sqrt(abar) x0 + sqrt(1 - abar) e keeps it a mixture: component k has
// mean sqrt(abar) m_k and covariance abar S_k + (1 - abar) I. Hence the exact
// eps(x_t) = -sqrt(1 - abar) grad log p_t(x_t), the exact p_t(y | x_t) and its gradient.
// It is the test oracle and a real toy model the CLI samples from.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/schedule/noise_level.hpp"

namespace guidiff {

struct GaussianMixture {
  torch::Tensor weights;          // float64 [K], positive, sums to 1
  torch::Tensor means;            // float64 [K, D]
  torch::Tensor covariances;      // float64 [K, D, D], symmetric positive definite
  torch::Tensor component_class;  // int64 [K], each in [0, num_classes)
  int64_t num_classes = 0;

  int64_t num_components() const { return weights.size(0); }
  int64_t dim() const { return means.size(1); }
  // Throws InputError naming the field that is inconsistent.
  void validate() const;

  // The built-in mixture: classes well separated, several components per class, in `dim`
  // dimensions (dim >= 2), data within about [-1, 1]. Named "demo".
  static GaussianMixture demo(int64_t dim = 2);
  // From JSON {"num_classes":C,"weights":[...],"means":[[...]],"covariances":[[[...]]],"classes":[...]}.
  static GaussianMixture from_json_file(const std::string& path);

  // n exact draws (float64 [n, D], int64 class labels [n]) from a seeded generator.
  std::pair<torch::Tensor, torch::Tensor> sample(int64_t n, uint64_t seed) const;
  // p(x | y = c): the components of class c, reweighted to sum to 1.
  GaussianMixture restricted_to_class(int64_t c) const;

  // log(w_k N(x; sqrt(abar) m_k, abar S_k + (1 - abar) I)), float64 [N, K]; abar per sample [N].
  torch::Tensor log_joint(const torch::Tensor& x, const torch::Tensor& abar) const;
  // grad_x log p_t(x) (optionally p_t(x | y) per sample; y == num_classes means all), [N, D].
  torch::Tensor score(const torch::Tensor& x, const torch::Tensor& abar,
                      const torch::Tensor& y = {}) const;
  // log p_t(y | x), float64 [N, C]; differentiable in x.
  torch::Tensor class_log_posterior(const torch::Tensor& x, const torch::Tensor& abar) const;
  // The most responsible component of each clean point (abar = 1), int64 [N].
  torch::Tensor nearest_component(const torch::Tensor& x) const;
};

// The exact eps of the mixture, as a Denoiser. Conditional (num_classes() = C) when
// class_conditional is set: y selects p_t(x | y), y == C (null) gives the marginal.
class MixtureDenoiser : public Denoiser {
 public:
  MixtureDenoiser(GaussianMixture mixture, NoiseLevelMap noise_levels, bool class_conditional);
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                         const torch::Tensor& y) override;
  TimeKind time_kind() const override { return noise_levels_.kind(); }
  int64_t num_classes() const override { return class_conditional_ ? mixture_.num_classes : 0; }

 private:
  GaussianMixture mixture_;
  NoiseLevelMap noise_levels_;
  bool class_conditional_;
};

// The exact noisy classifier: logits = log p_t(y | x_t).
class MixtureClassifier : public Classifier {
 public:
  MixtureClassifier(GaussianMixture mixture, NoiseLevelMap noise_levels);
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return noise_levels_.kind(); }
  int64_t num_classes() const override { return mixture_.num_classes; }

 private:
  GaussianMixture mixture_;
  NoiseLevelMap noise_levels_;
};

}  // namespace guidiff
