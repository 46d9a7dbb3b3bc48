#include "guidiff/models/bf16_models.hpp"

#include "guidiff/core/autocast.hpp"
#include "guidiff/core/errors.hpp"

namespace guidiff {

Bf16Denoiser::Bf16Denoiser(std::shared_ptr<Denoiser> base) : base_(std::move(base)) {
  if (!base_) throw InputError("Bf16Denoiser needs a denoiser");
}

DenoiserOutput Bf16Denoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) {
  DenoiserOutput output;
  {
    AutocastScope autocast(true, x_t.device());
    output = base_->predict(x_t, time, y);
  }
  output.eps = output.eps.to(x_t.scalar_type());
  if (output.variance_output.defined()) output.variance_output = output.variance_output.to(x_t.scalar_type());
  return output;
}

Bf16Classifier::Bf16Classifier(std::shared_ptr<Classifier> base) : base_(std::move(base)) {
  if (!base_) throw InputError("Bf16Classifier needs a classifier");
}

torch::Tensor Bf16Classifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  AutocastScope autocast(true, x_t.device());
  return base_->logits(x_t, time).to(x_t.scalar_type());
}

}  // namespace guidiff
