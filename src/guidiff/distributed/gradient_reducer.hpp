// Data-parallel gradients: after each backward pass every parameter's gradient is the mean of
// the ranks' gradients, as with PyTorch's DistributedDataParallel.
//
// How: the parameters are grouped into buckets of about `bucket_bytes`, in reverse order of
// registration (roughly the order backward produces their gradients). A hook on each
// parameter copies its gradient into the bucket's flat buffer as soon as autograd has it;
// when a bucket is complete its all-reduce starts, while backward goes on with the layers
// below. Buckets start strictly in index order, so every rank issues the same collectives in
// the same order. finish() starts what is left, waits, divides by the world size and writes
// the means into the parameters' .grad.
//
// c10d's own Reducer (the engine of DistributedDataParallel) cannot be used from Debian's
// libtorch-dev: its header includes torch/csrc/distributed/autograd/context/context.h, which
// the package does not ship. This class does the part guidiff needs on c10d's collectives.
//
// A parameter that received no gradient on a rank counts as zero there; one that received
// none on any rank keeps no gradient (so AdamW skips it, as in a single process). Each
// bucket carries, after its gradients, one counter per parameter for this purpose.
//
// With a single-process Communicator the reducer installs nothing and does nothing.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "guidiff/distributed/communicator.hpp"

namespace guidiff {

class GradientReducer {
 public:
  static constexpr int64_t kDefaultBucketBytes = int64_t{1} << 20;  // 1 MiB: several buckets even for small models

  // `parameters` must be the same list, in the same order, on every rank, all of one
  // floating dtype and device. Throws InputError otherwise (on this rank's view).
  GradientReducer(Communicator& communicator, std::vector<torch::Tensor> parameters,
                  int64_t bucket_bytes = kDefaultBucketBytes);
  ~GradientReducer();  // removes the hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Call once before each backward pass (the parameters' .grad must be undefined or zero:
  // one backward per step).
  void prepare();
  // Call once after it: the mean gradients land in .grad. Throws DistributedError when a
  // peer fails.
  void finish();

  int64_t bucket_count() const { return static_cast<int64_t>(buckets_.size()); }
  // Seconds finish() spent waiting for all-reduces in the last step: the part of the
  // communication that backward did not hide.
  double last_wait_seconds() const { return last_wait_seconds_; }

 private:
  struct Bucket {
    std::vector<size_t> members;   // indices into parameters_
    std::vector<int64_t> offsets;  // of each member's gradient in `flat`
    int64_t gradient_elements = 0;
    torch::Tensor flat;            // [gradients..., one "has a gradient" counter per member]
    int64_t waiting = 0;           // members whose gradient has not arrived this step
    PendingCollective reduction;
  };

  void on_gradient(size_t parameter, const torch::Tensor& gradient);
  void start_ready_buckets();  // with mutex_ held
  void start(Bucket& bucket);

  Communicator& communicator_;
  std::vector<torch::Tensor> parameters_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;    // parameter -> bucket
  std::vector<size_t> position_of_;  // parameter -> index within its bucket
  std::vector<bool> arrived_;
  std::vector<unsigned> hooks_;
  size_t next_to_start_ = 0;
  bool active_ = false;
  std::mutex mutex_;
  double last_wait_seconds_ = 0.0;
};

}  // namespace guidiff
