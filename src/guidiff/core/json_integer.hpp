// Reading an integer from untrusted JSON (configs, options, metadata).
#pragma once
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

namespace guidiff {

// True when `field` is a JSON integer that `Integer` holds exactly. nlohmann's get<Integer>()
// converts a float such as 4.4e36 with a cast whose result is undefined (found by UBSan while
// fuzzing), and turns an unsigned value past the type's maximum into a negative one, so a
// reader checks this first and reports the field instead.
template <typename Integer>
bool json_integer_fits(const nlohmann::json& field) {
  static_assert(std::is_integral_v<Integer> && !std::is_same_v<Integer, bool>);
  constexpr auto max = std::numeric_limits<Integer>::max();
  constexpr auto min = std::numeric_limits<Integer>::min();
  if (field.is_number_unsigned()) return field.get<uint64_t>() <= static_cast<uint64_t>(max);
  if (!field.is_number_integer()) return false;
  const int64_t value = field.get<int64_t>();
  if (value < 0) return std::is_signed_v<Integer> && value >= static_cast<int64_t>(min);
  return static_cast<uint64_t>(value) <= static_cast<uint64_t>(max);
}

}  // namespace guidiff
