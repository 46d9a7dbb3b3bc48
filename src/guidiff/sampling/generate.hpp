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
#include "guidiff/sampling/samplers.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/schedule/log_snr_schedule.hpp"

namespace guidiff {

enum class SamplerKind { ddpm, ddim, cfg_continuous };
SamplerKind parse_sampler(const std::string& name);  // "ddpm" | "ddim" | "cfg-continuous"
std::string to_string(SamplerKind kind);

struct GenerationConfig {
  SamplerKind sampler = SamplerKind::ddim;
  // Discrete samplers:
  BetaScheduleKind schedule = BetaScheduleKind::linear;
  int64_t timesteps = 1000;    // T of the model's training schedule
  std::string respacing;       // guided-diffusion syntax; empty: `steps` or all T
  int64_t steps = 0;           // 0: respacing or T; otherwise N evenly spaced (also for cfg-continuous)
  double eta = 0.0;
  VarianceKind fixed_variance = VarianceKind::fixed_small;
  bool clip_x0 = false;
  // Continuous sampler:
  LogSnrSchedule log_snr;
  double variance_exponent = 0.3;
  // Guidance:
  double classifier_scale = 0.0;  // s
  double cfg_scale = 0.0;         // w
  GuidanceInterval interval;
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

struct GenerationResult {
  torch::Tensor samples;  // float32 [rows, sample_shape...]
  torch::Tensor labels;   // int64 [rows], or undefined if unconditional
  std::vector<torch::Tensor> trajectory;  // when keep_trajectory: [rows, ...] per step
  Shard rows;             // which samples of the request these are: all of them unless sharded
};

// labels: int64 [num_samples] or undefined; initial_noise: x_T [num_samples, ...] or
// undefined (then drawn from the seed). Throws InputError / ModelError for every
// inconsistency (class out of range, guidance without what it needs, steps > T, time kind
// not matching the sampler, wrong-shaped or non-finite noise, ...). The whole request is
// checked even when only a shard is drawn, so every process accepts or rejects it alike.
GenerationResult generate(std::shared_ptr<Denoiser> model, std::shared_ptr<Classifier> classifier,
                          const GenerationConfig& config, const torch::Tensor& labels,
                          const torch::Tensor& initial_noise, const StepCallback& on_progress = {});

// generate() split across the ranks of `communicator`: each draws its shard (config's shard
// fields are set from the communicator), and every rank gets all num_samples rows back, in
// order. Sample k's noise depends on (seed, k) only and every batch is one a single process
// would run, so the result equals one process's bit for bit. on_progress counts this rank's
// steps. With fewer batches than ranks some ranks draw nothing: a smaller batch_size spreads
// the work.
GenerationResult generate_across(Communicator& communicator, std::shared_ptr<Denoiser> model,
                                 std::shared_ptr<Classifier> classifier, const GenerationConfig& config,
                                 const torch::Tensor& labels, const torch::Tensor& initial_noise,
                                 const StepCallback& on_progress = {});

// "--class" values: one index, a comma list cycled over the samples, a .npy file of
// per-sample labels (int64 or int32, length num_samples), or "random": uniform classes, sample
// k's (k counted from first_sample_index) a function of (seed, k) alone, as guided-diffusion's
// sampling scripts draw theirs. Throws InputError for a class outside [0, num_classes) or a
// malformed spec. Empty spec: undefined tensor.
torch::Tensor labels_from_spec(const std::string& spec, int64_t num_samples, int64_t num_classes, uint64_t seed = 0,
                               int64_t first_sample_index = 0);

}  // namespace guidiff
