#include "guidiff/core/threads.hpp"

#include <ATen/Config.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <thread>

#include "guidiff/core/errors.hpp"

namespace guidiff {

int configure_threads(int requested) {
  int threads = requested;
  if (threads <= 0) {
    if (const char* env = std::getenv("GUIDIFF_THREADS"); env != nullptr && *env != '\0') {
      char* end = nullptr;
      const long value = std::strtol(env, &end, 10);
      if (*end != '\0' || value <= 0 || value > kMaxThreads) {
        throw InputError("GUIDIFF_THREADS must be a whole number from 1 to " +
                         std::to_string(kMaxThreads) + ", got '" + env + "'");
      }
      threads = static_cast<int>(value);
    }
  }
  if (threads <= 0) {
    threads = static_cast<int>(std::thread::hardware_concurrency());
    if (threads <= 0) threads = 1;
  }
  at::set_num_threads(threads);
  return at::get_num_threads();
}

BlasInfo loaded_blas() {
  // libtorch itself links both libblas.so.3 (Debian's alternatives link) and libopenblas;
  // what decides matmul speed is which file libblas.so.3 resolves to.
  std::ifstream maps("/proc/self/maps");
  std::string line;
  BlasInfo info{"unknown", ""};
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    if (path.find("libblas.so") != std::string::npos) {
      info.path = path;
      if (path.find("openblas") != std::string::npos) {
        info.name = "openblas";
      } else if (path.find("/blas/") != std::string::npos) {
        info.name = "reference";
      } else if (path.find("mkl") != std::string::npos) {
        info.name = "mkl";
      }
      return info;
    }
    if (path.find("libmkl") != std::string::npos) info = {"mkl", path};
  }
  // pip's libtorch has MKL linked into libtorch_cpu.so: no BLAS file of its own is mapped.
  if (info.path.empty() && AT_MKL_ENABLED()) info = {"mkl", "(linked into libtorch)"};
  return info;
}

}  // namespace guidiff
