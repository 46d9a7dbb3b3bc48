// bfloat16 autocast around a network's forward pass, for faster sampling on CPUs with
// avx512_bf16 / AMX (and on CUDA): the convolutions and matrix products run in bf16 while
// the outputs handed to the sampler are float32 again, so every sampler and guidance rule
// still does its arithmetic in float32. GroupNorm stays float32 inside (Float32GroupNorm).
#pragma once
#include <memory>

#include "guidiff/models/denoiser.hpp"

namespace guidiff {

class Bf16Denoiser : public Denoiser {
 public:
  explicit Bf16Denoiser(std::shared_ptr<Denoiser> base);
  // base->predict under bf16 autocast on x_t's device; eps (and the variance output) are
  // returned in x_t's dtype.
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  bool has_null_class() const override { return base_->has_null_class(); }
  bool learns_variance() const override { return base_->learns_variance(); }

 private:
  std::shared_ptr<Denoiser> base_;
};

// The classifier's forward under bf16 autocast; logits in x_t's dtype, still differentiable
// in x_t (the gradient flows back through the bf16 operations).
class Bf16Classifier : public Classifier {
 public:
  explicit Bf16Classifier(std::shared_ptr<Classifier> base);
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }

 private:
  std::shared_ptr<Classifier> base_;
};

}  // namespace guidiff
