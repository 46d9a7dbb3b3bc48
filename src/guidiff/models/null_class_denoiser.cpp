#include "guidiff/models/null_class_denoiser.hpp"

#include "guidiff/core/errors.hpp"

namespace guidiff {

NullClassDenoiser::NullClassDenoiser(std::shared_ptr<Denoiser> conditional) : conditional_(std::move(conditional)) {
  if (conditional_ == nullptr || conditional_->num_classes() == 0) {
    throw InputError("the unconditional view needs a class-conditional model (one with a null class)");
  }
  if (!conditional_->has_null_class()) {
    throw InputError("--unconditional: this class-conditional model has no null class (guided-diffusion's "
                     "models were not trained with label dropout); sample it with classes");
  }
}

DenoiserOutput NullClassDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor&) {
  const torch::Tensor null_class =
      torch::full({x_t.size(0)}, conditional_->num_classes(), torch::TensorOptions().dtype(torch::kLong).device(x_t.device()));
  return conditional_->predict(x_t, time, null_class);
}

}  // namespace guidiff
