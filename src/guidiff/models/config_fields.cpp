// Strict JSON field reading for model configs (see config_fields.hpp).
#include "guidiff/models/config_fields.hpp"

#include "guidiff/core/errors.hpp"

namespace guidiff {

ConfigFields::ConfigFields(const nlohmann::json& object, std::string context)
    : object_(object), context_(std::move(context)) {
  if (!object_.is_object())
    throw InputError(context_ + ": expected a JSON object, got " + object_.dump());
}

std::string ConfigFields::field_error(const char* key, const std::string& what) const {
  return context_ + ": field \"" + key + "\" " + what;
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

void ConfigFields::read(const char* key, std::vector<int64_t>& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  const auto wrong = [&] {
    return InputError(field_error(key, "must be a list of integers, got " + field->dump()));
  };
  if (!field->is_array()) throw wrong();
  std::vector<int64_t> result;
  for (const auto& item : *field) {
    if (!item.is_number_integer()) throw wrong();
    result.push_back(item.get<int64_t>());
  }
  value = std::move(result);
}

void ConfigFields::read(const char* key, std::vector<double>& value) {
  const auto* field = find(key);
  if (field == nullptr) return;
  const auto wrong = [&] { return InputError(field_error(key, "must be a list of numbers, got " + field->dump())); };
  if (!field->is_array()) throw wrong();
  std::vector<double> result;
  for (const auto& item : *field) {
    if (!item.is_number()) throw wrong();
    result.push_back(item.get<double>());
  }
  value = std::move(result);
}

void ConfigFields::reject_unknown() const {
  for (const auto& item : object_.items()) {
    if (known_.count(item.key()) == 0) {
      throw InputError(context_ + ": unknown field \"" + item.key() + "\"");
    }
  }
}

}  // namespace guidiff
