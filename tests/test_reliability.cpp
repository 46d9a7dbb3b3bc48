// Reliability: what guidiff survives besides malformed input (fuzzed under fuzz/): full disks
// and file size limits, writes killed half-way (their temporaries), non-finite losses and
// weights in training, NaN in a model's output while sampling, and requests larger than the
// machine's memory (refused before the memory is filled, not killed by the kernel). The
// process-level forms (kill -9, a real full tmpfs, the CLI) are scripts/kill_campaign.sh and
// scripts/disk_full.sh.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <thread>

#include "guidiff/core/allocation_budget.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/data/batch_loader.hpp"
#include "guidiff/data/mixture_dataset.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/models/gaussian_mixture.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/training/checkpoint.hpp"
#include "guidiff/training/trainer.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;

namespace {

class ReliabilityTest : public guidiff::testing::TempDirTest {
 protected:
  // The names in the directory that are temporaries of atomic writes.
  std::set<std::string> temporaries() const {
    std::set<std::string> found;
    for (const auto& name : listing()) {
      if (name.find(".tmp-") != std::string::npos) found.insert(name);
    }
    return found;
  }
};

// Runs `call` with the process's file size limit (RLIMIT_FSIZE) at `bytes`: a write past it
// fails with EFBIG, as a full disk fails with ENOSPC, through the same code. SIGXFSZ is
// ignored meanwhile, as the guidiff CLI ignores it.
template <typename F>
void with_file_size_limit(rlim_t bytes, F&& call) {
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto saved_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit limited = saved;
  limited.rlim_cur = bytes;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limited), 0);
  struct Restore {
    rlimit limit;
    void (*handler)(int);
    ~Restore() {
      ::setrlimit(RLIMIT_FSIZE, &limit);
      std::signal(SIGXFSZ, handler);
    }
  } restore{saved, saved_handler};
  call();
}

Model fresh_model() {
  torch::manual_seed(0);
  return build_model({{"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", 32}, {"num_blocks", 1}});
}

TrainingOptions quick_options(const std::string& out_dir, int64_t steps) {
  TrainingOptions options;
  options.out_dir = out_dir;
  options.steps = steps;
  options.batch_size = 8;
  options.lr = 1e-3;
  options.ema_rate = 0.9;
  options.log_every = 1;
  options.save_every = 1;
  options.timesteps = 50;
  options.seed = 5;
  return options;
}

std::vector<std::string> checkpoint_bytes(const RunFiles& files) {
  return {read_file_bytes(files.ema_prefix + ".safetensors"), read_file_bytes(files.ema_prefix + ".json"),
          read_file_bytes(files.raw_prefix + ".safetensors"), read_file_bytes(files.raw_prefix + ".json"),
          read_file_bytes(files.resume)};
}

// A denoiser that predicts eps = 0 except NaN in batch row `row` from its `call`-th call on.
class NanAfterCalls : public Denoiser {
 public:
  NanAfterCalls(int64_t call, int64_t row) : call_(call), row_(row) {}
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor&, const torch::Tensor&) override {
    torch::Tensor eps = torch::zeros_like(x_t);
    if (++calls_ >= call_ && row_ < x_t.size(0)) eps[row_].fill_(std::nan(""));
    return {eps};
  }
  TimeKind time_kind() const override { return TimeKind::discrete_timestep; }
  int64_t num_classes() const override { return 0; }
  int64_t calls() const { return calls_; }

 private:
  int64_t call_, row_, calls_ = 0;
};

}  // namespace

TEST_F(ReliabilityTest, AFailedCheckpointWriteKeepsThePreviousCheckpointWhole) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 64, 1);
  Model model = fresh_model();
  train(model, data, quick_options(path("run"), 2));
  const RunFiles files = run_files(path("run"));
  const std::vector<std::string> before = checkpoint_bytes(files);

  // Room for the model files but not the resume file (the largest): the checkpoint of step 3
  // must fail as a whole, naming the file.
  Model again = fresh_model();
  TrainingOptions resume = quick_options(path("run"), 4);
  resume.resume = true;
  with_file_size_limit(before[4].size() / 2, [&] {
    expect_error<FileError>([&] { train(again, data, resume); }, {"resume.safetensors", "File too large"});
  });
  EXPECT_EQ(checkpoint_bytes(files), before);
  for (const auto& entry : fs::directory_iterator(path("run"))) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos) << entry.path();
  }
  // The run continues from the kept checkpoint once there is room.
  Model resumed = fresh_model();
  EXPECT_EQ(train(resumed, data, resume).first_step, 2);
}

TEST_F(ReliabilityTest, FailedNpzImageAndReportWritesLeaveTheOldFileAndNoTemporary) {
  const torch::Tensor pixels = torch::randint(0, 256, {4, 16, 16, 3}, torch::kUInt8);
  write_sample_batch_npz(path("samples.npz"), pixels.slice(0, 0, 1), torch::tensor({1}));
  write_file_atomically(path("report.md"), "old report\n");
  const std::string old_npz = read_file_bytes(path("samples.npz"));
  with_file_size_limit(1024, [&] {
    expect_error<FileError>([&] { write_sample_batch_npz(path("samples.npz"), pixels, torch::tensor({1, 2, 3, 4})); },
                            {"samples.npz", "File too large"});
    expect_error<FileError>([&] { write_file_atomically(path("report.md"), std::string(4096, 'x')); },
                            {"report.md", "File too large"});
    expect_error<FileError>([&] { write_png_grid(path("grid.png"), torch::rand({4, 3, 32, 32}) * 2 - 1); },
                            {"grid.png", "File too large"});
  });
  EXPECT_EQ(read_file_bytes(path("samples.npz")), old_npz);
  EXPECT_EQ(read_file_bytes(path("report.md")), "old report\n");
  EXPECT_EQ(listing(), (std::set<std::string>{"report.md", "samples.npz"}));
}

TEST_F(ReliabilityTest, AGroupWriteThatFailsChangesNoFile) {
  write_file_atomically(path("a"), "old a");
  write_file_atomically(path("b"), "old b");
  with_file_size_limit(100, [&] {
    expect_error<FileError>(
        [&] { write_files_atomically({{path("a"), "new a"}, {path("b"), std::string(1000, 'b')}}); },
        {path("b"), "File too large"});
  });
  EXPECT_EQ(read_file_bytes(path("a")), "old a");
  EXPECT_EQ(read_file_bytes(path("b")), "old b");
  EXPECT_EQ(listing(), (std::set<std::string>{"a", "b"}));
}

TEST_F(ReliabilityTest, AbandonedTemporariesAreRemovedButNotThoseOfALiveWriter) {
  write_raw(".model.safetensors.tmp-a1B2c3", std::string(100, 'x'));  // its writer was killed
  write_raw(".log.jsonl.tmp-Zz9Yy8", "");
  write_raw("notes.tmp-123456", "not ours: no leading dot");
  write_raw(".model.safetensors.tmp-toolong1", "not mkstemp's six characters");
  fs::create_directories(path("samples"));
  write_raw("samples/.step_10.png.tmp-QqWwEe", std::string(7, 'p'));
  // A write in progress holds the lock on its temporary.
  write_raw(".raw.json.tmp-LIVE01", "{");
  const int live = ::open(path(".raw.json.tmp-LIVE01").c_str(), O_RDONLY);
  ASSERT_GE(live, 0);
  ASSERT_EQ(::flock(live, LOCK_EX), 0);

  const AbandonedTemporaries top = remove_abandoned_temporaries(dir_.string());
  EXPECT_EQ(top.files, 2);
  EXPECT_EQ(top.bytes, 100);
  EXPECT_TRUE(fs::exists(path("samples/.step_10.png.tmp-QqWwEe")));
  const AbandonedTemporaries deep = remove_abandoned_temporaries(dir_.string(), /*recursive=*/true);
  EXPECT_EQ(deep.files, 1);
  EXPECT_EQ(deep.bytes, 7);
  EXPECT_EQ(listing(), (std::set<std::string>{".model.safetensors.tmp-toolong1", ".raw.json.tmp-LIVE01",
                                              "notes.tmp-123456", "samples"}));
  ::close(live);
  EXPECT_EQ(remove_abandoned_temporaries(dir_.string()).files, 1);  // its writer is gone now
  EXPECT_EQ(remove_abandoned_temporaries(path("missing")).files, 0);
}

TEST_F(ReliabilityTest, TrainingRemovesTemporariesThatAKilledRunLeft) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 64, 1);
  Model model = fresh_model();
  train(model, data, quick_options(path("run"), 2));
  write_raw("run/.resume.safetensors.tmp-k1LLed", std::string(321, 'r'));
  std::vector<std::string> messages;
  TrainingHooks hooks;
  hooks.on_message = [&](const std::string& message) { messages.push_back(message); };
  TrainingOptions resume = quick_options(path("run"), 3);
  resume.resume = true;
  Model again = fresh_model();
  train(again, data, resume, hooks);
  EXPECT_FALSE(fs::exists(path("run/.resume.safetensors.tmp-k1LLed")));
  ASSERT_FALSE(messages.empty());
  EXPECT_NE(messages.front().find("removed 1 temporary file (321 bytes)"), std::string::npos) << messages.front();
}

TEST_F(ReliabilityTest, NonFiniteLossStopsAtItsStepOrSkipsTheBatch) {
  Dataset data = mixture_dataset(GaussianMixture::demo(), 64, 1);
  const int64_t poisoned = 5;
  data.images[poisoned].fill_(std::nan(""));
  // The steps whose batch holds the poisoned sample, from the loader the trainer uses.
  const int64_t steps = 12;
  std::vector<int64_t> poisoned_steps;
  {
    BatchLoaderOptions loader;
    loader.batch_size = 8;
    loader.seed = 5;
    BatchLoader batches(data, loader);
    for (int64_t step = 1; step <= steps; ++step) {
      if (batches.next().sample_indices.eq(poisoned).any().item<bool>()) poisoned_steps.push_back(step);
    }
  }
  ASSERT_FALSE(poisoned_steps.empty());

  Model stopped = fresh_model();
  const int64_t first = poisoned_steps.front();
  expect_error<NumericError>([&] { train(stopped, data, quick_options(path("stop"), steps)); },
                             {"training loss is nan at step " + std::to_string(first) + " ",
                              first > 1 ? "the checkpoint of step " + std::to_string(first - 1) + " " : "no checkpoint",
                              "--skip-nonfinite"});
  if (first > 1) {
    // The last good checkpoint is the step before, and a run may resume from it skipping.
    TrainingOptions resume = quick_options(path("stop"), steps);
    resume.resume = true;
    resume.skip_nonfinite = true;
    Model resumed = fresh_model();
    const TrainingResult result = train(resumed, data, resume);
    EXPECT_EQ(result.first_step, first - 1);
    EXPECT_EQ(result.skipped_steps, static_cast<int64_t>(poisoned_steps.size()));
  }

  TrainingOptions skipping = quick_options(path("skip"), steps);
  skipping.skip_nonfinite = true;
  std::vector<std::string> messages;
  TrainingHooks hooks;
  hooks.on_message = [&](const std::string& message) { messages.push_back(message); };
  Model model = fresh_model();
  const TrainingResult result = train(model, data, skipping, hooks);
  EXPECT_EQ(result.skipped_steps, static_cast<int64_t>(poisoned_steps.size()));
  for (int64_t step = 1; step <= steps; ++step) {
    const bool skipped = std::find(poisoned_steps.begin(), poisoned_steps.end(), step) != poisoned_steps.end();
    EXPECT_EQ(std::isnan(result.losses[static_cast<size_t>(step - 1)]), skipped) << "step " << step;
  }
  for (const auto& [name, tensor] : model_state(*model.module)) EXPECT_TRUE(torch::isfinite(tensor).all().item<bool>()) << name;
  const auto notice = std::find_if(messages.begin(), messages.end(), [](const std::string& m) {
    return m.find("batch skipped (--skip-nonfinite)") != std::string::npos;
  });
  EXPECT_NE(notice, messages.end());
  // The log counts the skipped batches of each interval.
  int64_t logged_skips = 0;
  std::istringstream log(read_file_bytes(run_files(path("skip")).log));
  for (std::string line; std::getline(log, line);) logged_skips += nlohmann::json::parse(line).value("skipped", int64_t{0});
  EXPECT_EQ(logged_skips, result.skipped_steps);
}

// Skipping is for a bad batch now and then; a run whose every batch is non-finite has diverged
// and stops at the 10th in a row instead of skipping to its end.
TEST_F(ReliabilityTest, SkippingStopsWhenEveryBatchIsNonFinite) {
  Dataset data = mixture_dataset(GaussianMixture::demo(), 64, 1);
  data.images.fill_(std::nan(""));
  TrainingOptions skipping = quick_options(path("diverged"), 40);
  skipping.skip_nonfinite = true;
  Model model = fresh_model();
  expect_error<NumericError>([&] { train(model, data, skipping); },
                             {"training loss is nan at step 10 ", "the 10th batch in a row", "diverged"});
}

TEST_F(ReliabilityTest, ACheckpointOfNonFiniteWeightsIsRefused) {
  const Dataset data = mixture_dataset(GaussianMixture::demo(), 64, 1);
  Model model = fresh_model();
  train(model, data, quick_options(path("run"), 1));
  const RunFiles files = run_files(path("run"));
  const std::vector<std::string> before = checkpoint_bytes(files);
  Model ema = fresh_model();
  auto parameters = model.module->named_parameters();
  {
    torch::NoGradGuard no_grad;
    parameters[0].value().view(-1)[0] = std::numeric_limits<float>::infinity();
  }
  torch::optim::AdamW optimizer(model.module->parameters());
  ResumeState state;
  state.step = 7;
  state.cpu_rng_state = cpu_rng_state();
  expect_error<NumericError>([&] { save_checkpoint(files, model, ema, optimizer, state); },
                             {"step 7", parameters[0].key(), "previous checkpoint"});
  EXPECT_EQ(checkpoint_bytes(files), before);
}

TEST(SamplingNaN, NamesTheStepAndTheSample) {
  GenerationConfig config;
  config.sampler = SamplerKind::ddim;
  config.timesteps = 100;
  config.steps = 10;
  config.sample_shape = {2};
  config.num_samples = 12;
  config.batch_size = 4;
  config.first_sample_index = 100;  // a shard: samples 100..111
  // NaN from the model's 4th call of the second batch on, in its row 2: sample 100 + 4 + 2.
  auto model = std::make_shared<NanAfterCalls>(/*call=*/10 + 4, /*row=*/2);
  expect_error<NumericError>([&] { generate(model, nullptr, config, {}, {}); },
                             {"NaN at step 4 of 10", "sample 106", "1 of 4 in its batch", "model's output"});
  config.sampler = SamplerKind::ddpm;
  auto again = std::make_shared<NanAfterCalls>(/*call=*/1, /*row=*/0);
  expect_error<NumericError>([&] { generate(again, nullptr, config, {}, {}); }, {"at step 1 of 10", "sample 100"});
  // The sigma-space samplers report it the same way (DPM-Solver++(2M): one model call a step).
  config.sampler = SamplerKind::dpmpp_2m;
  auto sigma = std::make_shared<NanAfterCalls>(/*call=*/3, /*row=*/1);
  expect_error<NumericError>([&] { generate(sigma, nullptr, config, {}, {}); }, {"at step 3 of 10", "sample 101"});
}

// ---- requests too large for the machine's memory --------------------------------------

TEST(Memory, AvailableMemoryIsPositiveAndAtMostTheRamAndSwap) {
  struct sysinfo info {};
  ASSERT_EQ(::sysinfo(&info), 0);
  const double total =
      (static_cast<double>(info.totalram) + static_cast<double>(info.totalswap)) * info.mem_unit;
  const std::optional<int64_t> available = available_memory_bytes();
  ASSERT_TRUE(available.has_value()) << "/proc/meminfo has MemAvailable on every Linux since 3.14";
  EXPECT_GT(*available, 0);
  EXPECT_LE(static_cast<double>(*available), total);
}

class MemoryCgroup : public guidiff::testing::TempDirTest {
 protected:
  // <dir>/<name> with `text`, its folders made.
  void put(const std::string& name, const std::string& text) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    write_raw(name, text);
  }
};

TEST_F(MemoryCgroup, V2LimitsApplyAllTheWayUpAndInactiveFilesCountAsFree) {
  constexpr int64_t MiB = int64_t{1} << 20;
  put("self", "0::/a/b\n");
  // a/b: 1024 - 100 + 10 (its inactive file pages) = 934 MiB left; a: 512 - 200 = 312 MiB.
  put("fs/a/b/memory.current", std::to_string(100 * MiB) + "\n");
  put("fs/a/b/memory.max", std::to_string(1024 * MiB) + "\n");
  put("fs/a/b/memory.stat",
      "anon 1000\ninactive_file " + std::to_string(10 * MiB) + "\nactive_file 5\n");
  put("fs/a/memory.current", std::to_string(200 * MiB) + "\n");
  put("fs/a/memory.max", std::to_string(512 * MiB) + "\n");
  put("fs/memory.current", std::to_string(4000 * MiB) + "\n");  // the root: no memory.max
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 312 * MiB);
  put("fs/a/memory.max", "max\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 934 * MiB);
  put("fs/a/b/memory.max", "max\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), std::nullopt) << "no limit anywhere";
  // A container's namespace shows "/" and mounts its own cgroup at the root.
  put("self", "0::/\n");
  put("fs/memory.max", std::to_string(2048 * MiB) + "\n");
  put("fs/memory.current", std::to_string(48 * MiB) + "\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 2000 * MiB);
  // A path that names no folder here (a host path seen from inside a container) climbs to the root.
  put("self", "0::/system.slice/docker-1.scope\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 2000 * MiB);
  put("self", "0::malformed\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), std::nullopt)
      << "and ends, even on nonsense";
}

TEST_F(MemoryCgroup, V1ReadsTheHierarchicalLimitOfItsMemoryController) {
  constexpr int64_t MiB = int64_t{1} << 20;
  put("self", "5:cpu,cpuacct:/x\n4:memory:/x\n0::/\n");
  put("fs/memory/x/memory.usage_in_bytes", std::to_string(300 * MiB) + "\n");
  put("fs/memory/x/memory.stat", "cache 7\nhierarchical_memory_limit " +
                                     std::to_string(1024 * MiB) + "\ntotal_inactive_file " +
                                     std::to_string(4 * MiB) + "\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 728 * MiB);
  // No limit is a page-rounded 2^63 - 1.
  put("fs/memory/x/memory.stat", "hierarchical_memory_limit 9223372036854771712\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), std::nullopt);
  // Inside a container the controller's root is the container's cgroup.
  put("self", "4:memory:/docker/abc\n");
  put("fs/memory/memory.usage_in_bytes", std::to_string(100 * MiB) + "\n");
  put("fs/memory/memory.stat", "hierarchical_memory_limit " + std::to_string(512 * MiB) + "\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 412 * MiB);
  // Usage past the limit leaves nothing, not a negative number.
  put("fs/memory/memory.usage_in_bytes", std::to_string(600 * MiB) + "\n");
  EXPECT_EQ(cgroup_memory_headroom(path("self"), path("fs")), 0);
}

TEST(Memory, SizesReadAsPeopleWriteThemAndTooLargeIsRefused) {
  EXPECT_EQ(memory_text(512), "512 bytes");
  EXPECT_EQ(memory_text(1536), "1.50 KiB");
  EXPECT_EQ(memory_text(int64_t{37} << 20), "37.0 MiB");
  EXPECT_EQ(memory_text(int64_t{300} << 30), "300 GiB");
  EXPECT_EQ(memory_text(std::numeric_limits<int64_t>::max()), "8.00 EiB");
  EXPECT_EQ(saturated_bytes(4096.0), 4096);
  EXPECT_EQ(saturated_bytes(9223372036854775808.0), std::numeric_limits<int64_t>::max()) << "2^63";
  EXPECT_EQ(saturated_bytes(1e30), std::numeric_limits<int64_t>::max());
  expect_error<InputError>(
      [] { check_fits_in_memory(2048, "the things", "; ask for less", 1024); },
      {"the things need 2.00 KiB of memory, but only 1.00 KiB is available; ask for less"});
  EXPECT_NO_THROW(check_fits_in_memory(1024, "the things", "", 1024));
  EXPECT_NO_THROW(
      check_fits_in_memory(std::numeric_limits<int64_t>::max(), "the things", "", std::nullopt))
      << "nothing is refused where the memory available is unknown";
}

TEST(Memory, ABudgetRefusesTheAllocationThatWouldPassItOnItsOwnThreadOnly) {
  {
    CpuAllocationBudget budget(int64_t{1} << 20);
    const torch::Tensor half = torch::empty({128 * 1024}, torch::kFloat);  // 512 KiB
    EXPECT_EQ(budget.allocated(), 512 * 1024);
    try {
      const torch::Tensor more = torch::empty({256 * 1024}, torch::kFloat);  // 1 MiB more
      ADD_FAILURE() << "an allocation past the budget was granted";
    } catch (const AllocationBudgetExceeded& exceeded) {
      EXPECT_EQ(exceeded.allocated, 512 * 1024);
      EXPECT_EQ(exceeded.requested, 1024 * 1024);
      EXPECT_EQ(exceeded.budget, 1024 * 1024);
    }
    bool other_thread_allocated = false;
    std::thread other([&other_thread_allocated] {
      other_thread_allocated =
          torch::ones({1 << 20}, torch::kFloat).sum().item<float>() == float(1 << 20);
    });
    other.join();
    EXPECT_TRUE(other_thread_allocated) << "another thread's 4 MiB are not this budget's";
    EXPECT_EQ(budget.allocated(), 512 * 1024);
  }
  // Past its end allocations are free again, and tensors made under it still resize.
  const torch::Tensor after = torch::ones({1 << 21}, torch::kFloat);
  EXPECT_EQ(after.sum().item<float>(), float(1 << 21));
}

// The peak resident set size since `reset_peak_resident()`, in bytes (VmHWM).
int64_t peak_resident_since_reset() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return -1;
}

TEST(Memory, NetworkWeightsBeyondTheBudgetAreRefusedBeforeTheyAreFilled) {
  // Writing 5 to clear_refs resets VmHWM (Linux 4.0): the peak below is this test's own.
  {
    std::ofstream clear("/proc/self/clear_refs");
    clear << "5";
    clear.flush();
    if (!clear) GTEST_SKIP() << "cannot reset the peak resident set size here";
  }
  const int64_t peak_before = peak_resident_since_reset();
  ASSERT_GT(peak_before, 0);
  // Three 20000 x 20000 float32 layers, 1.6 GB each, against a 64 MiB budget.
  const nlohmann::json huge = {
      {"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", 20000}};
  expect_error<InputError>(
      [&] { build_model(huge, int64_t{64} << 20); },
      {"mlp_denoiser config: its weights need more than the 64.0 MiB of memory available",
       "check its sizes"});
  EXPECT_LT(peak_resident_since_reset() - peak_before, int64_t{128} << 20)
      << "the refused layer's memory was touched before the refusal";
  // A network whose weights fit is built; one byte less than its weights is refused.
  const nlohmann::json small = {{"kind", "mlp_denoiser"}, {"data_dim", 2}, {"hidden_channels", 64}};
  const Model model = build_model(small, int64_t{64} << 20);
  const int64_t weight_bytes = count_parameters(*model.module) * 4;
  expect_error<InputError>([&] { build_model(small, weight_bytes - 1); },
                           {"its weights need more than"});
}

TEST(Memory, SamplesTooLargeForTheMachineAreRefusedBeforeSampling) {
  GenerationConfig config;
  config.sampler = SamplerKind::ddim;
  config.timesteps = 100;
  config.steps = 2;
  config.sample_shape = {int64_t{1} << 30};  // 4 GiB a sample
  config.num_samples = int64_t{1} << 20;     // 4 PiB in all
  auto model = std::make_shared<NanAfterCalls>(/*call=*/1, /*row=*/0);
  expect_error<InputError>(
      [&] { generate(model, nullptr, config, {}, {}); },
      {"--num-samples 1048576: the samples, kept until they are written, need 4.00 PiB of memory",
       "ask for fewer per run"});
  EXPECT_EQ(model->calls(), 0) << "refused before the model ran";
  config.keep_trajectory = true;
  expect_error<InputError>([&] { generate(model, nullptr, config, {}, {}); },
                           {"the samples and their trajectories"});
  // Labels count too: int64 each, and three more numbers each when drawn at random.
  expect_error<InputError>([] { labels_from_spec("random", int64_t{1} << 60, 10, 0); },
                           {"--num-samples 1152921504606846976: the labels need"});
}
