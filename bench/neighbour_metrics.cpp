// Time and peak memory of the nearest-neighbour metrics (improved precision/recall, k = 3, and
// density/coverage, k = 5) at the sizes papers report: N real and N fake feature vectors of
// dimension D (2048 for Inception's pool3), as `guidiff eval` computes them.
//
//   neighbour_metrics --count 50000 --dim 2048 --threads 2 [--seed 0]
//
// The features are Gaussian (real ~ N(0, I), fake ~ N(0.05, I)): the metrics' cost does not
// depend on the values, only on N and D. Prints one JSON line with the seconds of each metric,
// the peak resident memory of the process (after making the features, and at the end), and the
// metrics' values.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>

#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/eval/metrics.hpp"
#include "bench_flags.hpp"

int main(int argc, char** argv) {
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
    const auto start = clock::now();
    const guidiff::PrecisionRecall precision_recall = guidiff::precision_recall(real, fake);
    const auto middle = clock::now();
    const guidiff::DensityCoverage density_coverage = guidiff::density_coverage(real, fake);
    const auto end = clock::now();
    std::printf(
        "{\"count\": %lld, \"dim\": %lld, \"threads\": %d, \"precision_recall_seconds\": %.2f, "
        "\"density_coverage_seconds\": %.2f, \"peak_rss_mib_features\": %.1f, \"peak_rss_mib\": %.1f, "
        "\"precision\": %.4f, \"recall\": %.4f, \"density\": %.4f, \"coverage\": %.4f}\n",
        static_cast<long long>(count), static_cast<long long>(dim), threads,
        std::chrono::duration<double>(middle - start).count(), std::chrono::duration<double>(end - middle).count(),
        static_cast<double>(features_bytes) / (1 << 20), static_cast<double>(guidiff::peak_resident_bytes()) / (1 << 20),
        precision_recall.precision, precision_recall.recall, density_coverage.density, density_coverage.coverage);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "neighbour_metrics: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
