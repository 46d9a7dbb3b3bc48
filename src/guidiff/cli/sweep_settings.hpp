// The settings of `guidiff sweep`: which sampler, guidance method, strength and step count,
// their names on disk, and the list syntax of the sweep's flags.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "guidiff/sampling/sampler_kind.hpp"

namespace guidiff::cli {

// classifier: classifier guidance of the model's null class (or of an unconditional model);
// classifier_conditional: classifier guidance of the conditional model given the requested
// class (Dhariwal & Nichol 2021, sec. 5, "conditional + guidance"); cfg: classifier-free.
enum class Method { classifier, classifier_conditional, cfg };
constexpr Method kMethods[] = {Method::classifier, Method::classifier_conditional, Method::cfg};
const char* method_name(Method method);  // on disk and in tables: classifier, classifier-cond, cfg
// In plots and captions, e.g. "classifier guidance of the conditional model".
std::string method_title(Method method);
inline bool is_classifier_guidance(Method method) { return method != Method::cfg; }

struct Setting {
  SamplerKind sampler = SamplerKind::ddim;
  Method method = Method::cfg;
  double strength = 0.0;  // s or w
  int64_t steps = 0;
  bool named_by_sampler = false;  // several samplers in the sweep: the id starts with the sampler

  // settings/<id>/: e.g. cfg_w3_steps25, or dpmpp-2m_cfg_w3_steps25 ('.' -> 'p').
  std::string id() const;
  // "s=3" / "w=3".
  std::string label() const;
  nlohmann::json to_json() const;
};

// "0,1,3" or "start:stop:step" (inclusive stop) -> numbers, each >= 0. InputError naming the flag.
std::vector<double> parse_number_list(const std::string& flag, const std::string& text);

// "ddim,dpmpp-2m" -> samplers (no repeats). InputError naming the flag.
std::vector<SamplerKind> parse_sampler_list(const std::string& flag, const std::string& text);

// printf-formatted, or "" for a non-finite value.
std::string format_number(double value, const char* format = "%.4g");

}  // namespace guidiff::cli
