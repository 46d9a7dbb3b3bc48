// Seeding libtorch's global random generators for the device a run computes on.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace guidiff {

// Seeds the global generators a run on `device` draws from: the CPU's (initial weights, and
// dropout on the CPU) and, for a GPU, that GPU's (dropout there). Unlike torch::manual_seed,
// which seeds every GPU a CUDA libtorch sees, it touches no GPU for a CPU run: CUDA's start-up
// costs time, and in a process forked after its parent started CUDA it fails ("CUDA error:
// initialization error"; found with pip's CUDA libtorch, where the bad-flag matrix forks).
void seed_global_generators(uint64_t seed, const torch::Device& device);

}  // namespace guidiff
