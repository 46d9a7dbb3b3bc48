// Strict JSON field reading for model configs (see config_fields.hpp).
#include "guidiff/models/config_fields.hpp"

#include <algorithm>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/json_integer.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {
namespace {

// A value from the file, as an error quotes it: one short printable line, whatever it holds.
std::string quoted(const nlohmann::json& value) { return printable_excerpt(value.dump(), 80); }

}  // namespace

ConfigFields::ConfigFields(const nlohmann::json& object, std::string context)
    : object_(object), context_(std::move(context)) {
  if (!object_.is_object())
    throw InputError(context_ + ": expected a JSON object, got " + quoted(object_));
}

std::string ConfigFields::field_error(const char* key, const std::string& what) const {
  return context_ + ": field \"" + key + "\" " + what;
}

void ConfigFields::throw_field_error(const char* key, const std::string& what) const {
  throw InputError(field_error(key, what));
}

const nlohmann::json* ConfigFields::find(const char* key) {
  known_.insert(key);
  const auto it = object_.find(key);
  return it == object_.end() ? nullptr : &*it;
}

void ConfigFields::read(const char* key, int64_t& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!json_integer_fits<int64_t>(*field))
    throw InputError(field_error(key, "must be an integer, got " + quoted(*field)));
  value = field->get<int64_t>();
}

void ConfigFields::read(const char* key, double& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!field->is_number())
    throw InputError(field_error(key, "must be a number, got " + quoted(*field)));
  value = field->get<double>();
}

void ConfigFields::read(const char* key, bool& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!field->is_boolean())
    throw InputError(field_error(key, "must be true or false, got " + quoted(*field)));
  value = field->get<bool>();
}

void ConfigFields::read(const char* key, std::string& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!field->is_string())
    throw InputError(field_error(key, "must be a string, got " + quoted(*field)));
  value = field->get<std::string>();
}

template <typename Number, typename Accepts>
void ConfigFields::read_list(const char* key, std::vector<Number>& value, const char* words, Accepts accepts) {
  const auto* field = find(key);
  if (field == nullptr) return;
  const bool ok = field->is_array() && std::all_of(field->begin(), field->end(), accepts);
  if (!ok) throw_field_error(key, std::string("must be a list of ") + words + ", got " + quoted(*field));
  std::vector<Number> result;
  for (const auto& item : *field) result.push_back(item.get<Number>());
  value = std::move(result);
}

void ConfigFields::read(const char* key, std::vector<int64_t>& value) {
  read_list(key, value, "integers", [](const nlohmann::json& item) { return json_integer_fits<int64_t>(item); });
}

void ConfigFields::read(const char* key, std::vector<double>& value) {
  read_list(key, value, "numbers", [](const nlohmann::json& item) { return item.is_number(); });
}

void ConfigFields::reject_unknown() const {
  for (const auto& item : object_.items()) {
    if (known_.count(item.key()) == 0) {
      throw InputError(context_ + ": unknown field \"" + printable_excerpt(item.key(), 60) + "\"");
    }
  }
}

}  // namespace guidiff
