// Images/s of guidiff's FID Inception-v3 feature extraction (preprocessing + network, as
// `guidiff eval --features inception` runs it), for bench/inception_speed.py, which times the
// same network in PyTorch with the same threads and inputs.
//
//   inception_speed --side 28 --channels 1 --images 10000 --batch 100 --threads 4 [--bf16]
//                   [--weights pt_inception-2015-12-05-6726825d.pth]
//
// Without --weights the network keeps libtorch's default initialisation: the speed is the
// same. Prints one JSON line: {"images_per_second": ..., "seconds": ..., "images": ..., ...}.
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "guidiff/core/allocator.hpp"
#include "guidiff/core/autocast.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/eval/fid_inception.hpp"
#include "bench_flags.hpp"

int main(int argc, char** argv) {
  // The heap tuning `guidiff eval` gets from main (src/guidiff/core/allocator.hpp); without it
  // every 299x299 activation is a fresh mmap() and a third of the time goes to page faults.
  guidiff::configure_allocator();
  const int64_t side = bench_flags::value(argc, argv, "--side", 28);
  const int64_t channels = bench_flags::value(argc, argv, "--channels", 1);
  const int64_t images = bench_flags::value(argc, argv, "--images", 1000);
  const int64_t batch = bench_flags::value(argc, argv, "--batch", 100);
  const int threads = guidiff::configure_threads(static_cast<int>(bench_flags::value(argc, argv, "--threads", 0)));
  const bool bf16 = bench_flags::present(argc, argv, "--bf16");
  const std::string weights = bench_flags::text(argc, argv, "--weights");
  try {
    guidiff::FidInception network = weights.empty() ? guidiff::FidInception() : guidiff::load_fid_inception(weights);
    network->eval();
    torch::NoGradGuard no_grad;
    // The same pixels as bench/inception_speed.py: uint8 (index * 7919 mod 256) in NCHW order, as
    // guidiff reads them: x / 127.5 - 1.
    const torch::Tensor pixels =
        (torch::arange(batch * channels * side * side, torch::kLong) * 7919 % 256).reshape({batch, channels, side, side});
    const torch::Tensor input = pixels.to(torch::kFloat32) / 127.5 - 1;
    {  // warm-up: one-time allocations and kernel choices
      guidiff::AutocastScope autocast(bf16, torch::kCPU);
      network->forward(guidiff::fid_inception_input(input.slice(0, 0, std::min<int64_t>(batch, 2))));
    }
    double checksum = 0;
    const auto start = std::chrono::steady_clock::now();
    for (int64_t done = 0; done < images; done += batch) {
      guidiff::AutocastScope autocast(bf16, torch::kCPU);
      const int64_t count = std::min(batch, images - done);
      const guidiff::FidInceptionOutputs outputs = network->forward(guidiff::fid_inception_input(input.slice(0, 0, count)));
      checksum += outputs.pool3.to(torch::kFloat64).sum().item<double>();
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf(
        "{\"images_per_second\": %.3f, \"seconds\": %.3f, \"images\": %lld, \"batch\": %lld, \"side\": %lld, "
        "\"channels\": %lld, \"threads\": %d, \"bf16\": %s, \"pool3_sum\": %.6g, \"peak_mib\": %.0f}\n",
        static_cast<double>(images) / seconds, seconds, static_cast<long long>(images), static_cast<long long>(batch),
        static_cast<long long>(side), static_cast<long long>(channels), threads, bf16 ? "true" : "false", checksum,
        static_cast<double>(guidiff::peak_resident_bytes()) / (1 << 20));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "inception_speed: error: %s\n", error.what());
    return 1;
  }
  return 0;
}
