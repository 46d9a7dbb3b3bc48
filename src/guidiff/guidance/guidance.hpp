// Guidance: wrappers that turn a Denoiser (+ Classifier) into a guided Denoiser, and the
// DDPM mean shift. Papers: Dhariwal & Nichol 2021 ("Diffusion Models Beat GANs"),
// Algorithms 1 and 2; Ho & Salimans 2022 ("Classifier-Free Diffusion Guidance"), eq. 6.
#pragma once
#include <torch/torch.h>

#include <limits>
#include <memory>

#include "guidiff/models/denoiser.hpp"

namespace guidiff {

// Guidance applies only where low <= time <= high (in the model's time units: original
// timesteps, or lambda for log-SNR models). The default interval is everything.
struct GuidanceInterval {
  double low = -std::numeric_limits<double>::infinity();
  double high = std::numeric_limits<double>::infinity();
  // bool [N]: which samples are inside the interval at this time.
  torch::Tensor contains(const torch::Tensor& time) const;
  bool is_everything() const;
};

// grad_x log p_phi(y | x_t) per sample (log_softmax of the logits at each sample's y),
// computed with autograd on a detached copy of x_t, whatever the caller's grad mode.
torch::Tensor class_log_prob_gradient(Classifier& classifier, const torch::Tensor& x_t,
                                      const torch::Tensor& time, const torch::Tensor& y);

// Classifier-free guidance, Ho & Salimans eq. 6: eps~ = (1 + w) eps(x, c) - w eps(x, null).
// Conditional and unconditional rows go through the model in ONE batched forward. With
// w == 0 (or outside the interval for every sample) only the conditional forward runs, so
// the result is bit-identical to the conditional model. The variance output, if any, is
// the conditional one. Requires a conditional base (num_classes() > 0) and y defined.
class ClassifierFreeGuidance : public Denoiser {
 public:
  ClassifierFreeGuidance(std::shared_ptr<Denoiser> base, double guidance_weight,
                         GuidanceInterval interval = {});
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                         const torch::Tensor& y) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  bool has_null_class() const override { return base_->has_null_class(); }
  bool learns_variance() const override { return base_->learns_variance(); }

 private:
  std::shared_ptr<Denoiser> base_;
  double guidance_weight_;
  GuidanceInterval interval_;
};

// Classifier guidance, Algorithm 2 (score view, for DDIM and every eps-based sampler):
// eps' = eps - sqrt(1 - abar_t) * s * grad_x log p_phi(y | x_t), gradient at x_t and the
// original time. s == 0 returns the base output untouched (bit-identical). The base may be
// unconditional (y is then only the classifier's target) or conditional (e.g. wrapped CFG:
// the two combined).
class ClassifierGuidedDenoiser : public Denoiser {
 public:
  ClassifierGuidedDenoiser(std::shared_ptr<Denoiser> base, std::shared_ptr<Classifier> classifier,
                           NoiseLevelMap noise_levels, double scale, GuidanceInterval interval = {});
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                         const torch::Tensor& y) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  bool has_null_class() const override { return base_->has_null_class(); }
  bool learns_variance() const override { return base_->learns_variance(); }

 private:
  std::shared_ptr<Denoiser> base_;
  std::shared_ptr<Classifier> classifier_;
  NoiseLevelMap noise_levels_;
  double scale_;
  GuidanceInterval interval_;
};

// Classifier guidance, Algorithm 1 (DDPM ancestral): the reverse mean is shifted by
// s * Sigma * grad_x log p_phi(y | x_t), gradient at x_t and the original time t.
class ClassifierMeanShift {
 public:
  ClassifierMeanShift(std::shared_ptr<Classifier> classifier, double scale,
                      GuidanceInterval interval = {});
  // The shift to add to the mean; variance is Sigma (same shape as x_t or broadcastable).
  // Zero (an all-zero tensor) when scale == 0 or outside the interval.
  torch::Tensor shift(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y,
                      const torch::Tensor& variance) const;
  double scale() const { return scale_; }

 private:
  std::shared_ptr<Classifier> classifier_;
  double scale_;
  GuidanceInterval interval_;
};

}  // namespace guidiff
