#include "guidiff/core/global_generators.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <mutex>

namespace guidiff {

void seed_global_generators(uint64_t seed, const torch::Device& device) {
  const auto seed_one = [seed](at::Generator generator) {
    std::lock_guard<std::mutex> lock(generator.mutex());  // generators are shared by threads
    generator.set_current_seed(seed);
  };
  seed_one(at::detail::getDefaultCPUGenerator());
  if (device.is_cuda()) seed_one(at::globalContext().defaultGenerator(device));
}

}  // namespace guidiff
