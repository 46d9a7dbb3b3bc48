// Discrete noise schedules and respacing (see discrete_schedule.hpp and docs/maths.md).
#include "guidiff/schedule/discrete_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <unordered_map>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

constexpr double kPi = 3.14159265358979323846;

torch::TensorOptions float64_cpu() { return torch::TensorOptions().dtype(torch::kFloat64); }

std::string trim(const std::string& text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string::npos) return "";
  const auto last = text.find_last_not_of(" \t");
  return text.substr(first, last - first + 1);
}

// A whole non-negative decimal number, or InputError naming the respacing spec.
// Python 3's round(): to the nearest integer, ties to the even one (independent of the
// floating-point rounding mode).
int64_t round_half_to_even(double value) {
  const double floor_value = std::floor(value);
  const double fraction = value - floor_value;
  int64_t result = static_cast<int64_t>(floor_value);
  if (fraction > 0.5 || (fraction == 0.5 && result % 2 != 0)) ++result;
  return result;
}

int64_t parse_count(const std::string& field, const std::string& spec) {
  const std::string text = trim(field);
  const bool decimal =
      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (text.empty() || !decimal || text.size() > 18) {
    throw InputError("respacing '" + spec + "': '" + field + "' is not a step count");
  }
  return std::stoll(text);
}

// guided-diffusion's "ddimN": the first stride in 1..T-1 for which range(0, T, stride)
// has exactly N elements.
std::vector<int64_t> ddim_respacing(const std::string& spec, int64_t num_timesteps) {
  const int64_t desired = parse_count(spec.substr(4), spec);
  for (int64_t stride = 1; stride < num_timesteps; ++stride) {
    if ((num_timesteps + stride - 1) / stride == desired) {  // len(range(0, T, stride))
      std::vector<int64_t> kept;
      for (int64_t t = 0; t < num_timesteps; t += stride) kept.push_back(t);
      return kept;
    }
  }
  throw InputError("respacing '" + spec + "': cannot create exactly " + std::to_string(desired) +
                   " steps with an integer stride over T = " + std::to_string(num_timesteps));
}

// guided-diffusion's section counts "a,b,c": T is cut into len sections (the first T % len
// one step longer); section k keeps count_k steps at fractional stride (size-1)/(count-1),
// accumulated and rounded half-to-even exactly as Python's round() does.
std::vector<int64_t> section_respacing(const std::string& spec, int64_t num_timesteps) {
  std::vector<int64_t> counts;
  std::stringstream fields(spec);
  for (std::string field; std::getline(fields, field, ',');)
    counts.push_back(parse_count(field, spec));
  if (spec.back() == ',') counts.push_back(parse_count("", spec));
  const int64_t sections = static_cast<int64_t>(counts.size());
  const int64_t size_per = num_timesteps / sections;
  const int64_t extra = num_timesteps % sections;
  std::vector<int64_t> kept;
  int64_t start = 0;
  for (int64_t i = 0; i < sections; ++i) {
    const int64_t size = size_per + (i < extra ? 1 : 0);
    if (size < counts[i]) {
      throw InputError("respacing '" + spec + "': cannot divide a section of " +
                       std::to_string(size) + " steps (T = " + std::to_string(num_timesteps) +
                       ") into " + std::to_string(counts[i]));
    }
    const double frac_stride = counts[i] <= 1 ? 1.0 : double(size - 1) / double(counts[i] - 1);
    double position = 0.0;
    for (int64_t k = 0; k < counts[i]; ++k) {
      kept.push_back(start + round_half_to_even(position));
      position += frac_stride;
    }
    start += size;
  }
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
  if (kept.empty()) throw InputError("respacing '" + spec + "' keeps no steps");
  return kept;
}

}  // namespace

BetaScheduleKind parse_beta_schedule(const std::string& name) {
  if (name == "linear") return BetaScheduleKind::linear;
  if (name == "cosine") return BetaScheduleKind::cosine;
  throw InputError("unknown beta schedule '" + name + "' (expected linear or cosine)");
}

std::string to_string(BetaScheduleKind kind) {
  return kind == BetaScheduleKind::linear ? "linear" : "cosine";
}

void check_timestep_count(int64_t num_timesteps, const std::string& what) {
  if (num_timesteps < 1 || num_timesteps > kMaxTimesteps) {
    throw InputError(what + " must be 1 to " + std::to_string(kMaxTimesteps) + ", got " +
                     std::to_string(num_timesteps));
  }
}

torch::Tensor linear_betas(int64_t num_timesteps) {
  check_timestep_count(num_timesteps);
  // Ho et al. 2020 Sec. 4: beta from 1e-4 to 0.02 over T = 1000, rescaled by 1000/T.
  const double scale = 1000.0 / double(num_timesteps);
  const double beta_start = scale * 1e-4;
  const double beta_end = scale * 0.02;
  if (beta_end >= 1.0) {
    throw InputError(
        "T = " + std::to_string(num_timesteps) +
        " is too small for the linear schedule (its last beta would be >= 1); use T > 20");
  }
  return torch::linspace(beta_start, beta_end, num_timesteps, float64_cpu());
}

torch::Tensor cosine_betas(int64_t num_timesteps, double max_beta) {
  check_timestep_count(num_timesteps);
  if (!(max_beta > 0.0 && max_beta < 1.0)) {
    throw InputError("cosine schedule max_beta must be in (0, 1) (got " + std::to_string(max_beta) +
                     ")");
  }
  // Nichol & Dhariwal 2021 eq. 17. Step i goes from t = i/T to (i+1)/T, so
  // abar_i = f((i+1)/T) / f(0) until the clip at max_beta bites (only near t = T).
  const auto f = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * kPi / 2.0);
    return c * c;
  };
  auto betas = torch::empty({num_timesteps}, float64_cpu());
  auto* out = betas.data_ptr<double>();
  const double T = double(num_timesteps);
  for (int64_t i = 0; i < num_timesteps; ++i) {
    out[i] = std::min(1.0 - f(double(i + 1) / T) / f(double(i) / T), max_beta);
  }
  return betas;
}

DiscreteSchedule DiscreteSchedule::from_betas(const torch::Tensor& betas_in,
                                              torch::Tensor timestep_map,
                                              int64_t original_num_timesteps) {
  if (!betas_in.defined() || betas_in.dim() != 1 || betas_in.size(0) < 1) {
    throw InputError("schedule betas must be a non-empty 1-D tensor");
  }
  DiscreteSchedule s;
  const auto betas = betas_in.to(torch::kCPU, torch::kFloat64).contiguous();
  const int64_t T = betas.size(0);
  if (!(betas.gt(0).all().item<bool>() && betas.lt(1).all().item<bool>())) {
    throw InputError("schedule betas must all lie in (0, 1)");
  }
  if (!timestep_map.defined()) timestep_map = torch::arange(T, torch::kInt64);
  timestep_map = timestep_map.to(torch::kCPU, torch::kInt64).contiguous();
  if (timestep_map.dim() != 1 || timestep_map.size(0) != T) {
    throw InputError("schedule timestep_map must have one entry per beta (" + std::to_string(T) +
                     ")");
  }
  s.original_num_timesteps = original_num_timesteps < 0 ? T : original_num_timesteps;
  s.timestep_map = timestep_map;
  s.betas = betas;

  // DDPM Sec. 2: alpha_t = 1 - beta_t, abar_t = prod_{s<=t} alpha_s; abar_{-1} = 1.
  const auto alphas = 1.0 - betas;
  s.alphas_cumprod = torch::cumprod(alphas, 0);
  s.alphas_cumprod_prev =
      torch::cat({torch::ones({1}, float64_cpu()), s.alphas_cumprod.slice(0, 0, T - 1)});
  s.sqrt_alphas_cumprod = s.alphas_cumprod.sqrt();
  s.sqrt_one_minus_alphas_cumprod = (1.0 - s.alphas_cumprod).sqrt();
  s.sqrt_recip_alphas_cumprod = s.alphas_cumprod.reciprocal().sqrt();
  s.sqrt_recipm1_alphas_cumprod = (s.alphas_cumprod.reciprocal() - 1.0).sqrt();

  // DDPM eq. 7: beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (zero at t = 0), and
  // mu~_t = coef1 x0 + coef2 x_t.
  const auto one_minus_abar = 1.0 - s.alphas_cumprod;
  s.posterior_variance = betas * (1.0 - s.alphas_cumprod_prev) / one_minus_abar;
  // log 0 at t = 0 is replaced by log beta~_1 (guided-diffusion); a one-step schedule has
  // no beta~_1 and uses log beta_0 instead.
  const auto first_log_variance =
      T > 1 ? s.posterior_variance.slice(0, 1, 2) : betas.slice(0, 0, 1);
  s.posterior_log_variance_clipped =
      torch::cat({first_log_variance, s.posterior_variance.slice(0, 1, T)}).log();
  s.posterior_mean_coef1 = betas * s.alphas_cumprod_prev.sqrt() / one_minus_abar;
  s.posterior_mean_coef2 = (1.0 - s.alphas_cumprod_prev) * alphas.sqrt() / one_minus_abar;
  return s;
}

DiscreteSchedule make_schedule(BetaScheduleKind kind, int64_t num_timesteps) {
  return DiscreteSchedule::from_betas(
      kind == BetaScheduleKind::linear ? linear_betas(num_timesteps) : cosine_betas(num_timesteps));
}

std::vector<int64_t> parse_respacing(const std::string& spec_in, int64_t num_timesteps) {
  check_timestep_count(num_timesteps);
  const std::string spec = trim(spec_in);
  if (spec.empty()) {
    std::vector<int64_t> all(static_cast<size_t>(num_timesteps));
    for (int64_t t = 0; t < num_timesteps; ++t) all[static_cast<size_t>(t)] = t;
    return all;
  }
  if (spec.rfind("ddim", 0) == 0) return ddim_respacing(spec, num_timesteps);
  return section_respacing(spec, num_timesteps);
}

DiscreteSchedule respace(const DiscreteSchedule& base, const std::vector<int64_t>& kept_timesteps) {
  if (kept_timesteps.empty()) throw InputError("respacing keeps no timesteps");
  // Kept entries are original timesteps; find each one's index in the base schedule
  // (identical for an unrespaced base).
  std::unordered_map<int64_t, int64_t> index_of_timestep;
  const auto base_map = base.timestep_map.to(torch::kCPU, torch::kInt64).contiguous();
  for (int64_t i = 0; i < base_map.size(0); ++i)
    index_of_timestep[base_map.data_ptr<int64_t>()[i]] = i;

  const auto abar = base.alphas_cumprod.contiguous();
  const auto* abar_data = abar.data_ptr<double>();
  std::vector<double> new_betas;
  double previous_abar = 1.0;
  for (size_t k = 0; k < kept_timesteps.size(); ++k) {
    const int64_t t = kept_timesteps[k];
    if (t < 0 || t >= base.original_num_timesteps) {
      throw InputError("respaced timestep " + std::to_string(t) + " is outside [0, " +
                       std::to_string(base.original_num_timesteps) + ")");
    }
    if (k > 0 && t <= kept_timesteps[k - 1]) {
      throw InputError("respaced timesteps must be strictly increasing (" +
                       std::to_string(kept_timesteps[k - 1]) + " then " + std::to_string(t) + ")");
    }
    const auto found = index_of_timestep.find(t);
    if (found == index_of_timestep.end()) {
      throw InputError("respaced timestep " + std::to_string(t) +
                       " is not a step of the base schedule");
    }
    // guided-diffusion SpacedDiffusion: beta_k = 1 - abar(t_k) / abar(t_{k-1}), so the
    // cumulative product reproduces abar exactly at each kept step.
    const double current_abar = abar_data[found->second];
    new_betas.push_back(1.0 - current_abar / previous_abar);
    previous_abar = current_abar;
  }
  const auto betas = torch::tensor(new_betas, float64_cpu());
  const auto map = torch::tensor(kept_timesteps, torch::kInt64);
  return DiscreteSchedule::from_betas(betas, map, base.original_num_timesteps);
}

torch::Tensor gather_for(const torch::Tensor& values, const torch::Tensor& step_index,
                         const torch::Tensor& x) {
  if (!step_index.defined() || step_index.dim() != 1 || step_index.size(0) != x.size(0)) {
    throw InputError("step_index must be int64 [N] with N = x.size(0) = " +
                     std::to_string(x.size(0)));
  }
  const auto index = step_index.to(torch::kCPU, torch::kInt64);
  if (index.numel() > 0 &&
      (index.min().item<int64_t>() < 0 || index.max().item<int64_t>() >= values.size(0))) {
    throw InputError("step_index out of range [0, " + std::to_string(values.size(0)) + ")");
  }
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[0] = x.size(0);
  return values.index_select(0, index).to(x.device(), x.scalar_type()).reshape(shape);
}

}  // namespace guidiff
