// torchrun's environment variables (see launch_environment.hpp).
#include "guidiff/distributed/launch_environment.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <thread>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

int64_t integer_variable(const char* name, const char* text, int64_t low, int64_t high) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (*text == '\0' || *end != '\0' || errno != 0 || value < low || value > high) {
    throw DistributedError(std::string("environment variable ") + name + "='" + text + "' must be a whole number in [" +
                           std::to_string(low) + ", " + std::to_string(high) + "]");
  }
  return value;
}

}  // namespace

LaunchEnvironment read_launch_environment(const std::function<const char*(const char*)>& lookup_in) {
  const auto lookup = [&](const char* name) -> const char* {
    return lookup_in ? lookup_in(name) : std::getenv(name);
  };
  const auto required = [&](const char* name, const std::string& why) -> const char* {
    const char* value = lookup(name);
    if (value == nullptr || *value == '\0') {
      throw DistributedError(std::string("environment variable ") + name + " is not set, but " + why);
    }
    return value;
  };
  LaunchEnvironment environment;
  const char* world = lookup("WORLD_SIZE");
  if (world == nullptr || *world == '\0') return environment;
  environment.world_size = integer_variable("WORLD_SIZE", world, 1, 1 << 20);
  if (!environment.distributed()) return environment;

  const std::string why = "WORLD_SIZE=" + std::to_string(environment.world_size) + " needs it";
  environment.rank = integer_variable("RANK", required("RANK", why), 0, environment.world_size - 1);
  if (const char* local = lookup("LOCAL_WORLD_SIZE"); local != nullptr && *local != '\0') {
    environment.local_world_size = integer_variable("LOCAL_WORLD_SIZE", local, 1, environment.world_size);
  } else {
    environment.local_world_size = environment.world_size;
  }
  if (const char* local = lookup("LOCAL_RANK"); local != nullptr && *local != '\0') {
    environment.local_rank = integer_variable("LOCAL_RANK", local, 0, environment.local_world_size - 1);
  } else {
    environment.local_rank = environment.rank % environment.local_world_size;
  }
  environment.master_addr = required("MASTER_ADDR", why);
  environment.master_port = integer_variable("MASTER_PORT", required("MASTER_PORT", why), 1, 65535);
  if (const char* agent = lookup("TORCHELASTIC_USE_AGENT_STORE"); agent != nullptr) {
    environment.launcher_hosts_store = std::string(agent) == "True";
  }
  if (const char* restarts = lookup("TORCHELASTIC_RESTART_COUNT"); restarts != nullptr && *restarts != '\0') {
    environment.restart_count = integer_variable("TORCHELASTIC_RESTART_COUNT", restarts, 0, 1 << 30);
  }
  return environment;
}

int threads_per_local_process(const LaunchEnvironment& environment) {
  const auto cores = static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  return static_cast<int>(std::max<int64_t>(1, cores / std::max<int64_t>(1, environment.local_world_size)));
}

}  // namespace guidiff
