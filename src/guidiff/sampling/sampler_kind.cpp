#include "guidiff/sampling/sampler_kind.hpp"

#include <utility>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

const std::vector<std::pair<SamplerKind, const char*>>& sampler_names() {
  static const std::vector<std::pair<SamplerKind, const char*>> names = {
      {SamplerKind::ddpm, "ddpm"},
      {SamplerKind::ddim, "ddim"},
      {SamplerKind::cfg_continuous, "cfg-continuous"},
      {SamplerKind::euler, "euler"},
      {SamplerKind::euler_ancestral, "euler-a"},
      {SamplerKind::heun, "heun"},
      {SamplerKind::dpmpp_2m, "dpmpp-2m"},
      {SamplerKind::dpmpp_3m, "dpmpp-3m"},
      {SamplerKind::dpmpp_2m_sde, "dpmpp-2m-sde"},
      {SamplerKind::dpm_2s, "dpm-2s"},
      {SamplerKind::unipc, "unipc"},
  };
  return names;
}

}  // namespace

SamplerKind parse_sampler(const std::string& name) {
  std::string known;
  for (const auto& [kind, text] : sampler_names()) {
    if (name == text) return kind;
    known += (known.empty() ? "" : ", ") + std::string(text);
  }
  throw InputError("unknown sampler '" + name + "' (expected one of " + known + ")");
}

std::string to_string(SamplerKind kind) {
  for (const auto& [candidate, text] : sampler_names()) {
    if (candidate == kind) return text;
  }
  return "unknown";
}

std::vector<SamplerKind> all_samplers() {
  std::vector<SamplerKind> kinds;
  for (const auto& entry : sampler_names()) kinds.push_back(entry.first);
  return kinds;
}

bool is_sigma_sampler(SamplerKind kind) {
  return kind != SamplerKind::ddpm && kind != SamplerKind::ddim && kind != SamplerKind::cfg_continuous;
}

bool supports_cfg_pp(SamplerKind kind) { return kind == SamplerKind::ddim || kind == SamplerKind::euler; }

int64_t model_calls(SamplerKind kind, int64_t steps) {
  return kind == SamplerKind::heun || kind == SamplerKind::dpm_2s ? 2 * steps - 1 : steps;
}

}  // namespace guidiff
