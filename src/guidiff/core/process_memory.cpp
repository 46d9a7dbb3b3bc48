#include "guidiff/core/process_memory.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

// "key value" lines (memory.stat), or "Key:   value kB" lines (/proc/meminfo, in bytes).
std::map<std::string, int64_t> read_key_values(const std::string& path) {
  std::map<std::string, int64_t> values;
  std::ifstream file(path);
  for (std::string line; std::getline(file, line);) {
    std::istringstream fields(line);
    std::string key, unit;
    long long value = 0;
    if (!(fields >> key >> value)) continue;
    if (!key.empty() && key.back() == ':') key.pop_back();
    values[key] = (fields >> unit && unit == "kB") ? value * 1024 : value;
  }
  return values;
}

std::optional<int64_t> read_number(const std::string& path) {
  std::ifstream file(path);
  long long value = 0;
  if (file >> value) return value;
  return std::nullopt;  // missing, or "max" (v2's no limit)
}

}  // namespace

std::optional<int64_t> cgroup_memory_headroom(const std::string& self_cgroup,
                                              const std::string& root) {
  std::ifstream self(self_cgroup);
  std::string v1_path, v2_path;
  for (std::string line; std::getline(self, line);) {
    const size_t first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    const std::string controllers = line.substr(first + 1, second - first - 1);
    const std::string path = line.substr(second + 1);
    if (line.compare(0, first, "0") == 0 && controllers.empty()) v2_path = path;
    std::istringstream names(controllers);
    for (std::string name; std::getline(names, name, ',');) {
      if (name == "memory") v1_path = path;
    }
  }
  std::optional<int64_t> headroom;
  const auto take = [&headroom](std::optional<int64_t> limit, int64_t usage, int64_t reclaimable) {
    // v1 writes "no limit" as a page-rounded 2^63 - 1.
    if (!limit || *limit >= (int64_t{1} << 62)) return;
    const int64_t left = std::max<int64_t>(0, *limit - usage + reclaimable);
    headroom = headroom ? std::min(*headroom, left) : left;
  };
  if (!v1_path.empty()) {
    // Inside a container the controller's root is mounted at <root>/memory itself.
    std::string dir = root + "/memory" + v1_path;
    std::optional<int64_t> usage = read_number(dir + "/memory.usage_in_bytes");
    if (!usage) {
      dir = root + "/memory";
      usage = read_number(dir + "/memory.usage_in_bytes");
    }
    const auto stat = read_key_values(dir + "/memory.stat");
    const auto limit =
        stat.find("hierarchical_memory_limit");  // the tightest of it and its parents
    const auto inactive = stat.find("total_inactive_file");
    if (limit != stat.end()) {
      take(limit->second, usage.value_or(0), inactive == stat.end() ? 0 : inactive->second);
    }
  }
  if (!v2_path.empty()) {
    // Every limit on the way up to the root applies (v2 keeps no hierarchical total).
    for (std::string path = v2_path;;) {
      const std::string dir = root + path;
      if (const auto usage = read_number(dir + "/memory.current")) {
        const auto stat = read_key_values(dir + "/memory.stat");
        const auto inactive = stat.find("inactive_file");
        take(read_number(dir + "/memory.max"), *usage,
             inactive == stat.end() ? 0 : inactive->second);
      }
      const size_t parent = path.rfind('/');
      if (path.empty() || path == "/" || parent == std::string::npos) break;
      path.resize(parent);
    }
  }
  return headroom;
}

int64_t peak_resident_bytes() {
  struct rusage usage {};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
#if defined(__APPLE__)
  return static_cast<int64_t>(usage.ru_maxrss);  // bytes on macOS
#else
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // KiB on Linux
#endif
}

std::optional<int64_t> available_memory_bytes() {
  const auto meminfo = read_key_values("/proc/meminfo");
  const auto available = meminfo.find("MemAvailable");
  if (available == meminfo.end()) return std::nullopt;
  const auto swap = meminfo.find("SwapFree");
  int64_t bytes = available->second + (swap == meminfo.end() ? 0 : swap->second);
  if (const auto headroom = cgroup_memory_headroom()) bytes = std::min(bytes, *headroom);
  return bytes;
}

int64_t saturated_bytes(double bytes) {
  // 2^63 is exact in double; anything from it up (or NaN) is past int64.
  return bytes < 9223372036854775808.0 ? static_cast<int64_t>(std::max(bytes, 0.0))
                                       : std::numeric_limits<int64_t>::max();
}

std::string memory_text(int64_t bytes) {
  static const char* const units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024.0 && unit + 1 < sizeof units / sizeof units[0]) {
    value /= 1024.0;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof text, "%lld bytes", static_cast<long long>(bytes));
  } else {
    std::snprintf(text, sizeof text,
                  value < 10    ? "%.2f %s"
                  : value < 100 ? "%.1f %s"
                                : "%.0f %s",
                  value, units[unit]);
  }
  return text;
}

void check_fits_in_memory(int64_t bytes, const std::string& what, const std::string& advice,
                          std::optional<int64_t> available) {
  if (!available || bytes <= *available) return;
  throw InputError(what + " need " + memory_text(bytes) + " of memory, but only " +
                   memory_text(*available) + " is available" + advice);
}

}  // namespace guidiff
