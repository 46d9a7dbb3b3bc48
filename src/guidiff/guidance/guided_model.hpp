// Assembles the guided model a sampler runs from what a user asked for: classifier-free
// guidance or autoguidance (with CFG rescale, APG or CFG++), then classifier guidance, then
// dynamic thresholding. The sampler sees one Denoiser and never knows which guidance runs.
// Built once per batch: APG's momentum and per-sample strengths belong to one batch.
#pragma once
#include <memory>
#include <optional>

#include "guidiff/guidance/guidance.hpp"

namespace guidiff {

struct GuidanceRequest {
  GuidanceScale classifier_scale;  // s (Dhariwal & Nichol)
  GuidanceScale cfg_scale;         // w (Ho & Salimans eq. 6; autoguidance's weight with a guide)
  GuidanceInterval interval;
  CfgRules cfg_rules;
  double dynamic_threshold = 0.0;  // the percentile p of Saharia et al.; 0: off
  // Classifier guidance as Algorithm 1's mean shift (DDPM) instead of Algorithm 2's eps shift.
  bool classifier_as_mean_shift = false;
};

struct GuidedModel {
  std::shared_ptr<Denoiser> denoiser;             // what the sampler calls
  std::optional<ClassifierMeanShift> mean_shift;  // Algorithm 1 (DDPM), if asked for
};

// `levels` maps the model's time to abar (unrespaced schedule, or log-SNR). `guide` (may be
// null) turns classifier-free guidance into autoguidance. A zero strength adds no wrapper.
GuidedModel make_guided_model(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                              std::shared_ptr<Denoiser> guide, const NoiseLevelMap& levels,
                              const GuidanceRequest& request);

}  // namespace guidiff
