// The settings of `guidiff sweep` (see sweep_settings.hpp).
#include "guidiff/cli/sweep_settings.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "guidiff/core/errors.hpp"

namespace guidiff::cli {

const char* method_name(Method method) {
  switch (method) {
    case Method::classifier: return "classifier";
    case Method::classifier_conditional: return "classifier-cond";
    case Method::cfg: break;
  }
  return "cfg";
}

std::string method_title(Method method) {
  switch (method) {
    case Method::classifier: return "classifier guidance";
    case Method::classifier_conditional: return "classifier guidance of the conditional model";
    case Method::cfg: break;
  }
  return "classifier-free guidance";
}

std::string Setting::id() const {
  char text[96];
  std::snprintf(text, sizeof text, "%s%s_%s%g_steps%lld", named_by_sampler ? (to_string(sampler) + "_").c_str() : "",
                method_name(method), is_classifier_guidance(method) ? "s" : "w", strength, static_cast<long long>(steps));
  std::string id = text;
  for (char& c : id) if (c == '.') c = 'p';
  return id;
}

std::string Setting::label() const {
  char text[64];
  std::snprintf(text, sizeof text, "%s=%g", is_classifier_guidance(method) ? "s" : "w", strength);
  return text;
}

nlohmann::json Setting::to_json() const {
  return {{"sampler", to_string(sampler)}, {"method", method_name(method)}, {"strength", strength}, {"steps", steps}};
}

std::vector<double> parse_number_list(const std::string& flag, const std::string& text) {
  std::vector<double> values;
  if (text.empty()) return values;
  const auto number = [&](const std::string& part) {
    try {
      size_t used = 0;
      const double value = std::stod(part, &used);
      if (used != part.size() || !std::isfinite(value)) throw std::invalid_argument(part);
      return value;
    } catch (const std::exception&) {
      throw InputError(flag + ": '" + part + "' is not a number (expected a list 0,1,3 or a range start:stop:step)");
    }
  };
  if (text.find(':') != std::string::npos) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    for (std::string part; std::getline(stream, part, ':');) parts.push_back(part);
    if (parts.size() != 3) throw InputError(flag + ": a range is start:stop:step, got '" + text + "'");
    const double start = number(parts[0]), stop = number(parts[1]), step = number(parts[2]);
    if (step <= 0 || stop < start) throw InputError(flag + ": range '" + text + "' needs step > 0 and stop >= start");
    // Counted before any is made: 0:1e6:0.001 once built a billion values first.
    if ((stop - start) / step > 999.0 + 1e-9) {
      throw InputError(flag + ": range '" + text + "' has more than 1000 values");
    }
    for (int64_t i = 0; start + i * step <= stop + 1e-9 * step; ++i) values.push_back(start + i * step);
  } else {
    std::stringstream stream(text);
    for (std::string part; std::getline(stream, part, ',');) values.push_back(number(part));
  }
  for (double value : values) {
    if (value < 0) throw InputError(flag + ": guidance strengths must be >= 0, got " + std::to_string(value));
  }
  return values;
}

std::string format_number(double value, const char* format) {
  if (!std::isfinite(value)) return "";
  char text[32];
  std::snprintf(text, sizeof text, format, value);
  return text;
}

std::vector<SamplerKind> parse_sampler_list(const std::string& flag, const std::string& text) {
  std::vector<SamplerKind> samplers;
  std::stringstream stream(text);
  for (std::string name; std::getline(stream, name, ',');) {
    try {
      const SamplerKind kind = parse_sampler(name);
      if (std::find(samplers.begin(), samplers.end(), kind) != samplers.end()) {
        throw InputError("sampler '" + name + "' is listed twice");
      }
      samplers.push_back(kind);
    } catch (const InputError& error) {
      throw InputError(flag + ": " + error.what());
    }
  }
  if (samplers.empty()) throw InputError(flag + " is empty");
  return samplers;
}

}  // namespace guidiff::cli
