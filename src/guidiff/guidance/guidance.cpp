#include "guidiff/guidance/guidance.hpp"

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/winograd_conv.hpp"

namespace guidiff {

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
  // Only d/dx is asked for below, so 3x3 convolutions may run (and differentiate) by Winograd.
  InputGradientsOnly input_gradients_only;
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

ClassifierFreeGuidance::ClassifierFreeGuidance(std::shared_ptr<Denoiser> base, GuidanceScale guidance_weight,
                                               GuidanceInterval interval, CfgRules rules,
                                               std::optional<NoiseLevelMap> levels)
    : base_(std::move(base)), combination_(guidance_weight, interval, std::move(rules), std::move(levels)) {
  if (!base_) throw ModelError("classifier-free guidance: no model");
  if (base_->num_classes() <= 0) {
    throw ModelError("classifier-free guidance needs a class-conditional model (with a null class)");
  }
  if (!base_->has_null_class()) {
    throw ModelError("classifier-free guidance needs a model with a null class; this one has none "
                     "(guided-diffusion's models: use classifier guidance, --classifier-scale)");
  }
  guidance_weight.check_finite("classifier-free guidance weight (--cfg-scale)");
}

DenoiserOutput ClassifierFreeGuidance::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                               const torch::Tensor& y) {
  const int64_t n = x_t.size(0);
  if (!y.defined() || y.dim() != 1 || y.size(0) != n) {
    throw InputError("classifier-free guidance needs class labels y [" + std::to_string(n) + "]");
  }
  if (combination_.is_off()) return base_->predict(x_t, time, y);
  const torch::Tensor guided_rows = combination_.guided_rows(time, n);  // undefined: every row
  if (guided_rows.defined() && !guided_rows.any().item<bool>()) return base_->predict(x_t, time, y);
  // One forward over [conditional rows; unconditional rows].
  const auto t = per_sample_time(time, n, "classifier-free guidance");
  const auto null_labels = torch::full_like(y, base_->num_classes());
  auto output = base_->predict(torch::cat({x_t, x_t}), torch::cat({t, t}), torch::cat({y, null_labels}));
  if (!output.eps.defined() || output.eps.size(0) != 2 * n) {
    throw ModelError("classifier-free guidance: model returned the wrong batch size");
  }
  auto halves = output.eps.chunk(2, 0);
  DenoiserOutput conditional{halves[0], torch::Tensor(), torch::Tensor()};
  if (output.variance_output.defined()) conditional.variance_output = output.variance_output.chunk(2, 0)[0];
  return combination_.combine(x_t, t, std::move(conditional), halves[1], guided_rows);
}

Autoguidance::Autoguidance(std::shared_ptr<Denoiser> base, std::shared_ptr<Denoiser> guide,
                           GuidanceScale guidance_weight, GuidanceInterval interval, CfgRules rules,
                           std::optional<NoiseLevelMap> levels)
    : base_(std::move(base)),
      guide_(std::move(guide)),
      combination_(guidance_weight, interval, std::move(rules), std::move(levels)) {
  if (!base_) throw ModelError("autoguidance: no model");
  if (!guide_) throw ModelError("autoguidance: no guide model (--guide-model)");
  if (guide_->time_kind() != base_->time_kind()) {
    throw ModelError("autoguidance: the guide model and the model use different time inputs");
  }
  if (guide_->num_classes() > 0 && base_->num_classes() > 0 && guide_->num_classes() != base_->num_classes()) {
    throw ModelError("autoguidance: the guide model has " + std::to_string(guide_->num_classes()) +
                     " classes, the model " + std::to_string(base_->num_classes()));
  }
  guidance_weight.check_finite("autoguidance weight (--cfg-scale)");
}

DenoiserOutput Autoguidance::predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) {
  DenoiserOutput positive = base_->predict(x_t, time, y);
  if (combination_.is_off()) return positive;
  const int64_t n = x_t.size(0);
  const torch::Tensor guided_rows = combination_.guided_rows(time, n);
  if (guided_rows.defined() && !guided_rows.any().item<bool>()) return positive;
  torch::Tensor guide_labels;  // an unconditional guide ignores labels
  if (guide_->num_classes() > 0) {
    guide_labels = y.defined() ? y : torch::full({n}, guide_->num_classes(), torch::kLong);
  }
  const torch::Tensor negative = guide_->predict(x_t, time, guide_labels).eps;
  if (!negative.defined() || negative.sizes() != x_t.sizes()) {
    throw ModelError("autoguidance: the guide model's eps does not have the shape of x_t");
  }
  return combination_.combine(x_t, per_sample_time(time, n, "autoguidance"), std::move(positive), negative,
                              guided_rows);
}

ClassifierGuidedDenoiser::ClassifierGuidedDenoiser(std::shared_ptr<Denoiser> base,
                                                   std::shared_ptr<Classifier> classifier,
                                                   NoiseLevelMap noise_levels, GuidanceScale scale,
                                                   GuidanceInterval interval)
    : base_(std::move(base)),
      classifier_(std::move(classifier)),
      noise_levels_(std::move(noise_levels)),
      scale_(scale),
      interval_(interval) {
  if (!base_) throw ModelError("classifier guidance: no model");
  if (!classifier_) throw ModelError("classifier guidance: no classifier");
  scale_.check_finite("classifier scale (--classifier-scale)");
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
  if (scale_.is_zero()) return output;
  const int64_t n = x_t.size(0);
  const auto t = per_sample_time(time, n, "classifier guidance");
  torch::Tensor inside;  // undefined: every sample is guided
  if (!interval_.is_everything()) {
    inside = interval_.contains(t, &noise_levels_);
    if (!inside.any().item<bool>()) return output;
  }
  const auto gradient = class_log_prob_gradient(*classifier_, x_t, t, y);
  // Dhariwal & Nichol Algorithm 2: eps' = eps - sqrt(1 - abar_t) s grad log p_phi(y | x_t).
  auto sigma = noise_levels_.sigma(t).to(x_t.device(), torch::kFloat64);
  std::vector<int64_t> shape(static_cast<size_t>(x_t.dim()), 1);
  shape[0] = n;
  const auto shift =
      (scale_.over(x_t) * sigma.view(shape) * gradient.to(torch::kFloat64)).to(output.eps.scalar_type());
  auto guided = output.eps - shift;
  if (inside.defined()) guided = torch::where(broadcastable_mask(inside, guided), guided, output.eps);
  output.eps = guided;
  return output;
}

ClassifierMeanShift::ClassifierMeanShift(std::shared_ptr<Classifier> classifier, GuidanceScale scale,
                                         GuidanceInterval interval, std::optional<NoiseLevelMap> levels)
    : classifier_(std::move(classifier)), scale_(std::move(scale)), interval_(interval), levels_(std::move(levels)) {
  if (!classifier_) throw ModelError("classifier mean shift: no classifier");
  scale_.check_finite("classifier scale (--classifier-scale)");
  if (interval_.unit == GuidanceInterval::Unit::sigma && !levels_) {
    throw ModelError("classifier mean shift: an interval in sigma needs the model's noise levels");
  }
}

torch::Tensor ClassifierMeanShift::shift(const torch::Tensor& x_t, const torch::Tensor& time,
                                         const torch::Tensor& y, const torch::Tensor& variance) const {
  auto zero = torch::zeros_like(x_t);
  if (scale_.is_zero()) return zero;
  const int64_t n = x_t.size(0);
  const auto t = per_sample_time(time, n, "classifier mean shift");
  torch::Tensor inside;
  if (!interval_.is_everything()) {
    inside = interval_.contains(t, levels_ ? &*levels_ : nullptr);
    if (!inside.any().item<bool>()) return zero;
  }
  const auto gradient = class_log_prob_gradient(*classifier_, x_t, t, y);
  // Dhariwal & Nichol Algorithm 1: mu + s Sigma grad_x log p_phi(y | x_t).
  auto shift = (scale_.over(x_t) * variance.detach().to(torch::kFloat64) * gradient.to(torch::kFloat64))
                   .to(x_t.scalar_type())
                   .expand_as(x_t)
                   .contiguous();
  if (inside.defined()) shift = torch::where(broadcastable_mask(inside, shift), shift, zero);
  return shift;
}

}  // namespace guidiff
