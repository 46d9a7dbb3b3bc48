#include "guidiff/cli/option_list.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>

namespace guidiff::cli {
namespace {

bool all_digits(const std::string& text, size_t from) {
  if (from >= text.size()) return false;
  for (size_t i = from; i < text.size(); ++i) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  return true;
}

std::string check_integer(const std::string& text, bool is_unsigned) {
  const size_t digits = !text.empty() && (text[0] == '+' || (!is_unsigned && text[0] == '-')) ? 1 : 0;
  if (!all_digits(text, digits)) {
    return "'" + text + "' is not a " + std::string(is_unsigned ? "non-negative " : "") + "whole number";
  }
  // CLI11 converts with base 0, so "010" would silently be 8.
  if (text.size() > digits + 1 && text[digits] == '0') return "'" + text + "' has a leading zero (write it in decimal)";
  errno = 0;
  if (is_unsigned) {
    std::strtoull(text.c_str(), nullptr, 10);
    return errno == ERANGE ? "'" + text + "' is out of range" : "";
  }
  // INT options are int or int64_t; none means anything past int's range (counts, steps,
  // sizes, threads), and an int one would otherwise end in CLI11's "Could not convert".
  const long long value = std::strtoll(text.c_str(), nullptr, 10);
  const bool in_range = errno != ERANGE && value >= std::numeric_limits<int>::min() && value <= std::numeric_limits<int>::max();
  return in_range ? "" : "'" + text + "' is out of range";
}

std::string check_float(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size()) return "'" + text + "' is not a number";
  if (!std::isfinite(value) || (errno == ERANGE && std::fabs(value) > 1.0)) return "'" + text + "' is not a finite number";
  return "";
}

void for_each_command(const CLI::App& app, const std::string& path,
                      const std::function<void(const CLI::App&, const std::string&)>& visit) {
  visit(app, path);
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    for_each_command(*sub, path.empty() ? sub->get_name() : path + " " + sub->get_name(), visit);
  }
}

}  // namespace

void check_numeric_options(CLI::App& app) {
  std::vector<CLI::App*> apps = {&app};
  for (size_t i = 0; i < apps.size(); ++i) {
    for (CLI::App* sub : apps[i]->get_subcommands([](CLI::App*) { return true; })) apps.push_back(sub);
    for (CLI::Option* option : apps[i]->get_options([](CLI::Option*) { return true; })) {
      const std::string type = option->get_type_name();
      if (type == "INT" || type == "UINT") {
        const bool is_unsigned = type == "UINT";
        option->check([is_unsigned](const std::string& text) { return check_integer(text, is_unsigned); });
      } else if (type == "FLOAT") {
        option->check(check_float);
      }
    }
  }
}

std::string option_list(const CLI::App& app) {
  std::string lines;
  for_each_command(app, "", [&](const CLI::App& command, const std::string& path) {
    for (const CLI::Option* option : command.get_options([](const CLI::Option*) { return true; })) {
      // Named options by their first long name; positional arguments (convert's input) by
      // their name, with "positional": true; -h style short-only options are left out.
      const bool positional = option->get_positional() && !option->nonpositional();
      if (option->get_lnames().empty() && !positional) continue;
      const nlohmann::json line = {{"command", path},
                                   {"option", positional ? option->get_name(true) : "--" + option->get_lnames().front()},
                                   {"positional", positional},
                                   {"type", option->get_type_name()},
                                   {"flag", option->get_expected_max() == 0},
                                   {"required", option->get_required()}};
      lines += line.dump() + "\n";
    }
  });
  return lines;
}

}  // namespace guidiff::cli
