#include "guidiff/guidance/guided_model.hpp"

namespace guidiff {

GuidedModel make_guided_model(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                              std::shared_ptr<Denoiser> guide, const NoiseLevelMap& levels,
                              const GuidanceRequest& request) {
  GuidedModel guided;
  guided.denoiser = std::move(model);
  // Classifier-free guidance (or autoguidance) first, so classifier guidance shifts its eps:
  // the two combine (their scores add).
  const bool contrast = !request.cfg_scale.is_zero() || request.cfg_rules.cfg_pp;
  if (guide && contrast) {
    guided.denoiser = std::make_shared<Autoguidance>(guided.denoiser, std::move(guide), request.cfg_scale,
                                                     request.interval, request.cfg_rules, levels);
  } else if (contrast) {
    guided.denoiser = std::make_shared<ClassifierFreeGuidance>(guided.denoiser, request.cfg_scale, request.interval,
                                                               request.cfg_rules, levels);
  }
  if (!request.classifier_scale.is_zero()) {
    if (request.classifier_as_mean_shift) {
      guided.mean_shift.emplace(classifier, request.classifier_scale, request.interval, levels);
    } else {
      guided.denoiser = std::make_shared<ClassifierGuidedDenoiser>(guided.denoiser, classifier, levels,
                                                                   request.classifier_scale, request.interval);
    }
  }
  if (request.dynamic_threshold != 0.0) {
    guided.denoiser = std::make_shared<DynamicThresholding>(guided.denoiser, levels, request.dynamic_threshold);
  }
  return guided;
}

}  // namespace guidiff
