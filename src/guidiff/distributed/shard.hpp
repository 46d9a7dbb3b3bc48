// How work is split across the processes of a data-parallel run: contiguous ranges of rows,
// cut at batch boundaries so that every batch a process runs is exactly a batch that one
// process alone would run (same rows, same size), whatever the number of processes.
#pragma once
#include <cstdint>

namespace guidiff {

// Rows [begin, end) of a larger range.
struct Shard {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const Shard& other) const { return begin == other.begin && end == other.end; }
};

// Shard `index` of `count` (0 <= index < count) of `rows` rows split into whole batches of
// `batch` rows (the last batch may be short): the ceil(rows / batch) batches are dealt out
// in contiguous runs whose lengths differ by at most one, earlier shards taking the longer
// runs. Shards are disjoint, in order, and cover [0, rows); a shard may be empty when there
// are fewer batches than shards. Throws InputError for rows < 0, batch < 1, count < 1 or an
// index outside [0, count).
Shard batch_aligned_shard(int64_t rows, int64_t batch, int64_t index, int64_t count);

}  // namespace guidiff
