#include "guidiff/data/batch_loader.hpp"

#include <sstream>
#include <utility>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/transforms.hpp"
#include "guidiff/distributed/shard.hpp"

namespace guidiff {
namespace {

// The batch at a normalised position, given that epoch's order.
Batch assemble_batch(const Dataset& dataset, const BatchLoaderOptions& options,
                     LoaderPosition position, const torch::Tensor& order) {
  const int64_t n = dataset.size();
  Batch batch;
  batch.position = position;
  const int64_t count = std::min(options.batch_size, n - position.offset);
  // This process's rows of the global batch: an even contiguous split.
  const Shard share = batch_aligned_shard(count, 1, options.shard_index, options.shard_count);
  batch.slots = torch::arange(share.begin, share.end, torch::kInt64);
  batch.sample_indices = order.narrow(0, position.offset + share.begin, share.size()).clone();
  batch.images = dataset.images.index_select(0, batch.sample_indices);
  batch.labels = dataset.labels.index_select(0, batch.sample_indices);
  if (options.random_flip) {
    batch.images =
        random_horizontal_flip(batch.images, options.seed, position.epoch, batch.sample_indices);
  }
  batch.next_position = normalized_position({position.epoch, position.offset + count}, n,
                                            options.batch_size, options.drop_last);
  return batch;
}

}  // namespace

void check_loader_options(const Dataset& dataset, const BatchLoaderOptions& options) {
  dataset.validate();
  const int64_t n = dataset.size();
  if (options.batch_size < 1) {
    throw InputError("batch size must be >= 1, got " + std::to_string(options.batch_size));
  }
  if (options.prefetch < 1)
    throw InputError("prefetch must be >= 1, got " + std::to_string(options.prefetch));
  if (options.shard_count < 1 || options.shard_index < 0 || options.shard_index >= options.shard_count) {
    throw InputError("shard " + std::to_string(options.shard_index) + " of " + std::to_string(options.shard_count) +
                     " does not exist");
  }
  if (options.drop_last && options.batch_size > n) {
    throw InputError("batch size " + std::to_string(options.batch_size) + " exceeds the " +
                     std::to_string(n) + " samples of dataset '" + dataset.name +
                     "' and drop_last is set: no batch would ever come");
  }
  if (options.start.epoch < 0 || options.start.offset < 0 || options.start.offset > n) {
    std::ostringstream message;
    message << "start position (epoch " << options.start.epoch << ", offset "
            << options.start.offset << ") must have epoch >= 0 and offset in [0, " << n << "]";
    throw InputError(message.str());
  }
  if (options.random_flip && !dataset.holds_images()) {
    throw InputError("random flip needs images [N, C, H, W]; dataset '" + dataset.name +
                     "' holds vectors");
  }
}

LoaderPosition normalized_position(LoaderPosition position, int64_t dataset_size,
                                   int64_t batch_size, bool drop_last) {
  const int64_t left = dataset_size - position.offset;
  if (left <= 0 || (drop_last && left < batch_size)) return {position.epoch + 1, 0};
  return position;
}

Batch batch_at(const Dataset& dataset, const BatchLoaderOptions& options, LoaderPosition position) {
  check_loader_options(dataset, options);
  position = normalized_position(position, dataset.size(), options.batch_size, options.drop_last);
  Batch batch = assemble_batch(dataset, options, position,
                               epoch_order(options.seed, position.epoch, dataset.size()));
  if (options.transform) options.transform(batch);
  return batch;
}

BatchLoader::BatchLoader(Dataset dataset, BatchLoaderOptions options)
    : dataset_(std::move(dataset)), options_(std::move(options)) {
  check_loader_options(dataset_, options_);
  worker_ = std::thread([this] { run_worker(); });
}

BatchLoader::~BatchLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  space_free_.notify_all();
  worker_.join();
}

void BatchLoader::run_worker() {
  try {
    const int64_t n = dataset_.size();
    LoaderPosition position =
        normalized_position(options_.start, n, options_.batch_size, options_.drop_last);
    torch::Tensor order;
    int64_t order_epoch = -1;
    while (true) {
      if (order_epoch != position.epoch) {  // one shuffle per epoch, not per batch
        order = epoch_order(options_.seed, position.epoch, n);
        order_epoch = position.epoch;
      }
      Batch batch = assemble_batch(dataset_, options_, position, order);
      position = batch.next_position;
      if (options_.transform) options_.transform(batch);
      std::unique_lock<std::mutex> lock(mutex_);
      space_free_.wait(lock, [this] {
        return stopping_ || static_cast<int64_t>(queue_.size()) < options_.prefetch;
      });
      if (stopping_) return;
      queue_.push_back(std::move(batch));
      batch_ready_.notify_one();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mutex_);
    worker_error_ = std::current_exception();
    batch_ready_.notify_all();
  }
}

Batch BatchLoader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  batch_ready_.wait(lock, [this] { return !queue_.empty() || worker_error_ != nullptr; });
  if (queue_.empty()) std::rethrow_exception(worker_error_);
  Batch batch = std::move(queue_.front());
  queue_.pop_front();
  space_free_.notify_one();
  return batch;
}

}  // namespace guidiff
