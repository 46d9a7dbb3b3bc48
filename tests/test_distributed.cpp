// Data-parallel runs: the shard arithmetic and torchrun's environment; the collectives, the
// bucketed gradient all-reduce, sharded features and sharded sampling with ranks as threads
// of this process; and end to end with `guidiff` processes on Gloo: 2 ranks train like one
// process with twice the batch, sample and evaluate exactly like one process, resume with
// another process count, and stop with a one-line error naming a killed, failing or missing
// rank.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <torch/version.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/distributed/communicator.hpp"
#include "guidiff/distributed/gradient_reducer.hpp"
#include "guidiff/distributed/launch_environment.hpp"
#include "guidiff/distributed/local_launcher.hpp"
#include "guidiff/distributed/shard.hpp"
#include "guidiff/eval/evaluator.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/training/checkpoint.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using Clock = std::chrono::steady_clock;

namespace {

// The unit roundoff of float32 (Higham, Accuracy and Stability of Numerical Algorithms, 2.1).
constexpr double kFloatUnitRoundoff = 5.9604644775390625e-08;  // 2^-24

// Several ranks need a process group, Gloo's on the CPU. A build against pip's libtorch,
// which ships no Gloo headers, has none: it runs alone (and on GPUs over NCCL).
#define SKIP_WITHOUT_GLOO() \
  if (!guidiff::backend_built("gloo")) GTEST_SKIP() << "this guidiff was built without Gloo"

// ---- Ranks as threads -------------------------------------------------------------------

// Runs body(communicator) on `world` ranks, each a thread of this process with a
// Communicator of its own, joined through a store this function hosts.
void on_ranks(int world, const std::function<void(Communicator&)>& body) {
  LocalRendezvousStore store;
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        LaunchEnvironment environment;
        environment.rank = rank;
        environment.world_size = world;
        environment.local_rank = rank;
        environment.local_world_size = world;
        environment.master_addr = "127.0.0.1";
        environment.master_port = store.port();
        environment.launcher_hosts_store = true;
        CommunicatorOptions options;
        options.timeout = std::chrono::seconds(60);
        Communicator communicator(environment, options);
        body(communicator);
      } catch (const std::exception& error) {
        errors[static_cast<size_t>(rank)] = error.what();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int rank = 0; rank < world; ++rank) {
    EXPECT_EQ(errors[static_cast<size_t>(rank)], "") << "rank " << rank;
  }
}

// ---- Processes ---------------------------------------------------------------------------

struct Process {
  pid_t pid = -1;
  std::string stderr_file;
};

// Starts `guidiff args...` with `environment` added to this process's, stderr to a file.
Process start_guidiff(const std::vector<std::string>& args, const std::map<std::string, std::string>& environment,
                      const std::string& stderr_file) {
  std::vector<std::string> argv_strings{GUIDIFF_CLI_PATH};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<std::string> env_strings;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    if (environment.count(text.substr(0, text.find('='))) == 0) env_strings.push_back(text);
  }
  for (const auto& [name, value] : environment) env_strings.push_back(name + "=" + value);
  std::vector<char*> argv, envp;
  for (auto& text : argv_strings) argv.push_back(text.data());
  argv.push_back(nullptr);
  for (auto& text : env_strings) envp.push_back(text.data());
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    const int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  return {pid, stderr_file};
}

struct Ended {
  int exit_code = -1;  // -1: killed by a signal, or still running at the deadline
  double seconds = 0;  // from the call to the end
  bool timed_out = false;
};

// Waits for `process` up to `limit`; kills it if it is still running then.
Ended wait_for(const Process& process, std::chrono::seconds limit) {
  const auto start = Clock::now();
  Ended ended;
  while (true) {
    int status = 0;
    const pid_t done = ::waitpid(process.pid, &status, WNOHANG);
    if (done == process.pid) {
      ended.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      break;
    }
    if (Clock::now() - start > limit) {
      ::kill(process.pid, SIGKILL);
      ::waitpid(process.pid, &status, 0);
      ended.timed_out = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ended.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return ended;
}

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> words;
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

std::map<std::string, std::string> rank_environment(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},      {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank)}, {"LOCAL_WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},         {"MASTER_PORT", std::to_string(port)},
          {"TORCHELASTIC_USE_AGENT_STORE", "True"}, {"GUIDIFF_THREADS", "1"}};
}

class DistributedCliTest : public guidiff::testing::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    SKIP_WITHOUT_GLOO();
  }
  // Runs `guidiff args` to the end (2 minutes at most); returns the exit code and stderr.
  std::pair<int, std::string> run(const std::string& args) const {
    const std::string err = path("stderr-" + std::to_string(runs_++) + ".txt");
    const Ended ended = wait_for(start_guidiff(split_words(args), {{"GUIDIFF_THREADS", "1"}}, err), std::chrono::seconds(120));
    return {ended.exit_code, read_file_bytes(err)};
  }
  void run_ok(const std::string& args) const {
    SCOPED_TRACE("guidiff " + args);
    const auto [code, err] = run(args);
    ASSERT_EQ(code, 0) << err;
  }
  mutable int runs_ = 0;
};

NamedTensors weights_of(const std::string& prefix) {
  return load_safetensors(prefix + ".safetensors").tensors;
}

std::vector<double> logged_losses(const std::string& log) {
  std::vector<double> losses;
  std::istringstream lines(read_file_bytes(log));
  for (std::string line; std::getline(lines, line);) losses.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return losses;
}

}  // namespace

// ---- Shards --------------------------------------------------------------------------------

TEST(BatchAlignedShard, CoversTheRowsInOrderInWholeBalancedBatches) {
  for (const int64_t rows : {0, 1, 7, 64, 70, 1000}) {
    for (const int64_t batch : {1, 3, 64}) {
      for (const int64_t count : {1, 2, 3, 5}) {
        SCOPED_TRACE(std::to_string(rows) + " rows, batch " + std::to_string(batch) + ", " + std::to_string(count) + " shards");
        int64_t next = 0, fewest = rows, most = 0;
        for (int64_t index = 0; index < count; ++index) {
          const Shard shard = batch_aligned_shard(rows, batch, index, count);
          EXPECT_EQ(shard.begin, next);
          EXPECT_TRUE(shard.begin % batch == 0 || shard.begin == rows);
          EXPECT_GE(shard.size(), 0);
          const int64_t batches = (shard.size() + batch - 1) / batch;
          fewest = std::min(fewest, batches);
          most = std::max(most, batches);
          next = shard.end;
        }
        EXPECT_EQ(next, rows);
        EXPECT_LE(most - fewest, 1);
      }
    }
  }
  EXPECT_EQ(batch_aligned_shard(10, 4, 0, 2), (Shard{0, 8}));  // 3 batches: 2 + 1
  EXPECT_EQ(batch_aligned_shard(10, 4, 1, 2), (Shard{8, 10}));
  EXPECT_THROW(batch_aligned_shard(10, 0, 0, 2), InputError);
  EXPECT_THROW(batch_aligned_shard(10, 4, 2, 2), InputError);
  EXPECT_THROW(batch_aligned_shard(-1, 4, 0, 1), InputError);
}

// ---- torchrun's environment -------------------------------------------------------------------

TEST(LaunchEnvironment, ReadsTorchrunsVariables) {
  const std::map<std::string, std::string> variables = {
      {"RANK", "5"},         {"WORLD_SIZE", "8"},    {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"},
      {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29500"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
      {"TORCHELASTIC_RESTART_COUNT", "2"}};
  const auto lookup = [&](const char* name) -> const char* {
    const auto found = variables.find(name);
    return found == variables.end() ? nullptr : found->second.c_str();
  };
  const LaunchEnvironment environment = read_launch_environment(lookup);
  EXPECT_TRUE(environment.distributed());
  EXPECT_EQ(environment.rank, 5);
  EXPECT_EQ(environment.world_size, 8);
  EXPECT_EQ(environment.local_rank, 1);
  EXPECT_EQ(environment.local_world_size, 4);
  EXPECT_EQ(environment.master_addr, "node0");
  EXPECT_EQ(environment.master_port, 29500);
  EXPECT_TRUE(environment.launcher_hosts_store);
  EXPECT_EQ(environment.restart_count, 2);
}

TEST(LaunchEnvironment, WithoutWorldSizeOrWithOneProcessRunsAlone) {
  EXPECT_FALSE(read_launch_environment([](const char*) -> const char* { return nullptr; }).distributed());
  const auto one = [](const char* name) -> const char* { return std::string(name) == "WORLD_SIZE" ? "1" : nullptr; };
  EXPECT_FALSE(read_launch_environment(one).distributed());
}

TEST(LaunchEnvironment, NamesTheVariableAtFault) {
  const auto with = [](std::map<std::string, std::string> variables) {
    return [variables](const char* name) -> const char* {
      const auto found = variables.find(name);
      return found == variables.end() ? nullptr : found->second.c_str();
    };
  };
  const std::map<std::string, std::string> good = {
      {"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", "1234"}};
  EXPECT_EQ(read_launch_environment(with(good)).local_rank, 1);  // LOCAL_RANK defaults to RANK on one node
  for (const auto& [name, value, fragment] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"RANK", "", "RANK is not set"},
           {"RANK", "2", "RANK='2'"},
           {"WORLD_SIZE", "two", "WORLD_SIZE='two'"},
           {"MASTER_PORT", "70000", "MASTER_PORT='70000'"},
           {"MASTER_ADDR", "", "MASTER_ADDR is not set"}}) {
    auto variables = good;
    variables[name] = value;
    guidiff::testing::expect_error<DistributedError>([&] { read_launch_environment(with(variables)); }, {fragment});
  }
}

TEST(LocalLauncher, PassesEveryArgumentButNproc) {
  EXPECT_EQ(arguments_without_nproc({"guidiff", "train", "--nproc", "4", "diffusion", "--nproc=2", "--steps", "3"}),
            (std::vector<std::string>{"guidiff", "train", "diffusion", "--steps", "3"}));
}

// ---- Collectives ---------------------------------------------------------------------------

TEST(Communicator, AloneEveryCollectiveReturnsItsInput) {
  Communicator alone;
  EXPECT_FALSE(alone.distributed());
  EXPECT_EQ(alone.backend(), "none");
  std::vector<torch::Tensor> tensors{torch::tensor({1.0, 2.0})};
  alone.all_reduce_sum(tensors, "test");
  EXPECT_TRUE(torch::equal(tensors[0], torch::tensor({1.0, 2.0})));
  const torch::Tensor rows = torch::arange(6).reshape({3, 2});
  EXPECT_TRUE(rows.is_same(alone.all_gather_rows(rows, "test")));
  EXPECT_TRUE(alone.any(true, "test"));
  EXPECT_FALSE(alone.any(false, "test"));
}

TEST(Communicator, KnowsWhichBackendsItWasBuiltWith) {
#if TORCH_VERSION_MAJOR < 2
  // Debian's libtorch with libgloo-dev (scripts/setup.sh installs it): the multi-process tests
  // below must run here, not be skipped.
  EXPECT_TRUE(backend_built("gloo"));
  EXPECT_FALSE(backend_built("nccl"));  // a CPU-only libtorch
#endif
  EXPECT_FALSE(backend_built("mpi"));
  EXPECT_FALSE(backend_built(""));
}

TEST(Communicator, SumsGathersUnevenRowsBroadcastsAndAgrees) {
  SKIP_WITHOUT_GLOO();
  on_ranks(3, [](Communicator& communicator) {
    EXPECT_EQ(communicator.backend(), "gloo");
    const int64_t r = communicator.rank();
    std::vector<torch::Tensor> tensors{torch::full({4}, static_cast<double>(r + 1)), torch::tensor({r}, torch::kInt64)};
    communicator.all_reduce_sum(tensors, "test sum");
    EXPECT_TRUE(torch::equal(tensors[0], torch::full({4}, 6.0)));  // 1 + 2 + 3
    EXPECT_EQ(tensors[1].item<int64_t>(), 3);                    // 0 + 1 + 2

    // Rank 0 two rows, rank 1 none (undefined), rank 2 three: five rows in rank order.
    torch::Tensor rows;
    if (r == 0) rows = torch::tensor({{0, 1}, {2, 3}}, torch::kInt64);
    if (r == 2) rows = torch::tensor({{4, 5}, {6, 7}, {8, 9}}, torch::kInt64);
    const torch::Tensor gathered = communicator.all_gather_rows(rows, "test gather");
    EXPECT_TRUE(torch::equal(gathered, torch::arange(10, torch::kInt64).reshape({5, 2})));
    const torch::Tensor flags = communicator.all_gather_rows(torch::full({1}, r == 1, torch::kBool), "test flags");
    EXPECT_TRUE(torch::equal(flags, torch::tensor({false, true, false})));

    std::vector<torch::Tensor> shared{torch::full({2, 2}, static_cast<float>(r))};
    communicator.broadcast_from_main(shared, "test broadcast");
    EXPECT_TRUE(torch::equal(shared[0], torch::zeros({2, 2})));
    EXPECT_TRUE(communicator.any(r == 2, "test any"));
    EXPECT_FALSE(communicator.any(false, "test any"));
    // Shapes that disagree are refused, on every rank alike.
    EXPECT_THROW(communicator.all_gather_rows(torch::zeros({1, r + 1}), "test mismatch"), InputError);
  });
}

// ---- Gradients ---------------------------------------------------------------------------

namespace {

// A small network with one layer only rank 1 uses and one nobody uses.
struct ProbeNetImpl : torch::nn::Module {
  torch::nn::Linear first{nullptr}, second{nullptr}, rank_one_only{nullptr}, unused{nullptr};
  ProbeNetImpl() {
    first = register_module("first", torch::nn::Linear(4, 16));
    second = register_module("second", torch::nn::Linear(16, 3));
    rank_one_only = register_module("rank_one_only", torch::nn::Linear(4, 3));
    unused = register_module("unused", torch::nn::Linear(4, 3));
  }
  torch::Tensor forward(const torch::Tensor& x, bool use_extra) {
    torch::Tensor out = second(torch::tanh(first(x)));
    return use_extra ? out + rank_one_only(x) : out;
  }
};
TORCH_MODULE(ProbeNet);

ProbeNet probe_copy(const ProbeNet& source) {
  ProbeNet copy;
  torch::NoGradGuard no_grad;
  const auto from = source->parameters();
  auto to = copy->parameters();
  for (size_t i = 0; i < to.size(); ++i) to[i].copy_(from[i]);
  return copy;
}

torch::Tensor probe_loss(ProbeNet& net, const torch::Tensor& x, const torch::Tensor& y, bool use_extra) {
  return torch::nn::functional::cross_entropy(net->forward(x, use_extra), y);
}

}  // namespace

TEST(GradientReducer, GivesEveryRankTheMeanGradientOfTheWholeBatch) {
  SKIP_WITHOUT_GLOO();
  torch::manual_seed(7);
  const ProbeNet reference;
  constexpr int64_t kBatch = 8, kWorld = 2, kHidden = 16, kInputs = 4;
  const torch::Tensor x = torch::randn({kBatch, kInputs});
  const torch::Tensor y = torch::randint(0, 3, {kBatch}, torch::kInt64);

  // Samples of the second half (rank 1's) go through the extra layer as well. One process,
  // whole batch: the mean of the per-sample losses, i.e. the mean of the halves' means.
  const int64_t half = kBatch / kWorld;
  const auto batch_loss = [&](ProbeNet& net, int64_t begin, int64_t end) {
    return probe_loss(net, x.slice(0, begin, end), y.slice(0, begin, end), begin >= half);
  };
  ProbeNet whole = probe_copy(reference);
  (0.5 * (batch_loss(whole, 0, half) + batch_loss(whole, half, kBatch))).backward();
  std::vector<torch::Tensor> expected, magnitude;
  for (const auto& p : whole->parameters()) {
    expected.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    magnitude.push_back(torch::zeros_like(p));
  }
  // Per-sample gradient magnitudes, for the error bound.
  for (int64_t i = 0; i < kBatch; ++i) {
    ProbeNet single = probe_copy(reference);
    batch_loss(single, i, i + 1).backward();
    const auto parameters = single->parameters();
    for (size_t k = 0; k < parameters.size(); ++k) {
      if (parameters[k].grad().defined()) magnitude[k] += parameters[k].grad().abs() / kBatch;
    }
  }

  // Error bound (Higham eq. 4.4: |fl(sum x_i) - sum x_i| <= gamma_{n-1} sum |x_i|, gamma_n ~ n u):
  // the two results sum the same B per-sample terms in another order (two halves of B/2, then
  // the all-reduce of 2) -- at most 2B roundings between them -- and each term may itself
  // differ by the roundings of its own forward/backward reductions (kHidden + kInputs terms
  // deep, a few more for tanh, softmax and the means) when the kernels see another batch
  // size. Hence |g_2 - g_1| <= (2B + 2(kHidden + kInputs) + 16) u sum_i |g_i| / B.
  const double factor = (2.0 * kBatch + 2.0 * (kHidden + kInputs) + 16.0) * kFloatUnitRoundoff;

  for (const int64_t bucket_bytes : {int64_t{64}, GradientReducer::kDefaultBucketBytes}) {
    SCOPED_TRACE("bucket bytes " + std::to_string(bucket_bytes));
    on_ranks(kWorld, [&](Communicator& communicator) {
      ProbeNet net = probe_copy(reference);
      const auto parameters = net->parameters();
      GradientReducer reducer(communicator, parameters, bucket_bytes);
      if (bucket_bytes == 64) {
        EXPECT_GT(reducer.bucket_count(), 3);
      }
      const int64_t r = communicator.rank();
      for (int repeat = 0; repeat < 2; ++repeat) {  // the second step reuses the buckets
        reducer.prepare();
        probe_loss(net, x.slice(0, r * half, (r + 1) * half), y.slice(0, r * half, (r + 1) * half), r == 1).backward();
        reducer.finish();
        const auto names = net->named_parameters();
        for (size_t k = 0; k < parameters.size(); ++k) {
          const std::string name = names[k].key();
          const torch::Tensor& got = parameters[k].grad();
          if (name.rfind("unused", 0) == 0) {
            EXPECT_FALSE(got.defined()) << name;  // no rank had a gradient: none, as alone
          } else {  // including rank_one_only: the mean of rank 1's gradient and rank 0's none (zero)
            ASSERT_TRUE(got.defined()) << name;
            const torch::Tensor excess = (got - expected[k]).abs() - factor * magnitude[k];
            EXPECT_LE(excess.max().item<double>(), 0.0) << name << " differs by " << (got - expected[k]).abs().max();
          }
        }
        for (auto& p : net->parameters()) p.mutable_grad().reset();
      }
    });
  }
}

// ---- Sharded sampling and features --------------------------------------------------------

TEST(GenerateAcross, RanksTogetherGiveOneProcesssSamplesBitForBit) {
  SKIP_WITHOUT_GLOO();
  const DiscreteSchedule schedule = make_schedule(BetaScheduleKind::linear, 100);
  const auto model =
      std::make_shared<MixtureDenoiser>(GaussianMixture::demo(), NoiseLevelMap::discrete(schedule), true);
  GenerationConfig config;
  config.sampler = SamplerKind::ddpm;
  config.timesteps = 100;
  config.steps = 10;
  config.sample_shape = {2};
  config.num_samples = 9;  // batches of 4: 4 + 4 + 1, so with 3 ranks each has one
  config.batch_size = 4;
  config.seed = 21;
  config.keep_trajectory = true;
  const torch::Tensor labels = torch::arange(9, torch::kInt64).remainder(4);
  const GenerationResult alone = generate(model, nullptr, config, labels, {});
  for (const int world : {2, 3, 4}) {  // 4 ranks: one has nothing to draw
    on_ranks(world, [&](Communicator& communicator) {
      const GenerationResult together = generate_across(communicator, {model, nullptr, nullptr}, config, labels, {});
      EXPECT_TRUE(torch::equal(together.samples, alone.samples)) << world << " ranks";
      EXPECT_TRUE(torch::equal(together.labels, alone.labels));
      ASSERT_EQ(together.trajectory.size(), alone.trajectory.size());
      for (size_t k = 0; k < alone.trajectory.size(); ++k) {
        EXPECT_TRUE(torch::equal(together.trajectory[k], alone.trajectory[k])) << "step " << k;
      }
    });
  }
}

TEST_F(DistributedCliTest, FeaturesOfAShardedRunAreOneProcesssFeatures) {
  torch::manual_seed(3);
  save_model(build_model({{"kind", "cnn_classifier"}, {"image_size", 8}, {"in_channels", 1}, {"channels", {8, 16}},
                          {"norm_groups", 4}, {"num_classes", 3}}),
             path("evaluator"));
  const torch::Tensor images = torch::rand({10, 1, 8, 8}) * 2 - 1;
  const auto network = load_evaluator_network(path("evaluator"), torch::kCPU);
  const FeatureOutput alone = run_feature_network(*network, images, 3);  // batches 3, 3, 3, 1
  on_ranks(2, [&](Communicator& communicator) {
    const auto own = load_evaluator_network(path("evaluator"), torch::kCPU);
    const FeatureOutput together = run_feature_network(*own, images, 3, communicator);
    EXPECT_TRUE(torch::equal(together.features, alone.features));
    EXPECT_TRUE(torch::equal(together.probabilities, alone.probabilities));
  });
}

// ---- End to end: training ------------------------------------------------------------------

// The tolerance of "2 ranks x B/2 == 1 process x B" after N AdamW steps. The two runs add
// the same per-sample gradients in another order, so each step's gradients differ by a
// relative rho <= (2B + 2 width + 16) u (see GivesEveryRankTheMeanGradientOfTheWholeBatch;
// width 128 for these MLPs, B = 16: rho ~ 2e-5), and AdamW's update m/(sqrt(v) + eps) passes
// that on with a factor of at most about 1 -- except in its first step for an element whose
// exact gradient lies within the rounding error of zero, where g/(|g| + eps) can change sign
// and the element moves up to 2 lr the other way. So the relative L2 distance of the two
// weight changes (w_N - w_0) is at most N rho + 2 lr sqrt(k) / |w_N - w_0| for k such
// elements; we allow k = 4 (the expected number is far below one: the chance that a
// gradient of typical size 1e-3 falls within 1e-8 of zero, times ~20000 weights).
void expect_same_training(const std::string& one_dir, const std::string& two_dir, const std::string& initial_prefix,
                          int64_t steps, double lr) {
  const NamedTensors one = weights_of(one_dir + "/raw"), two = weights_of(two_dir + "/raw");
  const NamedTensors start = weights_of(initial_prefix);
  ASSERT_EQ(one.size(), two.size());
  ASSERT_EQ(one.size(), start.size());
  double change = 0, difference = 0;
  for (size_t k = 0; k < one.size(); ++k) {
    ASSERT_EQ(one[k].first, two[k].first);
    change += (one[k].second - start[k].second).to(torch::kFloat64).pow(2).sum().item<double>();
    difference += (one[k].second - two[k].second).to(torch::kFloat64).pow(2).sum().item<double>();
  }
  change = std::sqrt(change);
  difference = std::sqrt(difference);
  const double rho = (2.0 * 16 + 2.0 * 128 + 16.0) * kFloatUnitRoundoff;
  const double tolerance = steps * rho + 2.0 * lr * std::sqrt(4.0) / change;
  EXPECT_GT(change, 0.0);
  EXPECT_LE(difference / change, tolerance) << "|w1 - w2| = " << difference << ", |w1 - w0| = " << change;
  // The EMA weights (ema_rate 0.5 below: a convex combination of the iterates, with the same
  // coefficients in both runs) differ by no more than the iterates do.
  const NamedTensors ema_one = weights_of(one_dir + "/model"), ema_two = weights_of(two_dir + "/model");
  double ema_difference = 0;
  for (size_t k = 0; k < ema_one.size(); ++k) {
    ema_difference += (ema_one[k].second - ema_two[k].second).to(torch::kFloat64).pow(2).sum().item<double>();
  }
  EXPECT_LE(std::sqrt(ema_difference) / change, tolerance);
  // The logged losses, averaged over the ranks: smooth functions of those weights, so they
  // agree to the same relative order (a factor 10 for the loss's sensitivity to the weights).
  const auto losses_one = logged_losses(one_dir + "/log.jsonl"), losses_two = logged_losses(two_dir + "/log.jsonl");
  ASSERT_EQ(losses_one.size(), static_cast<size_t>(steps / 2));
  ASSERT_EQ(losses_two.size(), losses_one.size());
  for (size_t i = 0; i < losses_one.size(); ++i) {
    EXPECT_NEAR(losses_two[i], losses_one[i], 10.0 * tolerance * std::abs(losses_one[i])) << "log line " << i;
  }
  const std::string log_two = read_file_bytes(two_dir + "/log.jsonl");
  EXPECT_EQ(nlohmann::json::parse(log_two.substr(0, log_two.find('\n'))).at("processes"), 2);
}

// The initial weights of a run: what `guidiff train` builds from the seed (it seeds the
// global generator with --seed before building the model).
void save_initial_weights(const std::string& run_dir, uint64_t seed, const std::string& prefix) {
  const nlohmann::json config = nlohmann::json::parse(read_file_bytes(run_dir + "/raw.json"));
  torch::manual_seed(seed);
  save_model(build_model(config), prefix);
}

TEST_F(DistributedCliTest, TwoRanksTrainLikeOneProcessWithTwiceTheBatch) {
  // Diffusion (eps), the noise-aware classifier, and classifier-free guidance (label dropout,
  // continuous time) on the 2-D mixture, 6 AdamW steps: 16 x 1 process against 8 x 2.
  const std::string common = "--data mixture --mixture-size 200 --steps 6 --lr 1e-3 --ema-rate 0.5 --seed 5 "
                             "--log-every 2 --save-every 0 --timesteps 100 --config ";
  const nlohmann::json mlp = {{"hidden_channels", 128}, {"num_blocks", 1}};
  write_file_atomically(path("mlp.json"), mlp.dump());
  const std::vector<std::pair<std::string, std::string>> tasks = {
      {"eps", "train diffusion"},
      {"classifier", "train classifier"},
      {"cfg", "train diffusion --conditional --p-uncond 0.3 --objective cfg-continuous"}};
  for (const auto& [name, command] : tasks) {
    SCOPED_TRACE(name);
    run_ok(command + " " + common + path("mlp.json") + " --batch-size 16 --out-dir " + path(name + "-one"));
    run_ok(command + " " + common + path("mlp.json") + " --batch-size 8 --nproc 2 --out-dir " + path(name + "-two"));
    save_initial_weights(path(name + "-one"), 5, path(name + "-start"));
    expect_same_training(path(name + "-one"), path(name + "-two"), path(name + "-start"), 6, 1e-3);
  }
}

TEST_F(DistributedCliTest, ResumesWithAnotherProcessCountAndTheSameGlobalBatch) {
  const std::string common = "train diffusion --data mixture --mixture-size 200 --lr 1e-3 --ema-rate 0.5 --seed 9 "
                             "--log-every 2 --save-every 0 --timesteps 100 --config " + path("mlp.json");
  write_file_atomically(path("mlp.json"), nlohmann::json({{"hidden_channels", 128}, {"num_blocks", 1}}).dump());
  run_ok(common + " --steps 8 --batch-size 16 --out-dir " + path("straight"));
  // Four steps on two ranks, then four more on one: the data order and draws continue.
  run_ok(common + " --steps 4 --batch-size 8 --nproc 2 --out-dir " + path("split"));
  const auto [refused, message] = run(common + " --steps 8 --batch-size 8 --resume --out-dir " + path("split"));
  EXPECT_EQ(refused, 2);
  EXPECT_NE(message.find("global batch is 16 (8 x 2 processes) in the checkpoint but 8 (8 x 1 process)"), std::string::npos)
      << message;
  EXPECT_NE(message.find("--batch-size 16"), std::string::npos) << message;
  run_ok(common + " --steps 8 --batch-size 16 --resume --out-dir " + path("split"));
  save_initial_weights(path("straight"), 9, path("start"));
  expect_same_training(path("straight"), path("split"), path("start"), 8, 1e-3);
}

// ---- End to end: sampling and evaluation ----------------------------------------------------

TEST_F(DistributedCliTest, TwoRanksSampleWhatOneProcessSamplesBitForBit) {
  // The 2-D toy with DDPM (fresh noise every step) and its trajectory.
  const std::string toy = "sample --sampler ddpm --steps 20 --num-samples 22 --batch-size 4 --seed 3 --class 0,1,2 ";
  run_ok(toy + "--out " + path("toy1.npy") + " --trajectory " + path("path1.npy"));
  run_ok(toy + "--nproc 2 --out " + path("toy2.npy") + " --trajectory " + path("path2.npy"));
  EXPECT_TRUE(guidiff::testing::same_bytes(read_npy(path("toy1.npy")), read_npy(path("toy2.npy"))));
  EXPECT_TRUE(guidiff::testing::same_bytes(read_npy(path("path1.npy")), read_npy(path("path2.npy"))));
  // A real network: a tiny class-conditional UNet with CFG, 3 ranks, 7 batches of 2.
  torch::manual_seed(4);
  save_model(build_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", {4}},
                          {"norm_groups", 4}, {"num_classes", 3}}),
             path("unet"));
  const std::string unet = "sample --model " + path("unet") + " --steps 4 --num-samples 13 --batch-size 2 --seed 8 "
                           "--class 0,1,2 --cfg-scale 2 ";
  run_ok(unet + "--out " + path("unet1.npy") + " --npz " + path("unet1.npz"));
  run_ok(unet + "--nproc 3 --out " + path("unet3.npy") + " --npz " + path("unet3.npz"));
  EXPECT_TRUE(guidiff::testing::same_bytes(read_npy(path("unet1.npy")), read_npy(path("unet3.npy"))));
  auto one = nlohmann::json::parse(read_file_bytes(path("unet1.json")));
  auto three = nlohmann::json::parse(read_file_bytes(path("unet3.json")));
  one.erase("outputs");
  three.erase("outputs");
  EXPECT_EQ(one, three);
}

TEST_F(DistributedCliTest, TwoRanksEvaluateAndSweepLikeOneProcess) {
  torch::manual_seed(1);
  save_model(build_model({{"kind", "cnn_classifier"}, {"image_size", 8}, {"in_channels", 1}, {"channels", {8, 16}},
                          {"norm_groups", 4}, {"num_classes", 3}}),
             path("evaluator"));
  for (int c = 0; c < 3; ++c) {
    const std::string folder = path("reference/c" + std::to_string(c));
    fs::create_directories(folder);
    write_png_images(folder, torch::rand({8, 1, 8, 8}) * 2 - 1);
  }
  write_sample_batch_npz(path("s.npz"), images_to_uint8_nhwc(torch::rand({12, 1, 8, 8}) * 2 - 1),
                         torch::arange(12, torch::kLong) % 3);
  const std::string evaluation = " --evaluator " + path("evaluator") + " --reference folder:" + path("reference");
  // Separate caches: each run computes the reference statistics (the second on 2 ranks).
  run_ok("eval --samples " + path("s.npz") + evaluation + " --cache-dir " + path("cache1") + " --json " + path("one.json"));
  run_ok("eval --samples " + path("s.npz") + evaluation + " --cache-dir " + path("cache2") + " --nproc 2 --json " +
         path("two.json"));
  EXPECT_EQ(nlohmann::json::parse(read_file_bytes(path("one.json"))),
            nlohmann::json::parse(read_file_bytes(path("two.json"))));
  EXPECT_TRUE(fs::exists(path("cache2")));  // rank 0 wrote the cache

  torch::manual_seed(2);
  save_model(build_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                          {"norm_groups", 4}, {"num_classes", 3}}),
             path("unet"));
  const std::string sweep = "sweep --model " + path("unet") + " --cfg-scales 0,1 --steps 2 --num-samples 12 "
                            "--batch-size 5 --cache-dir " + path("cache1") + evaluation;
  run_ok(sweep + " --out-dir " + path("sweep1"));
  run_ok(sweep + " --nproc 2 --out-dir " + path("sweep2"));
  const auto without_seconds = [](const std::string& text) {
    std::string out;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) out += line.substr(0, line.rfind(',')) + "\n";
    return out;
  };
  const std::string csv = without_seconds(read_file_bytes(path("sweep1/results.csv")));
  EXPECT_EQ(without_seconds(read_file_bytes(path("sweep2/results.csv"))), csv);
  EXPECT_EQ(read_file_bytes(path("sweep1/settings/cfg_w1_steps2/samples.npz")),
            read_file_bytes(path("sweep2/settings/cfg_w1_steps2/samples.npz")));
  // Resumed on 2 ranks: rank 0's files decide which setting is redone, the others follow.
  fs::remove(path("sweep2/settings/cfg_w1_steps2/scores.json"));
  const auto [code, err] = run(sweep + " --nproc 2 --out-dir " + path("sweep2"));
  ASSERT_EQ(code, 0) << err;
  EXPECT_NE(err.find("cfg_w0_steps2 already done"), std::string::npos) << err;
  EXPECT_EQ(err.find("cfg_w1_steps2 already done"), std::string::npos) << err;
  EXPECT_EQ(without_seconds(read_file_bytes(path("sweep2/results.csv"))), csv);
}

// ---- End to end: failures ------------------------------------------------------------------

namespace {

// A training run long enough to be killed in the middle of.
std::vector<std::string> endless_training(const std::string& out_dir, const std::string& timeout = "20") {
  return split_words("train diffusion --data mixture --mixture-size 200 --steps 1000000 --batch-size 8 "
                     "--timesteps 100 --save-every 5 --log-every 0 --dist-timeout " + timeout + " --out-dir " + out_dir);
}

// Waits (up to a minute) until `file` exists.
bool wait_for_file(const std::string& file) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (Clock::now() < deadline) {
    if (fs::exists(file)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// The processes whose parent is `parent` (field 4 of /proc/<pid>/stat).
std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> children;
  for (const auto& entry : fs::directory_iterator("/proc")) {
    const std::string name = entry.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    const auto close = line.rfind(')');  // the command name may hold spaces
    if (close == std::string::npos) continue;
    std::istringstream fields(line.substr(close + 1));
    std::string state;
    pid_t ppid = 0;
    if (fields >> state >> ppid && ppid == parent) children.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return children;
}

// The "guidiff: error: " lines of a stderr (rank 0 also prints what it trains).
std::vector<std::string> error_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("guidiff: error: ", 0) == 0) lines.push_back(line);
  }
  return lines;
}

}  // namespace

TEST_F(DistributedCliTest, AKilledRankStopsTheOthersWithAOneLineErrorNamingIt) {
  // As under torchrun: the store is the launcher's (here this test's); rank 1 is killed.
  LocalRendezvousStore store;
  const Process rank0 = start_guidiff(endless_training(path("run")), rank_environment(0, 2, store.port()), path("rank0.txt"));
  const Process rank1 = start_guidiff(endless_training(path("run")), rank_environment(1, 2, store.port()), path("rank1.txt"));
  ASSERT_TRUE(wait_for_file(path("run/resume.safetensors"))) << read_file_bytes(path("rank0.txt"));
  ::kill(rank1.pid, SIGKILL);
  wait_for(rank1, std::chrono::seconds(10));
  // Rank 0 notices at its next collective and names rank 1 within seconds (the heartbeat
  // check takes 3), long before the 20 s collective timeout.
  const Ended ended = wait_for(rank0, std::chrono::seconds(60));
  const std::string err = read_file_bytes(path("rank0.txt"));
  EXPECT_FALSE(ended.timed_out) << err;
  EXPECT_EQ(ended.exit_code, 2) << err;
  EXPECT_LT(ended.seconds, 15.0) << err;
  const auto errors = error_lines(err);
  ASSERT_EQ(errors.size(), 1u) << err;
  EXPECT_EQ(errors[0].rfind("guidiff: error: [rank 0 of 2] rank 1 is gone", 0), 0u) << err;
  // No checkpoint is half-written: the last one loads.
  Model model = build_model(nlohmann::json::parse(read_file_bytes(path("run/raw.json"))));
  Model ema = build_model(model.config);
  torch::optim::AdamW optimizer(model.module->parameters());
  EXPECT_NO_THROW(load_resume_file(path("run/resume.safetensors"), model, ema, optimizer));
  EXPECT_NO_THROW(load_safetensors(path("run/model.safetensors")));
}

TEST_F(DistributedCliTest, UnderTheLauncherTheOthersSayHowTheKilledRankEnded) {
  const Process launcher = start_guidiff(
      [&] {
        auto args = endless_training(path("run"));
        args.push_back("--nproc");
        args.push_back("2");
        return args;
      }(),
      {{"GUIDIFF_THREADS", "1"}}, path("launcher.txt"));
  ASSERT_TRUE(wait_for_file(path("run/resume.safetensors"))) << read_file_bytes(path("launcher.txt"));
  // Kill the launcher's child with RANK=1.
  bool killed = false;
  for (const pid_t child : children_of(launcher.pid)) {
    const std::string environment = std::string(1, '\0') + read_file_bytes("/proc/" + std::to_string(child) + "/environ");
    if (environment.find(std::string("\0RANK=1\0", 8)) != std::string::npos) killed = ::kill(child, SIGKILL) == 0;
  }
  ASSERT_TRUE(killed) << "no child with RANK=1";
  const Ended ended = wait_for(launcher, std::chrono::seconds(60));
  const std::string err = read_file_bytes(path("launcher.txt"));
  EXPECT_FALSE(ended.timed_out) << err;
  EXPECT_EQ(ended.exit_code, 128 + SIGKILL) << err;
  EXPECT_LT(ended.seconds, 15.0) << err;
  // Rank 0's line, then the launcher's.
  const auto errors = error_lines(err);
  ASSERT_EQ(errors.size(), 2u) << err;
  EXPECT_EQ(errors[0].rfind("guidiff: error: [rank 0 of 2] rank 1 failed: its process was killed by signal 9", 0), 0u)
      << err;
  EXPECT_EQ(errors[1].rfind("guidiff: error: --nproc 2: rank 1 was killed by signal 9", 0), 0u) << err;
}

TEST_F(DistributedCliTest, AFrozenRankIsNamedWhenTheCollectiveTimesOut) {
  // Rank 1 stops (SIGSTOP) without closing its connections: rank 0 waits in its collective
  // for --dist-timeout (5 s), then finds rank 1's heartbeat still (3 s) and names it.
  LocalRendezvousStore store;
  const Process rank0 = start_guidiff(endless_training(path("run"), "5"), rank_environment(0, 2, store.port()), path("rank0.txt"));
  const Process rank1 = start_guidiff(endless_training(path("run"), "5"), rank_environment(1, 2, store.port()), path("rank1.txt"));
  ASSERT_TRUE(wait_for_file(path("run/resume.safetensors"))) << read_file_bytes(path("rank0.txt"));
  ::kill(rank1.pid, SIGSTOP);
  const Ended ended = wait_for(rank0, std::chrono::seconds(60));
  ::kill(rank1.pid, SIGKILL);
  wait_for(rank1, std::chrono::seconds(10));
  const std::string err = read_file_bytes(path("rank0.txt"));
  EXPECT_FALSE(ended.timed_out) << err;
  EXPECT_EQ(ended.exit_code, 2) << err;
  EXPECT_GT(ended.seconds, 5.0) << err;
  EXPECT_LT(ended.seconds, 25.0) << err;
  const auto errors = error_lines(err);
  ASSERT_EQ(errors.size(), 1u) << err;
  EXPECT_EQ(errors[0].rfind("guidiff: error: [rank 0 of 2] rank 1 is gone", 0), 0u) << err;
}

TEST_F(DistributedCliTest, ARankThatFailsIsNamedWithItsReason) {
  LocalRendezvousStore store;
  auto args = endless_training(path("run"));
  const Process rank0 = start_guidiff(args, rank_environment(0, 2, store.port()), path("rank0.txt"));
  args.push_back("--config");
  args.push_back(path("missing.json"));
  const Process rank1 = start_guidiff(args, rank_environment(1, 2, store.port()), path("rank1.txt"));
  const Ended one = wait_for(rank1, std::chrono::seconds(60));
  const Ended zero = wait_for(rank0, std::chrono::seconds(60));
  const std::string err0 = read_file_bytes(path("rank0.txt")), err1 = read_file_bytes(path("rank1.txt"));
  EXPECT_EQ(one.exit_code, 2) << err1;
  EXPECT_EQ(err1.rfind("guidiff: error: [rank 1 of 2] --config: cannot read '", 0), 0u) << err1;
  EXPECT_FALSE(zero.timed_out) << err0;
  EXPECT_EQ(zero.exit_code, 2) << err0;
  const auto errors = error_lines(err0);
  ASSERT_EQ(errors.size(), 1u) << err0;
  EXPECT_EQ(errors[0].rfind("guidiff: error: [rank 0 of 2] rank 1 failed: --config: cannot read '", 0), 0u) << err0;
}

TEST_F(DistributedCliTest, APeerThatNeverArrivesIsNamedAfterTheTimeout) {
  LocalRendezvousStore store;
  const auto args = endless_training(path("run"), "2");
  const Process rank0 = start_guidiff(args, rank_environment(0, 3, store.port()), path("rank0.txt"));
  const Ended ended = wait_for(rank0, std::chrono::seconds(60));
  const std::string err = read_file_bytes(path("rank0.txt"));
  EXPECT_EQ(ended.exit_code, 2) << err;
  EXPECT_LT(ended.seconds, 15.0) << err;
  EXPECT_EQ(error_lines(err).size(), 1u) << err;
  EXPECT_NE(err.find("ranks 1, 2 of 3 never arrived at the rendezvous at 127.0.0.1:" + std::to_string(store.port()) +
                     " within 2 s"),
            std::string::npos)
      << err;
}

TEST_F(DistributedCliTest, LauncherFlagsAreChecked) {
  const auto [inside, message] = [&] {
    const std::string err = path("inside.txt");
    const Ended ended = wait_for(start_guidiff(split_words("sample --num-samples 2 --out " + path("x.npy") + " --nproc 2"),
                                               {{"WORLD_SIZE", "2"}}, err),
                                 std::chrono::seconds(60));
    return std::make_pair(ended.exit_code, read_file_bytes(err));
  }();
  EXPECT_EQ(inside, 2);
  EXPECT_NE(message.find("under torchrun leave --nproc out"), std::string::npos) << message;
  const auto [zero, zero_message] = run("sample --num-samples 2 --out " + path("x.npy") + " --nproc -1");
  EXPECT_EQ(zero, 2);
  EXPECT_NE(zero_message.find("--nproc must be 1 to "), std::string::npos) << zero_message;
  const auto [info, info_message] = run("info --nproc 2");
  EXPECT_EQ(info, 2);
  EXPECT_NE(info_message.find("--nproc applies to train, sample, sweep and eval"), std::string::npos) << info_message;
  // Commands that run whole in one process start no workers.
  const auto [convert, convert_message] =
      run("convert absent.pt --out " + path("converted") + " --nproc 2");
  EXPECT_EQ(convert, 2);
  EXPECT_NE(convert_message.find("--nproc applies to train, sample, sweep and eval, not convert"),
            std::string::npos)
      << convert_message;
}
