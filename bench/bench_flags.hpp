// Minimal flag parsing for the stand-alone benchmark programs (`--name value` pairs and bare
// switches). The benchmarks are driven by scripts, not users, so a missing or malformed value
// falls back to the default instead of being an error.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string>

namespace bench_flags {

inline int64_t value(int argc, char** argv, const std::string& name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (name == argv[i]) return std::atoll(argv[i + 1]);
  }
  return fallback;
}

inline std::string text(int argc, char** argv, const std::string& name) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (name == argv[i]) return argv[i + 1];
  }
  return "";
}

inline bool present(int argc, char** argv, const std::string& name) {
  for (int i = 1; i < argc; ++i) {
    if (name == argv[i]) return true;
  }
  return false;
}

}  // namespace bench_flags
