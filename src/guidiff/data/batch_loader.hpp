// Mini-batches for training, prepared on a background thread while the model trains.
// Epoch e visits the samples in epoch_order(seed, e, N); a batch is the next batch_size
// entries of that order (never spanning two epochs). Every batch is a pure function of
// (dataset, options, position), so a run resumed from a saved position continues exactly as an
// uninterrupted run would have.
//
// Data-parallel runs: batch_size is the global batch, and process `shard_index` of
// `shard_count` takes its contiguous share of each one (DistributedSampler's disjoint shards
// of one seeded order, cut per batch), so the processes together train on exactly the batches
// a single process would, and a position means the same whatever the process count.
#pragma once
#include <torch/torch.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "guidiff/data/dataset.hpp"
#include "guidiff/data/random_order.hpp"

namespace guidiff {

// One mini-batch. Save next_position in a resume file to continue after this batch.
struct Batch {
  torch::Tensor images;          // float32 [B, ...]: dataset rows (mirrored when random_flip)
  torch::Tensor labels;          // int64 [B]
  torch::Tensor sample_indices;  // int64 [B]: which dataset rows these are
  torch::Tensor slots;           // int64 [B]: their positions in the global batch
  LoaderPosition position;       // where this batch starts
  LoaderPosition next_position;  // where the following batch starts
};

struct BatchLoaderOptions {
  int64_t batch_size = 64;  // the global batch: all shards together
  uint64_t seed = 0;
  int64_t shard_index = 0;  // this process's share of each global batch ...
  int64_t shard_count = 1;  // ... among this many (batch_aligned_shard of its rows, batch 1)
  bool drop_last = true;     // skip an epoch's final batch when it would be short
  bool random_flip = false;  // mirror each image along W on a per-(seed, epoch, sample) coin
  LoaderPosition start;      // the first batch starts here (e.g. a saved next_position)
  int64_t prefetch = 2;      // batches prepared ahead of next()
  std::function<void(Batch&)> transform;  // optional extra step, run on the worker thread
};

// Throws InputError naming the option at fault: batch_size < 1, prefetch < 1, a shard_index
// outside [0, shard_count), a start outside
// epoch >= 0, offset in [0, N], drop_last with batch_size > N (no batch would ever come),
// random_flip on vector data; and the dataset's own validate() errors.
void check_loader_options(const Dataset& dataset, const BatchLoaderOptions& options);

// The canonical form of a position: an epoch with no batch left (offset == N, or with
// drop_last fewer than batch_size samples left) becomes the start of the next epoch.
LoaderPosition normalized_position(LoaderPosition position, int64_t dataset_size,
                                   int64_t batch_size, bool drop_last);

// The batch that starts at `position`, computed synchronously (what the loader's worker does).
Batch batch_at(const Dataset& dataset, const BatchLoaderOptions& options, LoaderPosition position);

class BatchLoader {
 public:
  // Checks the options (check_loader_options) and starts the worker. The dataset's tensors are
  // shared, not copied.
  BatchLoader(Dataset dataset, BatchLoaderOptions options);
  // Stops the worker and waits for it; batches not yet taken are dropped.
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // The next batch, waiting for the worker if needed. The stream is endless (epochs follow
  // each other). An exception thrown while preparing a batch is rethrown here, after the
  // batches prepared before it, and again on every later call.
  Batch next();

  const Dataset& dataset() const { return dataset_; }
  const BatchLoaderOptions& options() const { return options_; }

 private:
  void run_worker();

  const Dataset dataset_;
  const BatchLoaderOptions options_;
  std::mutex mutex_;
  std::condition_variable batch_ready_;
  std::condition_variable space_free_;
  std::deque<Batch> queue_;
  std::exception_ptr worker_error_;
  bool stopping_ = false;
  std::thread worker_;  // last: starts once everything above exists
};

}  // namespace guidiff
