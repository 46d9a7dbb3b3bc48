// Splitting rows across processes (see shard.hpp).
#include "guidiff/distributed/shard.hpp"

#include <algorithm>
#include <string>

#include "guidiff/core/errors.hpp"

namespace guidiff {

Shard batch_aligned_shard(int64_t rows, int64_t batch, int64_t index, int64_t count) {
  if (rows < 0 || batch < 1 || count < 1 || index < 0 || index >= count) {
    throw InputError("batch_aligned_shard: needs rows >= 0, batch >= 1 and 0 <= index < count, got rows " +
                     std::to_string(rows) + ", batch " + std::to_string(batch) + ", index " + std::to_string(index) +
                     ", count " + std::to_string(count));
  }
  const int64_t batches = (rows + batch - 1) / batch;
  const int64_t base = batches / count, longer = batches % count;
  // Shards before `index`: min(index, longer) of them hold base + 1 batches, the rest base.
  const int64_t first_batch = index * base + std::min(index, longer);
  const int64_t batch_count = base + (index < longer ? 1 : 0);
  return {std::min(rows, first_batch * batch), std::min(rows, (first_batch + batch_count) * batch)};
}

}  // namespace guidiff
