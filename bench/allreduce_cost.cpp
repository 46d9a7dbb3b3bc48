// The communication cost of one data-parallel training step: averaging a model's gradients
// over P local processes (Gloo, one intra-op thread each), measured without the backward pass
// it normally hides behind. Prints one JSON line (from rank 0):
//   flat_allreduce_ms       median time of one all-reduce of every gradient in one buffer
//   bucketed_allreduce_ms   median time of GradientReducer's bucketed all-reduce, as the
//                           trainer runs it, after a backward pass that costs next to nothing
//   buckets, parameters, bytes
// Usage: allreduce_cost [--nproc P] [--config recipes/cfg_unet.json] [--repeats 20]
// (bench/distributed_scaling.sh runs it next to the training throughput.)
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/distributed/communicator.hpp"
#include "guidiff/distributed/gradient_reducer.hpp"
#include "guidiff/distributed/launch_environment.hpp"
#include "guidiff/distributed/local_launcher.hpp"
#include "guidiff/models/model_files.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using guidiff::Communicator;

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

template <typename F>
std::vector<double> times_ms(int repeats, Communicator& communicator, F&& run) {
  std::vector<double> times;
  for (int i = 0; i < repeats + 3; ++i) {  // three warm-up rounds
    communicator.barrier("bench barrier");
    const auto start = Clock::now();
    run();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    if (i >= 3) times.push_back(ms);
  }
  return times;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = GUIDIFF_SOURCE_DIR "/recipes/cfg_unet.json";
  int nproc = 2, repeats = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--nproc") nproc = std::atoi(argv[i + 1]);
    else if (flag == "--config") config_path = argv[i + 1];
    else if (flag == "--repeats") repeats = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "allreduce_cost: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  try {
    const guidiff::LaunchEnvironment environment = guidiff::read_launch_environment();
    if (!environment.distributed()) {
      guidiff::LocalLaunchOptions launch;
      launch.nproc = nproc;
      return guidiff::launch_local_workers(std::vector<std::string>(argv, argv + argc), launch);
    }
    torch::set_num_threads(1);
    Communicator communicator(environment, {});
    std::ifstream in(config_path);
    if (!in) throw std::runtime_error("cannot open " + config_path);
    guidiff::Model model = guidiff::build_model(nlohmann::json::parse(in));
    const std::vector<torch::Tensor> parameters = model.module->parameters();
    int64_t elements = 0;
    for (const auto& p : parameters) elements += p.numel();

    std::vector<torch::Tensor> flat{torch::ones({elements})};
    const double flat_ms = median(times_ms(repeats, communicator, [&] { communicator.all_reduce_sum(flat, "flat"); }));

    guidiff::GradientReducer reducer(communicator, parameters);
    const double bucketed_ms = median(times_ms(repeats, communicator, [&] {
      reducer.prepare();
      torch::Tensor loss = torch::zeros({});
      for (const auto& p : parameters) loss = loss + p.sum();  // gradients of ones, at once
      loss.backward();
      reducer.finish();
      for (auto p : parameters) p.mutable_grad().reset();
    }));
    if (communicator.is_main()) {
      const nlohmann::json result = {{"processes", communicator.world_size()},
                                     {"backend", communicator.backend()},
                                     {"parameters", elements},
                                     {"bytes", elements * 4},
                                     {"buckets", reducer.bucket_count()},
                                     {"flat_allreduce_ms", flat_ms},
                                     {"bucketed_allreduce_ms", bucketed_ms}};
      std::printf("%s\n", result.dump().c_str());
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "allreduce_cost: error: %s\n", error.what());
    return 2;
  }
  return 0;
}
