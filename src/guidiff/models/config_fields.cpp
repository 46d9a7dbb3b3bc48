// Strict JSON field reading for model configs (see config_fields.hpp).
#include "guidiff/models/config_fields.hpp"

#include <algorithm>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"

namespace guidiff {

ConfigFields::ConfigFields(const nlohmann::json& object, std::string context)
    : object_(object), context_(std::move(context)) {
  if (!object_.is_object())
    throw InputError(context_ + ": expected a JSON object, got " + object_.dump());
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
  if (!field->is_number_integer())
    throw InputError(field_error(key, "must be an integer, got " + field->dump()));
  value = field->get<int64_t>();
}

void ConfigFields::read(const char* key, double& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!field->is_number())
    throw InputError(field_error(key, "must be a number, got " + field->dump()));
  value = field->get<double>();
}

void ConfigFields::read(const char* key, bool& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!field->is_boolean())
    throw InputError(field_error(key, "must be true or false, got " + field->dump()));
  value = field->get<bool>();
}

void ConfigFields::read(const char* key, std::string& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  if (!field->is_string())
    throw InputError(field_error(key, "must be a string, got " + field->dump()));
  value = field->get<std::string>();
}

template <typename Number, typename Accepts>
void ConfigFields::read_list(const char* key, std::vector<Number>& value, const char* words, Accepts accepts) {
  const auto* field = find(key);
  if (field == nullptr) return;
  const bool ok = field->is_array() && std::all_of(field->begin(), field->end(), accepts);
  if (!ok) throw_field_error(key, std::string("must be a list of ") + words + ", got " + field->dump());
  std::vector<Number> result;
  for (const auto& item : *field) result.push_back(item.get<Number>());
  value = std::move(result);
}

void ConfigFields::read(const char* key, std::vector<int64_t>& value) {
  read_list(key, value, "integers", [](const nlohmann::json& item) { return item.is_number_integer(); });
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
