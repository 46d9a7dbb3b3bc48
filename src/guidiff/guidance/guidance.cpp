#include "guidiff/guidance/guidance.hpp"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "guidiff/core/errors.hpp"

namespace guidiff {

namespace {

// time as one value per sample [N] (a single value is broadcast).
torch::Tensor per_sample_time(const torch::Tensor& time, int64_t n, const char* who) {
  if (!time.defined()) throw InputError(std::string(who) + ": time is undefined");
  auto values = time.reshape({-1});
  if (values.numel() == 1 && n != 1) values = values.expand({n});
  if (values.numel() != n) {
    throw InputError(std::string(who) + ": time must have one value per sample (" +
                     std::to_string(n) + "), got " + std::to_string(values.numel()));
  }
  return values;
}

// bool [N] -> [N, 1, ..., 1] to broadcast against x ([N, ...]).
torch::Tensor broadcastable_mask(const torch::Tensor& mask, const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = mask.size(0);
  return mask.to(x.device()).view(shape);
}

void require_finite(double value, const char* name) {
  if (!std::isfinite(value)) throw InputError(std::string(name) + " must be finite");
}

}  // namespace

torch::Tensor GuidanceInterval::contains(const torch::Tensor& time) const {
  const auto t = time.detach().to(torch::kFloat64).reshape({-1});
  return t.ge(low).logical_and(t.le(high));
}

bool GuidanceInterval::is_everything() const {
  return std::isinf(low) && low < 0 && std::isinf(high) && high > 0;
}

torch::Tensor class_log_prob_gradient(Classifier& classifier, const torch::Tensor& x_t,
                                      const torch::Tensor& time, const torch::Tensor& y) {
  const int64_t n = x_t.size(0);
  const int64_t num_classes = classifier.num_classes();
  if (!y.defined() || y.dim() != 1 || y.size(0) != n || y.is_floating_point()) {
    throw InputError("classifier guidance needs integer class labels y [" + std::to_string(n) + "]");
  }
  auto labels = y.to(x_t.device(), torch::kInt64);
  if (n > 0 && (labels.min().item<int64_t>() < 0 || labels.max().item<int64_t>() >= num_classes)) {
    throw InputError("classifier guidance: class labels must lie in [0, " +
                     std::to_string(num_classes) + ") of the classifier");
  }
  // Guidance runs inside samplers that disable autograd; the gradient needs it back on.
  c10::InferenceMode no_inference(false);
  torch::AutoGradMode enable_grad(true);
  // Tensors made under an inference-mode sampler cannot be saved for backward (gather saves
  // its index, the time embedding its input): ordinary copies of them can.
  const auto ordinary = [](const torch::Tensor& tensor) { return tensor.is_inference() ? tensor.clone() : tensor; };
  labels = ordinary(labels);
  auto x = x_t.detach().clone().requires_grad_(true);
  const auto logits = classifier.logits(x, ordinary(time));
  if (logits.dim() != 2 || logits.size(0) != n || logits.size(1) != num_classes) {
    throw ModelError("classifier logits must be [" + std::to_string(n) + ", " +
                     std::to_string(num_classes) + "]");
  }
  // log p_phi(y | x_t) = log_softmax(logits)[y]; summed over samples, whose gradients are
  // independent, so one backward pass gives every sample's gradient.
  const auto log_prob = torch::log_softmax(logits, 1).gather(1, labels.unsqueeze(1)).sum();
  if (!log_prob.requires_grad()) {
    throw ModelError("classifier logits are not differentiable in x_t (detached or computed without grad)");
  }
  auto gradients = torch::autograd::grad({log_prob}, {x}, {}, /*retain_graph=*/false,
                                         /*create_graph=*/false, /*allow_unused=*/true);
  if (!gradients[0].defined()) {
    throw ModelError("classifier logits do not depend on x_t");
  }
  return gradients[0].detach();
}

ClassifierFreeGuidance::ClassifierFreeGuidance(std::shared_ptr<Denoiser> base,
                                               double guidance_weight, GuidanceInterval interval)
    : base_(std::move(base)), guidance_weight_(guidance_weight), interval_(interval) {
  if (!base_) throw ModelError("classifier-free guidance: no model");
  if (base_->num_classes() <= 0) {
    throw ModelError("classifier-free guidance needs a class-conditional model (with a null class)");
  }
  if (!base_->has_null_class()) {
    throw ModelError("classifier-free guidance needs a model with a null class; this one has none "
                     "(guided-diffusion's models: use classifier guidance, --classifier-scale)");
  }
  require_finite(guidance_weight_, "classifier-free guidance weight (--cfg-scale)");
}

DenoiserOutput ClassifierFreeGuidance::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                               const torch::Tensor& y) {
  const int64_t n = x_t.size(0);
  if (!y.defined() || y.dim() != 1 || y.size(0) != n) {
    throw InputError("classifier-free guidance needs class labels y [" + std::to_string(n) + "]");
  }
  if (guidance_weight_ == 0.0) return base_->predict(x_t, time, y);
  torch::Tensor inside;  // undefined: every sample is guided
  if (!interval_.is_everything()) {
    inside = interval_.contains(per_sample_time(time, n, "classifier-free guidance"));
    if (!inside.any().item<bool>()) return base_->predict(x_t, time, y);
  }
  // One forward over [conditional rows; unconditional rows].
  const auto t = per_sample_time(time, n, "classifier-free guidance");
  const auto null_labels = torch::full_like(y, base_->num_classes());
  auto output = base_->predict(torch::cat({x_t, x_t}), torch::cat({t, t}), torch::cat({y, null_labels}));
  if (!output.eps.defined() || output.eps.size(0) != 2 * n) {
    throw ModelError("classifier-free guidance: model returned the wrong batch size");
  }
  auto halves = output.eps.chunk(2, 0);
  const auto& conditional = halves[0];
  const auto& unconditional = halves[1];
  // Ho & Salimans eq. 6: eps~ = (1 + w) eps(x, c) - w eps(x, null).
  auto guided = (1.0 + guidance_weight_) * conditional - guidance_weight_ * unconditional;
  if (inside.defined()) guided = torch::where(broadcastable_mask(inside, guided), guided, conditional);
  DenoiserOutput result{guided, torch::Tensor()};
  if (output.variance_output.defined()) result.variance_output = output.variance_output.chunk(2, 0)[0];
  return result;
}

ClassifierGuidedDenoiser::ClassifierGuidedDenoiser(std::shared_ptr<Denoiser> base,
                                                   std::shared_ptr<Classifier> classifier,
                                                   NoiseLevelMap noise_levels, double scale,
                                                   GuidanceInterval interval)
    : base_(std::move(base)),
      classifier_(std::move(classifier)),
      noise_levels_(std::move(noise_levels)),
      scale_(scale),
      interval_(interval) {
  if (!base_) throw ModelError("classifier guidance: no model");
  if (!classifier_) throw ModelError("classifier guidance: no classifier");
  require_finite(scale_, "classifier scale (--classifier-scale)");
  if (classifier_->time_kind() != base_->time_kind() || noise_levels_.kind() != base_->time_kind()) {
    throw ModelError("classifier guidance: the classifier and the model use different time inputs");
  }
  if (base_->num_classes() > 0 && classifier_->num_classes() != base_->num_classes()) {
    throw ModelError("classifier guidance: classifier has " + std::to_string(classifier_->num_classes()) +
                     " classes, the model " + std::to_string(base_->num_classes()));
  }
}

DenoiserOutput ClassifierGuidedDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                                 const torch::Tensor& y) {
  auto output = base_->predict(x_t, time, y);
  if (scale_ == 0.0) return output;
  const int64_t n = x_t.size(0);
  const auto t = per_sample_time(time, n, "classifier guidance");
  torch::Tensor inside;  // undefined: every sample is guided
  if (!interval_.is_everything()) {
    inside = interval_.contains(t);
    if (!inside.any().item<bool>()) return output;
  }
  const auto gradient = class_log_prob_gradient(*classifier_, x_t, t, y);
  // Dhariwal & Nichol Algorithm 2: eps' = eps - sqrt(1 - abar_t) s grad log p_phi(y | x_t).
  auto sigma = noise_levels_.sigma(t).to(x_t.device(), torch::kFloat64);
  std::vector<int64_t> shape(static_cast<size_t>(x_t.dim()), 1);
  shape[0] = n;
  const auto shift = (scale_ * sigma.view(shape) * gradient.to(torch::kFloat64)).to(output.eps.scalar_type());
  auto guided = output.eps - shift;
  if (inside.defined()) guided = torch::where(broadcastable_mask(inside, guided), guided, output.eps);
  output.eps = guided;
  return output;
}

ClassifierMeanShift::ClassifierMeanShift(std::shared_ptr<Classifier> classifier, double scale,
                                         GuidanceInterval interval)
    : classifier_(std::move(classifier)), scale_(scale), interval_(interval) {
  if (!classifier_) throw ModelError("classifier mean shift: no classifier");
  require_finite(scale_, "classifier scale (--classifier-scale)");
}

torch::Tensor ClassifierMeanShift::shift(const torch::Tensor& x_t, const torch::Tensor& time,
                                         const torch::Tensor& y, const torch::Tensor& variance) const {
  auto zero = torch::zeros_like(x_t);
  if (scale_ == 0.0) return zero;
  const int64_t n = x_t.size(0);
  const auto t = per_sample_time(time, n, "classifier mean shift");
  torch::Tensor inside;
  if (!interval_.is_everything()) {
    inside = interval_.contains(t);
    if (!inside.any().item<bool>()) return zero;
  }
  const auto gradient = class_log_prob_gradient(*classifier_, x_t, t, y);
  // Dhariwal & Nichol Algorithm 1: mu + s Sigma grad_x log p_phi(y | x_t).
  auto shift = (scale_ * variance.detach() * gradient).to(x_t.scalar_type()).expand_as(x_t).contiguous();
  if (inside.defined()) shift = torch::where(broadcastable_mask(inside, shift), shift, zero);
  return shift;
}

}  // namespace guidiff
