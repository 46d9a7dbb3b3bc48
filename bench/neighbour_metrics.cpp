// Time and peak memory of the nearest-neighbour metrics (improved precision/recall, k = 3, and
// density/coverage, k = 5) at the sizes papers report: N real and N fake feature vectors of
// dimension D (2048 for Inception's pool3), as `guidiff eval` computes them.
//
//   neighbour_metrics --count 50000 --dim 2048 --threads 2 [--seed 0] [--separate 1]
//
// The features are Gaussian (real ~ N(0, I), fake ~ N(0.05, I)): the metrics' cost does not
// depend on the values, only on N and D. With the heap tuning guidiff starts with, it times
// guidiff::neighbour_metrics, both metrics from shared distance passes as `guidiff eval`
// computes them; --separate 1 also times precision_recall and density_coverage called one
// after the other (five passes instead of three). Prints one JSON line with the seconds, the peak resident memory of the process
// (after making the features, and at the end), and the metrics' values.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <stdexcept>

#include "guidiff/core/allocator.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/eval/metrics.hpp"
#include "bench_flags.hpp"

int main(int argc, char** argv) {
  guidiff::configure_allocator();  // the heap tuning `guidiff eval` starts with
  const int64_t count = bench_flags::value(argc, argv, "--count", 10000);
  const int64_t dim = bench_flags::value(argc, argv, "--dim", 2048);
  const int64_t seed = bench_flags::value(argc, argv, "--seed", 0);
  const int threads = guidiff::configure_threads(static_cast<int>(bench_flags::value(argc, argv, "--threads", 0)));
  try {
    torch::manual_seed(static_cast<uint64_t>(seed));
    // float32, as the feature networks return them; the metrics convert to float64 themselves.
    const torch::Tensor real = torch::randn({count, dim});
    const torch::Tensor fake = torch::randn({count, dim}) + 0.05;
    const int64_t features_bytes = guidiff::peak_resident_bytes();
    using clock = std::chrono::steady_clock;
    const auto seconds_since = [](clock::time_point start) {
      return std::chrono::duration<double>(clock::now() - start).count();
    };
    auto start = clock::now();
    const guidiff::NeighbourMetrics shared = guidiff::neighbour_metrics(real, fake);
    const double shared_seconds = seconds_since(start);
    double precision_recall_seconds = -1, density_coverage_seconds = -1;  // -1: not timed
    if (bench_flags::value(argc, argv, "--separate", 0) != 0) {
      start = clock::now();
      const guidiff::PrecisionRecall alone = guidiff::precision_recall(real, fake);
      precision_recall_seconds = seconds_since(start);
      start = clock::now();
      const guidiff::DensityCoverage dc_alone = guidiff::density_coverage(real, fake);
      density_coverage_seconds = seconds_since(start);
      if (alone.precision != shared.precision_recall.precision || alone.recall != shared.precision_recall.recall ||
          dc_alone.density != shared.density_coverage.density || dc_alone.coverage != shared.density_coverage.coverage) {
        throw std::runtime_error("the shared passes gave other values than the separate metrics");
      }
    }
    std::printf(
        "{\"count\": %lld, \"dim\": %lld, \"threads\": %d, \"shared_passes_seconds\": %.2f, "
        "\"precision_recall_seconds\": %.2f, \"density_coverage_seconds\": %.2f, \"peak_rss_mib_features\": %.1f, "
        "\"peak_rss_mib\": %.1f, \"precision\": %.4f, \"recall\": %.4f, \"density\": %.4f, \"coverage\": %.4f}\n",
        static_cast<long long>(count), static_cast<long long>(dim), threads, shared_seconds, precision_recall_seconds,
        density_coverage_seconds, static_cast<double>(features_bytes) / (1 << 20),
        static_cast<double>(guidiff::peak_resident_bytes()) / (1 << 20), shared.precision_recall.precision,
        shared.precision_recall.recall, shared.density_coverage.density, shared.density_coverage.coverage);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "neighbour_metrics: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
