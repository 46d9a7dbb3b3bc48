// `guidiff ... --nproc N`: runs N copies of this very command on this machine as the ranks of
// one data-parallel run, the way `torchrun --standalone --nproc_per_node N` would.
//
// The launcher hosts the rendezvous store (a c10d TCPStore on a free port of 127.0.0.1) and
// starts each worker by fork + exec of /proc/self/exe with the same arguments minus --nproc,
// and torchrun's variables set (launch_environment.hpp; TORCHELASTIC_USE_AGENT_STORE=True, so
// every rank connects to the launcher's store).
//
// Supervision: Ctrl-C reaches the workers directly (same process group), which save and stop
// together; the launcher ignores it and waits. When a worker exits with an error or is
// killed, the launcher writes "rank r <how it ended>" into the store, so the surviving ranks
// name it in their own error, gives them `grace` to exit on their own, then stops the rest
// (SIGTERM, then SIGKILL).
#pragma once
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace guidiff {

// The rendezvous store of ranks on this machine: a c10d TCPStore on a port of 127.0.0.1
// that the system picks (so concurrent runs never collide), which the ranks join as
// clients (LaunchEnvironment::launcher_hosts_store). Lives as long as this object.
class LocalRendezvousStore {
 public:
  LocalRendezvousStore();  // throws DistributedError when no port can be opened
  ~LocalRendezvousStore();
  LocalRendezvousStore(const LocalRendezvousStore&) = delete;
  LocalRendezvousStore& operator=(const LocalRendezvousStore&) = delete;
  int port() const;
  // Records why rank `rank` stopped, unless it recorded a reason itself (see
  // Communicator::announce_failure). Never throws.
  void record_failure(int64_t rank, const std::string& reason) noexcept;

 private:
  struct Server;
  std::unique_ptr<Server> server_;
};

struct LocalLaunchOptions {
  int nproc = 1;
  // How long survivors get to exit after a worker failed before they are stopped: the
  // workers' own timeout plus a margin.
  std::chrono::milliseconds grace = std::chrono::minutes(10) + std::chrono::seconds(30);
};

// The arguments without "--nproc N" / "--nproc=N" (argv[0] kept).
std::vector<std::string> arguments_without_nproc(const std::vector<std::string>& arguments);

// Runs the workers to the end. Returns 0 when every worker exited with 0; otherwise the exit
// status of the first worker that failed (128 + signal for one that was killed), after
// printing one line naming it. Throws DistributedError when it cannot start (already inside
// a distributed launch, nproc < 1, no free port).
int launch_local_workers(const std::vector<std::string>& arguments, const LocalLaunchOptions& options);

}  // namespace guidiff
