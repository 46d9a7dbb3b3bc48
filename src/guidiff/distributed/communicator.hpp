// The processes of a data-parallel run and the few collectives guidiff needs from them,
// on PyTorch's c10d: a TCPStore for the rendezvous, ProcessGroupGloo for CPU tensors and
// ProcessGroupNCCL for CUDA tensors (CUDA builds). Training, sampling and evaluation call
// this class and nothing else of c10d.
//
// A default-constructed Communicator is a single process (rank 0 of 1): it opens no socket,
// starts no thread, and every collective returns at once with its input as the result, so
// code written for N processes costs nothing when run alone.
//
// Failures: every collective is bounded by the timeout. When one fails (a peer's connection
// closed, or the timeout passed) the survivors find out which rank is at fault from the
// store -- a rank that announced an error (announce_failure), a rank whose heartbeat stopped
// (its process is gone), or a rank that fell behind in the sequence of collectives (alive
// but stuck) -- and throw DistributedError naming it.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "guidiff/distributed/launch_environment.hpp"

namespace guidiff {

struct CommunicatorOptions {
  // How long a rank waits for its peers: to arrive at the rendezvous, and inside any one
  // collective. Ten minutes by default: longer than any pause between collectives (rank 0
  // writing a checkpoint), far shorter than PyTorch's 30.
  std::chrono::milliseconds timeout = std::chrono::minutes(10);
  // The device the collectives work on: CPU -> Gloo; CUDA -> NCCL when this build has it.
  torch::Device device = torch::kCPU;
};

// A collective started by all_reduce_sum_async, not yet waited for.
class PendingCollective {
 public:
  PendingCollective() = default;
  explicit PendingCollective(std::function<void()> wait) : wait_(std::move(wait)) {}
  // Blocks until it is done; throws DistributedError as the synchronous collectives do.
  void wait();

 private:
  std::function<void()> wait_;
};

// The store's layout, which the local launcher shares: every key of restart attempt n lives
// under rendezvous_prefix(n); failure_key(r) holds the one-line reason rank r stopped.
std::string rendezvous_prefix(int64_t restart_count);
std::string failure_key(int64_t rank);

class Communicator {
 public:
  // One process alone.
  Communicator();
  // Joins the run described by `environment` (a single process when it is not distributed):
  // connects to the store (rank 0 hosts it unless the launcher does), waits for all ranks to
  // arrive, and opens the process group. Throws DistributedError naming the ranks that did
  // not arrive within the timeout, or the store that could not be reached.
  Communicator(const LaunchEnvironment& environment, const CommunicatorOptions& options);
  // Waits for the other ranks to finish (a last barrier) when the run ended normally, then
  // closes the connections. Never throws.
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  int64_t local_rank() const { return local_rank_; }
  bool is_main() const { return rank_ == 0; }
  bool distributed() const { return world_size_ > 1; }
  // "none" (one process), "gloo" or "nccl".
  std::string backend() const;
  // Where the backend wants its tensors: the CPU for Gloo (and alone), the GPU for NCCL.
  torch::Device device() const;
  // "rank 1 of 4", for messages; "" for a single process.
  std::string describe() const;

  // Every rank's tensors summed, in place, on every rank (same shapes and dtypes everywhere).
  // `what` names the operation in error messages ("the gradient all-reduce").
  void all_reduce_sum(std::vector<torch::Tensor>& tensors, const std::string& what);
  // The same for one contiguous tensor on device(), started now and finished by wait(); the
  // tensor must stay alive and untouched until then. InputError for another tensor.
  PendingCollective all_reduce_sum_async(torch::Tensor& tensor, const std::string& what);
  // rows [n_r, ...] of every rank r (n_r may differ, the other sizes and the dtype may not)
  // concatenated in rank order, on every rank. An undefined tensor stands for no rows of the
  // others' shape (for a rank that had nothing to compute); all undefined gives undefined.
  // Throws InputError when the ranks' shapes or dtypes disagree.
  torch::Tensor all_gather_rows(const torch::Tensor& rows, const std::string& what);
  // Rank 0's tensors copied, in place, into every rank's (same shapes and dtypes).
  void broadcast_from_main(std::vector<torch::Tensor>& tensors, const std::string& what);
  // True on every rank when `flag` is true on at least one.
  bool any(bool flag, const std::string& what);
  void barrier(const std::string& what);

  // Tells the other ranks that this one is about to exit with `message`, so that their error
  // names this rank and its reason. Best effort; never throws.
  void announce_failure(const std::string& message) noexcept;

 private:
  struct Connection;
  int64_t rank_ = 0;
  int64_t world_size_ = 1;
  int64_t local_rank_ = 0;
  std::unique_ptr<Connection> connection_;  // null for a single process
};

// Whether this build can open a process group of the backend "gloo" (CPU tensors; needs
// Gloo's headers at build time, which pip's libtorch does not ship) or "nccl" (CUDA builds).
bool backend_built(const std::string& backend);

// A process-wide single-process Communicator, the default of the functions that take one.
Communicator& single_process_communicator();

}  // namespace guidiff
