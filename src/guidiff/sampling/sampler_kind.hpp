// The samplers by name, and what each one needs and costs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace guidiff {

enum class SamplerKind {
  ddpm,            // Ho et al. 2020, Alg. 2 (samplers.hpp)
  ddim,            // Song et al. 2021, eq. 12
  cfg_continuous,  // Ho & Salimans 2022, Alg. 2 (log-SNR models)
  euler,           // Karras et al. 2022, Alg. 2 (sigma_samplers.hpp)
  euler_ancestral,
  heun,            // Karras et al. 2022, Alg. 1-2
  dpmpp_2m,        // Lu et al. 2022, DPM-Solver++(2M)
  dpmpp_3m,
  dpmpp_2m_sde,
  dpm_2s,          // Lu et al. 2022, DPM-Solver-2
  unipc,           // Zhao et al. 2023, bh2
};

// "ddpm" | "ddim" | "cfg-continuous" | "euler" | "euler-a" | "heun" | "dpmpp-2m" | "dpmpp-3m" |
// "dpmpp-2m-sde" | "dpm-2s" | "unipc"; InputError listing them otherwise.
SamplerKind parse_sampler(const std::string& name);
std::string to_string(SamplerKind kind);
std::vector<SamplerKind> all_samplers();

// Runs over sigma levels (sigma_samplers.hpp), for discrete-time and log-SNR models alike.
bool is_sigma_sampler(SamplerKind kind);
// Moves to the next level by re-noising its x0 estimate, so CFG++ applies (ddim, euler).
bool supports_cfg_pp(SamplerKind kind);
// Model calls for `steps` steps: 2 steps - 1 for heun and dpm-2s (the last step is first
// order), otherwise `steps`.
int64_t model_calls(SamplerKind kind, int64_t steps);

}  // namespace guidiff
