// Generation end to end: validates a request, wraps the model in the requested guidance,
// and samples num_samples in batches with per-sample noise. The CLI calls only this.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "guidiff/diffusion/gaussian_diffusion.hpp"
#include "guidiff/distributed/communicator.hpp"
#include "guidiff/distributed/shard.hpp"
#include "guidiff/guidance/guidance.hpp"
#include "guidiff/models/denoiser.hpp"
#include "guidiff/sampling/sampler_kind.hpp"
#include "guidiff/sampling/samplers.hpp"
#include "guidiff/sampling/sigma_samplers.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"
#include "guidiff/schedule/sigma_schedule.hpp"

namespace guidiff {

// Steps of a sigma-space sampler when neither --steps nor --respacing is given.
constexpr int64_t kDefaultSigmaSamplerSteps = 50;

struct GenerationConfig {
  SamplerKind sampler = SamplerKind::ddim;
  // Discrete samplers:
  BetaScheduleKind schedule = BetaScheduleKind::linear;
  int64_t timesteps = 1000;    // T of the model's training schedule
  std::string respacing;       // guided-diffusion syntax; empty: `steps` or all T
  int64_t steps = 0;           // 0: respacing or T (sigma samplers: 50); otherwise N (also for cfg-continuous)
  double eta = 0.0;
  VarianceKind fixed_variance = VarianceKind::fixed_small;
  bool clip_x0 = false;
  // Log-SNR models and the continuous sampler:
  LogSnrSchedule log_snr;
  double variance_exponent = 0.3;
  // Sigma-space samplers (euler ... unipc), over a discrete-time or a log-SNR model:
  SigmaSpacing sigmas = SigmaSpacing::karras;
  ChurnOptions churn;  // euler and heun
  // Guidance:
  double classifier_scale = 0.0;  // s
  double cfg_scale = 0.0;         // w (with CFG++, lambda - 1; with a guide model, autoguidance's)
  torch::Tensor classifier_scales;  // per-sample s, float [num_samples]; replaces classifier_scale
  torch::Tensor cfg_scales;         // per-sample w, float [num_samples]; replaces cfg_scale
  GuidanceInterval interval;
  CfgRules cfg_rules;               // CFG rescale, APG, CFG++
  double dynamic_threshold = 0.0;   // percentile in (0, 1]; 0: off
  // Which samples:
  std::vector<int64_t> sample_shape;  // per sample, e.g. {2} or {1, 28, 28}
  int64_t num_samples = 16;
  int64_t batch_size = 64;
  int64_t first_sample_index = 0;     // shards: a shard starting at k gives samples k, k+1, ...
  // Data-parallel sharding: generate() draws only share `shard_index` of `shard_count` of the
  // request (batch_aligned_shard: whole batches, so each batch is one a single process runs).
  int64_t shard_index = 0;
  int64_t shard_count = 1;
  uint64_t seed = 0;
  bool keep_trajectory = false;
};

// Classifier-free guidance (or autoguidance) is asked for: a non-zero w anywhere, or CFG++.
bool uses_cfg(const GenerationConfig& config);
// Classifier guidance is asked for: a non-zero s anywhere.
bool uses_classifier(const GenerationConfig& config);

struct GenerationResult {
  torch::Tensor samples;  // float32 [rows, sample_shape...]
  torch::Tensor labels;   // int64 [rows], or undefined if unconditional
  std::vector<torch::Tensor> trajectory;  // when keep_trajectory: [rows, ...] per step
  Shard rows;             // which samples of the request these are: all of them unless sharded
  int64_t model_evaluations = 0;  // calls of the guided model per sample (NFE); 0 if no rows
  int64_t steps = 0;  // sampler steps per sample: the respaced count, or the sampler's default
};

struct GenerationModels {
  std::shared_ptr<Denoiser> denoiser;
  std::shared_ptr<Classifier> classifier;  // classifier guidance, or null
  std::shared_ptr<Denoiser> guide;         // autoguidance (Karras et al. 2024), or null
};

// labels: int64 [num_samples] or undefined; initial_noise: x_T [num_samples, ...] or
// undefined (then drawn from the seed). Throws InputError / ModelError for every
// inconsistency (class out of range, guidance without what it needs, steps > T, time kind
// not matching the sampler, a guidance rule the sampler cannot run, wrong-shaped or
// non-finite noise, ...). The whole request is checked even when only a shard is drawn, so
// every process accepts or rejects it alike.
GenerationResult generate(const GenerationModels& models, const GenerationConfig& config, const torch::Tensor& labels,
                          const torch::Tensor& initial_noise, const StepCallback& on_progress = {});
GenerationResult generate(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                          const GenerationConfig& config, const torch::Tensor& labels,
                          const torch::Tensor& initial_noise, const StepCallback& on_progress = {});

// generate() split across the ranks of `communicator`: each draws its shard (config's shard
// fields are set from the communicator), and every rank gets all num_samples rows back, in
// order. Sample k's noise depends on (seed, k) only and every batch is one a single process
// would run, so the result equals one process's bit for bit. on_progress counts this rank's
// steps. With fewer batches than ranks some ranks draw nothing: a smaller batch_size spreads
// the work.
GenerationResult generate_across(Communicator& communicator, const GenerationModels& models,
                                 const GenerationConfig& config, const torch::Tensor& labels,
                                 const torch::Tensor& initial_noise, const StepCallback& on_progress = {});

// "--class" values: one index, a comma list cycled over the samples, a .npy file of
// per-sample labels (int64 or int32, length num_samples), or "random": uniform classes, sample
// k's (k counted from first_sample_index) a function of (seed, k) alone, as guided-diffusion's
// sampling scripts draw theirs. Throws InputError for a class outside [0, num_classes) or a
// malformed spec. Empty spec: undefined tensor.
torch::Tensor labels_from_spec(const std::string& spec, int64_t num_samples, int64_t num_classes, uint64_t seed = 0,
                               int64_t first_sample_index = 0);

}  // namespace guidiff
