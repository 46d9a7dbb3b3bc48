// Strict reading of JSON model configs: every field has a default, a present field must have
// the right type, and a key nobody reads is an error (it is almost always a typo). Messages
// name the config and the field.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace guidiff {

class ConfigFields {
 public:
  // Throws InputError naming `context` (e.g. "unet config") unless `object` is an object.
  ConfigFields(const nlohmann::json& object, std::string context);

  // Each read leaves `value` (the default) untouched when the key is absent and throws
  // InputError naming the field when it holds the wrong JSON type.
  void read(const char* key, int64_t& value);
  void read(const char* key, double& value);
  void read(const char* key, bool& value);
  void read(const char* key, std::string& value);
  void read(const char* key, std::vector<int64_t>& value);
  void read(const char* key, std::vector<double>& value);

  // Throws InputError naming the first key that no read asked for.
  void reject_unknown() const;

  // "<context>: field "<key>" <what>", for validation messages.
  std::string field_error(const char* key, const std::string& what) const;
  const std::string& context() const { return context_; }

 private:
  const nlohmann::json* find(const char* key);

  const nlohmann::json& object_;
  std::string context_;
  std::set<std::string> known_;
};

}  // namespace guidiff
