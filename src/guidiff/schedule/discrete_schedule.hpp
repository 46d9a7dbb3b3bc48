// Discrete noise schedules (betas over T steps) and respacing.
//
// Every quantity of the forward process is computed once, in float64, under the names of
// Ho et al. 2020 ("DDPM") / openai guided-diffusion, so each formula appears in one place.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace guidiff {

enum class BetaScheduleKind { linear, cosine };

// "linear" | "cosine"; throws InputError naming the value otherwise.
BetaScheduleKind parse_beta_schedule(const std::string& name);
std::string to_string(BetaScheduleKind kind);

// The most diffusion steps T a schedule takes. Published models use 1000 to 4000; far more
// only holds memory ([T] tables per schedule) and time, and is a typo.
constexpr int64_t kMaxTimesteps = 100000;

// Throws InputError "<what> must be 1 to 100000, got T" unless 1 <= T <= kMaxTimesteps.
void check_timestep_count(int64_t num_timesteps,
                          const std::string& what = "the number of timesteps T");

// Ho et al. 2020 linear betas from 1e-4 to 0.02, scaled by 1000/T so any T gives the same
// process (as guided-diffusion does). float64 [T].
torch::Tensor linear_betas(int64_t num_timesteps);

// Nichol & Dhariwal 2021 eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2),
// s = 0.008; beta_t = 1 - abar(t)/abar(t-1) clipped to max_beta (0.999). float64 [T].
torch::Tensor cosine_betas(int64_t num_timesteps, double max_beta = 0.999);

// A (possibly respaced) discrete schedule. Index i in [0, num_steps()) is the sampler's
// step index; timestep_map[i] is the original timestep the model is called with.
// All tensors are float64 [num_steps()] on the CPU except timestep_map (int64).
struct DiscreteSchedule {
  int64_t original_num_timesteps = 0;
  torch::Tensor timestep_map;             // int64: step index -> original timestep
  torch::Tensor betas;                    // beta_i (for respaced: 1 - abar_i / abar_{i-1})
  torch::Tensor alphas_cumprod;           // abar_i
  torch::Tensor alphas_cumprod_prev;      // abar_{i-1}, with abar_{-1} = 1
  torch::Tensor sqrt_alphas_cumprod;
  torch::Tensor sqrt_one_minus_alphas_cumprod;
  torch::Tensor sqrt_recip_alphas_cumprod;    // 1/sqrt(abar)
  torch::Tensor sqrt_recipm1_alphas_cumprod;  // sqrt(1/abar - 1)
  torch::Tensor posterior_variance;           // beta~_i, DDPM eq. 7
  torch::Tensor posterior_log_variance_clipped;  // log beta~ with beta~_0 replaced by beta~_1
  torch::Tensor posterior_mean_coef1;         // coefficient of x0 in mu~, DDPM eq. 7
  torch::Tensor posterior_mean_coef2;         // coefficient of x_t in mu~, DDPM eq. 7

  int64_t num_steps() const { return betas.size(0); }

  // Builds every derived quantity from betas; timestep_map defaults to 0..T-1.
  static DiscreteSchedule from_betas(const torch::Tensor& betas, torch::Tensor timestep_map = {},
                                     int64_t original_num_timesteps = -1);
};

// The full (unrespaced) schedule of the given kind over T steps. Throws InputError if T < 1.
DiscreteSchedule make_schedule(BetaScheduleKind kind, int64_t num_timesteps);

// guided-diffusion's `timestep_respacing` syntax -> sorted original timesteps to keep:
//   "ddimN": stride int(T/N) from 0 (the stride is searched so exactly N steps are kept);
//   "N" or "a,b,c": the T steps cut into equal sections, each section k keeps that many
//   steps, evenly strided (including both ends of the section).
// An empty spec keeps all T. Throws InputError naming the spec when it cannot fit T.
std::vector<int64_t> parse_respacing(const std::string& spec, int64_t num_timesteps);

// The schedule over the kept original timesteps: abar at each kept step equals the
// original abar there, betas are recomputed as 1 - abar_i/abar_{i-1} (guided-diffusion's
// SpacedDiffusion). Throws InputError if the list is empty, unsorted or out of range.
DiscreteSchedule respace(const DiscreteSchedule& base, const std::vector<int64_t>& kept_timesteps);

// Per-sample coefficient lookup: values[step_index] as x's dtype/device, shaped [N, 1, ...]
// so it broadcasts against x ([N, ...]). step_index is int64 [N].
torch::Tensor gather_for(const torch::Tensor& values, const torch::Tensor& step_index,
                         const torch::Tensor& x);

}  // namespace guidiff
