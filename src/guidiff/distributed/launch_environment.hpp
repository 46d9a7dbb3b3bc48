// Where this process stands in a data-parallel run, as the launcher says through the
// environment. The variables are torchrun's, so `torchrun ... guidiff train ...` and
// `guidiff train --nproc N ...` (local_launcher.hpp) start the same kind of worker:
//   RANK, WORLD_SIZE               this process's rank in [0, WORLD_SIZE) and the process count
//   LOCAL_RANK, LOCAL_WORLD_SIZE   the same within this machine (LOCAL_RANK picks the GPU)
//   MASTER_ADDR, MASTER_PORT       the rendezvous store (c10d TCPStore)
//   TORCHELASTIC_USE_AGENT_STORE   "True": the launcher hosts the store and every rank connects
//                                  to it as a client; otherwise rank 0 hosts it
//   TORCHELASTIC_RESTART_COUNT     the launcher's restart attempt (keeps the keys of attempts apart)
#pragma once
#include <cstdint>
#include <functional>
#include <string>

namespace guidiff {

struct LaunchEnvironment {
  int64_t rank = 0;
  int64_t world_size = 1;
  int64_t local_rank = 0;
  int64_t local_world_size = 1;
  std::string master_addr;
  int64_t master_port = 0;
  bool launcher_hosts_store = false;
  int64_t restart_count = 0;
  bool distributed() const { return world_size > 1; }
};

// Reads the variables above through `lookup` (getenv by default; nullptr = unset). Without
// WORLD_SIZE, or with WORLD_SIZE=1, the process runs alone and nothing else is read. Throws
// DistributedError naming the variable when one is malformed, out of range, or missing
// although WORLD_SIZE > 1 needs it (RANK, MASTER_ADDR, MASTER_PORT).
LaunchEnvironment read_launch_environment(const std::function<const char*(const char*)>& lookup = {});

// The intra-op threads a process should take when nothing says otherwise: its share of the
// machine's cores, max(1, cores / local_world_size).
int threads_per_local_process(const LaunchEnvironment& environment);

}  // namespace guidiff
