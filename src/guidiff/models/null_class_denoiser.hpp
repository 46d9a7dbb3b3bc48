// A class-conditional denoiser used as the unconditional one: every forward gets the null
// class. A model trained with label dropout (p_uncond > 0) is both eps(x, c) and eps(x), so
// classifier guidance can steer its unconditional half without a second diffusion model.
#pragma once
#include <memory>

#include "guidiff/models/denoiser.hpp"

namespace guidiff {

class NullClassDenoiser : public Denoiser {
 public:
  // Throws InputError if `conditional` is null or has no classes.
  explicit NullClassDenoiser(std::shared_ptr<Denoiser> conditional);
  // Ignores y: predicts with y = num_classes of the wrapped model (the null class).
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override;
  TimeKind time_kind() const override { return conditional_->time_kind(); }
  int64_t num_classes() const override { return 0; }  // unconditional to its callers
  bool learns_variance() const override { return conditional_->learns_variance(); }

 private:
  std::shared_ptr<Denoiser> conditional_;
};

}  // namespace guidiff
