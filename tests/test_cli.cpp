// End to end: the `guidiff` binary run as a user would, its files, its exit codes, and its
// one-line error messages.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "guidiff/eval/feature_statistics.hpp"
#include "guidiff/eval/reference_batch.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/guided_diffusion_models.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/sampling/generate.hpp"
#include "guidiff/version.hpp"
#include "support/fixture_models.hpp"
#include "support/inception_formula_weights.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::fixture_path;

namespace {

// gcc says so with __SANITIZE_ADDRESS__, clang through __has_feature.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif
#else
constexpr bool kAddressSanitizer = false;
#endif

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
  int stderr_lines() const { return static_cast<int>(std::count(err.begin(), err.end(), '\n')); }
};

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "guidiff-test-cli-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Runs `env guidiff args` through the shell; stderr goes to a file, stdin is empty.
  CliResult run(const std::string& args, const std::string& env = "") const {
    const std::string err_file = path("stderr.txt");
    CliResult result = run_shell((env.empty() ? "" : "env " + env + " ") + "'" + GUIDIFF_CLI_PATH + "' " + args +
                                 " </dev/null 2>'" + err_file + "'");
    result.err = read_file_bytes(err_file);
    fs::remove(err_file);
    return result;
  }

  // Runs a shell command line: its stdout and exit status (stderr is the command's business).
  static CliResult run_shell(const std::string& command) {
    CliResult result;
    FILE* pipe = ::popen(command.c_str(), "r");
    if (pipe == nullptr) return result;
    char buffer[4096];
    size_t n = 0;
    while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.out.append(buffer, n);
    const int status = ::pclose(pipe);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
  }

  // Runs a command that must fail with one stderr line naming the problem.
  void expect_one_line_error(const std::string& args, const std::string& fragment, const std::string& env = "") const {
    SCOPED_TRACE("guidiff " + args);
    const CliResult result = run(args, env);
    EXPECT_NE(result.exit_code, 0);
    EXPECT_EQ(result.stderr_lines(), 1) << result.err;
    EXPECT_EQ(result.err.rfind("guidiff: error: ", 0), 0u) << result.err;
    EXPECT_NE(result.err.find(fragment), std::string::npos) << "expected '" << fragment << "' in: " << result.err;
  }

  fs::path dir_;
};

// The GenerationConfig the CLI's TorchScript runs below must produce.
GenerationConfig image_config(SamplerKind sampler, int64_t steps) {
  GenerationConfig config;
  config.sampler = sampler;
  config.steps = steps;
  config.sample_shape = {1, 4, 4};
  config.num_samples = 6;
  config.batch_size = 4;
  config.seed = 11;
  config.clip_x0 = true;  // the CLI's default for C,H,W shapes
  return config;
}

// PNG width and height from the IHDR chunk.
std::pair<int, int> png_size(const std::string& file) {
  const std::string bytes = read_file_bytes(file);
  if (bytes.size() < 24 || bytes.compare(1, 3, "PNG") != 0) return {0, 0};
  auto be32 = [&](size_t at) {
    return (static_cast<unsigned char>(bytes[at]) << 24) | (static_cast<unsigned char>(bytes[at + 1]) << 16) |
           (static_cast<unsigned char>(bytes[at + 2]) << 8) | static_cast<unsigned char>(bytes[at + 3]);
  };
  return {be32(16), be32(20)};
}

// ---- info and help -------------------------------------------------------------------

TEST_F(CliTest, InfoReportsVersionThreadsBlasAndDevices) {
  const CliResult result = run("--threads 2 info");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("guidiff  " GUIDIFF_VERSION), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("libtorch "), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("threads  2\n"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("blas     "), std::string::npos) << result.out;
  // AddressSanitizer's allocator replaces glibc's and refuses mallopt: info must say so.
  EXPECT_NE(result.out.find(kAddressSanitizer ? "malloc   glibc malloc: mallopt refused, defaults kept"
                                              : "malloc   glibc malloc: no mmap chunks"),
            std::string::npos)
      << result.out;
  EXPECT_NE(result.out.find("devices  cpu"), std::string::npos) << result.out;
}

TEST_F(CliTest, ThreadsComeFromTheEnvironmentUnlessTheFlagIsGiven) {
  EXPECT_NE(run("info", "GUIDIFF_THREADS=1").out.find("threads  1\n"), std::string::npos);
  EXPECT_NE(run("info --threads 2", "GUIDIFF_THREADS=1").out.find("threads  2\n"), std::string::npos);
}

TEST_F(CliTest, EverySubcommandHasHelp) {
  const std::pair<std::string, std::string> expected[] = {
      {"", "sample"}, {"info ", "Usage: guidiff info"}, {"sample ", "--classifier-scale"}, {"demo ", "--out-dir"},
      {"train diffusion ", "--p-uncond"}, {"train classifier ", "--max-t"}};
  for (const auto& [command, fragment] : expected) {
    const CliResult result = run(command + "--help");
    EXPECT_EQ(result.exit_code, 0) << command;
    EXPECT_NE(result.out.find("Usage:"), std::string::npos) << command;
    EXPECT_NE(result.out.find(fragment), std::string::npos) << command << result.out;
  }
}

// ---- sampling the toy ------------------------------------------------------------------

TEST_F(CliTest, ToySampleWritesSamplesAndLabels) {
  const CliResult result = run("sample --num-samples 10 --steps 20 --class 2 --cfg-scale 1 --out " + path("x.npy") +
                               " --labels-out " + path("y.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  // No progress bar when stderr is not a terminal: only the one timing line.
  EXPECT_EQ(result.err.rfind("sampling: 10 samples in ", 0), 0u) << result.err;
  EXPECT_EQ(result.stderr_lines(), 1) << result.err;
  const torch::Tensor samples = read_npy(path("x.npy"));
  EXPECT_EQ(samples.scalar_type(), torch::kFloat32);
  EXPECT_EQ(samples.sizes(), torch::IntArrayRef({10, 2}));
  EXPECT_TRUE(torch::isfinite(samples).all().item<bool>());
  EXPECT_TRUE(torch::equal(read_npy(path("y.npy")), torch::full({10}, 2L)));
  // Class 2 of the demo mixture sits around (-0.6, -0.6), sd 0.09-0.1: 0 is >= 6 sd away.
  EXPECT_LT(samples.select(1, 0).max().item<float>(), 0.0f);
  EXPECT_LT(samples.select(1, 1).max().item<float>(), 0.0f);
}

TEST_F(CliTest, ToyDimensionFollowsDim) {
  ASSERT_EQ(run("sample --dim 3 --num-samples 5 --steps 10 --out " + path("x.npy")).exit_code, 0);
  EXPECT_EQ(read_npy(path("x.npy")).sizes(), torch::IntArrayRef({5, 3}));
}

TEST_F(CliTest, SameSeedSameSamplesWhateverTheBatchSize) {
  // 20 samples: batches of 1, of 7 (the last one short) and one batch (64 > 20).
  const std::string common = "sample --sampler ddpm --steps 25 --num-samples 20 --class 0,1,2,3 "
                             "--classifier-scale 2 --seed 5 --out ";
  std::vector<torch::Tensor> outputs;
  for (int batch : {1, 7, 64}) {
    const std::string file = path("b" + std::to_string(batch) + ".npy");
    ASSERT_EQ(run(common + file + " --batch-size " + std::to_string(batch)).exit_code, 0);
    outputs.push_back(read_npy(file));
  }
  // Exact by design, as in test_generate: the mixture oracle, its classifier and the sampler
  // work row by row, and each row's noise depends only on its index.
  EXPECT_TRUE(torch::equal(outputs[0], outputs[1]));
  EXPECT_TRUE(torch::equal(outputs[0], outputs[2]));
  ASSERT_EQ(run("sample --sampler ddpm --steps 25 --num-samples 20 --class 0,1,2,3 --classifier-scale 2 --seed 6 --out " +
                path("other.npy")).exit_code, 0);
  EXPECT_FALSE(torch::allclose(outputs[0], read_npy(path("other.npy"))));  // other noise: O(0.1) apart
}

TEST_F(CliTest, GivenNoiseReplacesTheSeedsNoise) {
  // DDIM with eta = 0 is deterministic given x_T: starting from the seed's own x_T (the
  // trajectory's first entry) under another seed must give the same samples.
  const std::string common = "sample --sampler ddim --steps 10 --num-samples 8 ";
  ASSERT_EQ(run(common + "--seed 3 --out " + path("a.npy") + " --trajectory " + path("t.npy")).exit_code, 0);
  const torch::Tensor trajectory = read_npy(path("t.npy"));
  ASSERT_EQ(trajectory.sizes(), torch::IntArrayRef({11, 8, 2}));
  EXPECT_TRUE(torch::equal(trajectory[10], read_npy(path("a.npy"))));
  write_npy(path("xT.npy"), trajectory[0]);
  ASSERT_EQ(run(common + "--seed 99 --noise " + path("xT.npy") + " --out " + path("b.npy")).exit_code, 0);
  EXPECT_TRUE(torch::equal(read_npy(path("a.npy")), read_npy(path("b.npy"))));
}

TEST_F(CliTest, ToyPlotIsWritten) {
  const CliResult result = run("sample --num-samples 50 --steps 10 --plot " + path("p.png"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(png_size(path("p.png")).first, 420);
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

TEST_F(CliTest, DemoWritesFigureSamplesAndPurityReport) {
  const CliResult result = run("demo --out-dir " + path("demo") + " --num-samples 200 --steps 50");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  for (const char* name : {"demo.png", "report.json", "requested_labels.npy", "unguided.npy", "classifier_s1.npy",
                           "classifier_s4.npy", "cfg_w0.npy", "cfg_w3.npy"}) {
    EXPECT_TRUE(fs::exists(path("demo/") + name)) << name;
  }
  EXPECT_EQ(png_size(path("demo/demo.png")).first, 5 * 420);
  EXPECT_EQ(read_npy(path("demo/cfg_w3.npy")).sizes(), torch::IntArrayRef({200, 2}));
  const auto report = nlohmann::json::parse(read_file_bytes(path("demo/report.json")));
  ASSERT_EQ(report.at("settings").size(), 5u);
  for (const auto& setting : report.at("settings")) {
    const double purity = setting.at("class_purity").get<double>();
    EXPECT_NE(result.out.find(setting.at("title").get<std::string>()), std::string::npos);
    // Exact models: guided samples land in the requested class (up to the error of 50
    // DDPM steps); unguided ones follow the class weights (0.3, 0.25, 0.25, 0.2), so about
    // a quarter match. Statistical, 200 draws: standard error <= 0.035, so 0.5 is 7 of them
    // above the unguided 0.265 and 0.9 far below the guided ~1.
    if (setting.at("name") == "unguided") {
      EXPECT_LT(purity, 0.5) << setting.dump();
    } else {
      EXPECT_GT(purity, 0.9) << setting.dump();
    }
  }
  // Class 3 has two equally weighted lobes (components 4 and 5, weight 0.1 each). Strong
  // guidance (s = 4; w = 3, which targets the same tilted density, s = 1 + w) favours the
  // lobe far from the other classes, where p(y = 3 | x) is highest: few samples stay in 4.
  // Statistical, 200 draws: a share's binomial standard error is <= 0.035.
  const auto& settings = report.at("settings");
  for (const size_t strong : {2u, 4u}) {
    const auto share = settings.at(strong).at("component_share").get<std::vector<double>>();
    ASSERT_EQ(share.size(), 6u);
    EXPECT_LT(share[4], 0.08) << settings.at(strong).dump();
    EXPECT_GT(share[5], 0.15) << settings.at(strong).dump();
  }
}

// ---- TorchScript models --------------------------------------------------------------------

TEST_F(CliTest, TorchScriptConditionalModelWithCfgMatchesTheClosedForm) {
  const CliResult result =
      run("sample --model " + fixture_path("linear_conditional.pt") + " --num-classes 3 --shape 1,4,4 "
          "--sampler ddim --steps 10 --num-samples 6 --batch-size 4 --seed 11 --class 0,1,2 --cfg-scale 2 --out " +
          path("x.npy") + " --grid " + path("grid.png"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  GenerationConfig config = image_config(SamplerKind::ddim, 10);
  config.cfg_scale = 2;
  const auto twin = std::make_shared<guidiff::testing::LinearConditionalTwin>(TimeKind::discrete_timestep);
  const GenerationResult expected = generate(twin, nullptr, config, torch::tensor({0, 1, 2, 0, 1, 2}), {});
  // The twin runs the module's float32 operations one for one, so eps agrees; a stray ulp
  // (u = 2^-24) per model call would reach the samples with O(1) gain over 10 steps, ~1e-6.
  EXPECT_TRUE(torch::allclose(read_npy(path("x.npy")), expected.samples, 1e-5, 1e-6));
  // 6 images of 4x4, two of each class: one row of two per class, 2 px padding, after a left
  // margin for the names ("class 0": 7 glyphs of 6 px less 1, plus gaps of 2 on each side: 45).
  EXPECT_EQ(png_size(path("grid.png")), std::make_pair(45 + 2 * 6 + 2, 3 * 6 + 2));
}

TEST_F(CliTest, GridScaleEnlargesEachSampleAndIsChecked) {
  const std::string command = "sample --model " + fixture_path("linear_conditional.pt") +
                              " --num-classes 3 --shape 1,4,4 --steps 2 --num-samples 6 --class 0,1,2 --grid " +
                              path("grid.png");
  const CliResult result = run(command + " --grid-scale 3");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  // A row of 2 images of 12x12 (4x4 at 3x) per class with 2 px padding, after the names' margin
  // (45, as above: the font stays 1 px below 40 px images): 45 + 2 (12 + 2) + 2 = 75 by 3 (12 + 2) + 2 = 44.
  EXPECT_EQ(png_size(path("grid.png")), std::make_pair(75, 44));
  expect_one_line_error(command + " --grid-scale 0", "--grid-scale must be 1 to 16, got 0");
  expect_one_line_error(command + " --grid-scale 17", "--grid-scale must be 1 to 16, got 17");
}

TEST_F(CliTest, TorchScriptClassifierGuidesTheUnconditionalModel) {
  const CliResult result = run("sample --model " + fixture_path("linear_unconditional.pt") + " --classifier " +
                               fixture_path("linear_classifier.pt") +
                               " --num-classes 3 --shape 1,4,4 --sampler ddpm --steps 10 --num-samples 6 "
                               "--batch-size 4 --seed 11 --class 2 --classifier-scale 3 --out " + path("x.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  GenerationConfig config = image_config(SamplerKind::ddpm, 10);
  config.classifier_scale = 3;
  const auto twin = std::make_shared<guidiff::testing::LinearUnconditionalTwin>(TimeKind::discrete_timestep);
  const auto classifier = std::make_shared<guidiff::testing::LinearClassifierTwin>(TimeKind::discrete_timestep);
  const GenerationResult expected = generate(twin, classifier, config, torch::full({6}, 2L), {});
  // As above; the module's stored weights 0.1 sin(i + 3k) may differ from the twin's by an
  // ulp (another sinf), moving the logits and gradient by ~u: ~1e-6 in the samples.
  EXPECT_TRUE(torch::allclose(read_npy(path("x.npy")), expected.samples, 1e-5, 1e-6));
}

TEST_F(CliTest, TorchScriptLogSnrModelWithTheContinuousSampler) {
  const CliResult result = run("sample --model " + fixture_path("linear_conditional.pt") +
                               " --num-classes 3 --time log-snr --shape 1,4,4 --sampler cfg-continuous --steps 8 "
                               "--num-samples 6 --batch-size 4 --seed 11 --class 1 --cfg-scale 1 --out " + path("x.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  GenerationConfig config = image_config(SamplerKind::cfg_continuous, 8);
  config.cfg_scale = 1;
  const auto twin = std::make_shared<guidiff::testing::LinearConditionalTwin>(TimeKind::log_snr);
  const GenerationResult expected = generate(twin, nullptr, config, torch::full({6}, 1L), {});
  // Elementwise float32 operations one for one: equal eps (the first step at lambda = -20
  // would multiply a stray ulp by alpha' / alpha ~ 4300, beyond this tolerance).
  EXPECT_TRUE(torch::allclose(read_npy(path("x.npy")), expected.samples, 1e-5, 1e-6));
}

// ---- every bad input: exit != 0 and one line naming the problem ------------------------------

TEST_F(CliTest, BadOptionValuesAreOneLineErrors) {
  const std::string out = " --out " + path("x.npy");
  expect_one_line_error("sample --sampler lms" + out, "sampler 'lms'");
  expect_one_line_error("sample --schedule quadratic" + out, "schedule 'quadratic'");
  expect_one_line_error("sample --timesteps 100 --respacing ddim40" + out, "respacing 'ddim40'");
  expect_one_line_error("sample --timesteps 1000 --respacing 2000" + out, "respacing '2000'");
  expect_one_line_error("sample --steps 2000" + out, "--steps 2000");
  expect_one_line_error("sample --class 7" + out, "class 7");
  expect_one_line_error("sample --guidance-interval 5" + out, "--guidance-interval");
  expect_one_line_error("sample --steps 5", "nothing to write");
  expect_one_line_error("sample --grid " + path("g.png"), "--grid");
  expect_one_line_error("sample --out " + path("no/dir/x.npy"), "no/dir");
  expect_one_line_error("sample --bogus" + out, "--bogus");
  expect_one_line_error("sample --bf16" + out, "--bf16 applies to --model");
  expect_one_line_error("sample --mixture " + path("absent.json") + out, "absent.json");
  // Found by the bad-flag matrix: a directory given for a file is named, a bad request is
  // refused before anything about it is printed, and a flag the sampler does not use is
  // still checked.
  fs::create_directories(path("a-directory"));
  expect_one_line_error("sample --mixture " + path("a-directory") + out, path("a-directory") + "': it is a directory");
  expect_one_line_error("train diffusion --data mixture --steps 2 --config " + path("a-directory") + " --out-dir " +
                            path("run"),
                        "--config: cannot read '" + path("a-directory") + "': it is a directory");
  expect_one_line_error("sample --batch-size -1" + out, "--batch-size must be >= 1, got -1");
  expect_one_line_error("sample --num-samples -1" + out, "--num-samples must be >= 1, got -1");
  expect_one_line_error("sample --variance-exponent -1" + out,
                        "--variance-exponent applies to the cfg-continuous");
  // Flags the run would not read: once silently dropped.
  expect_one_line_error("sample --variance fixed-large" + out,
                        "--variance applies to the ddpm sampler (sampler is ddim)");
  expect_one_line_error("sample --guidance-interval 1,2" + out,
                        "--guidance-interval limits guidance, but none");
  expect_one_line_error("sample --unconditional --classifier-scale 2 --class 1" + out,
                        "--unconditional applies to --model");
  expect_one_line_error(
      "sample --sampler euler --cfg-scale 1 --class 0 --guidance-interval-sigma -1,2" + out,
      "--guidance-interval-sigma: noise levels sigma are >= 0, got -1");
  expect_one_line_error("sample --eta 1.5" + out, "--eta must be in [0, 1], got 1.5");
  expect_one_line_error("sample --sampler heun --s-noise 1e6" + out, "--s-noise must be in [0, 2]");
  expect_one_line_error("sample --timesteps 2000000000" + out,
                        "--timesteps must be 1 to 100000, got 2000000000");
  expect_one_line_error("sample --dim 100000000" + out, "dim must be 2 to 1024, got 100000000");
  expect_one_line_error("train diffusion --data folder:" + path("none") +
                            " --image-size 1000000 --out-dir " + path("run"),
                        "--image-size must be 1 to 4096");
  expect_one_line_error("demo --num-samples -1 --out-dir " + path("demo"), "--num-samples must be >= 1, got -1");
  expect_one_line_error("frobnicate", "unknown argument 'frobnicate'");
  expect_one_line_error("train", "guidiff train needs a subcommand: diffusion or classifier");
  expect_one_line_error("train bogus", "guidiff train needs a subcommand: diffusion or classifier");
  expect_one_line_error("",
                        "subcommand is required: info, sample, upsample, convert, demo, train, "
                        "eval, eval-classifier or sweep");
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

TEST_F(CliTest, OutputsNamingOneFileOrAnInputAreRefused) {
  // Each pair once overwrote one another (or the input) silently, the later write winning.
  const std::string a = path("a.json"), b = path("b.npy");
  expect_one_line_error("sample --out " + b + " --trajectory " + b,
                        "--out and --trajectory both write '" + b + "'");
  expect_one_line_error("sample --class 0 --out " + b + " --labels-out " + path("./b.npy"),
                        "--out and --labels-out both write");
  // The manifest beside x.npz is x.json.
  expect_one_line_error("sample --dim 2 --out " + path("x.json") + " --plot " + path("p.png") +
                            " --npz " + path("x.npz"),
                        "--out and the manifest beside --npz both write");
  expect_one_line_error("sample --out " + path("dir") + " --image-dir " + path("dir"),
                        "--out and --image-dir both write");
  EXPECT_FALSE(fs::exists(path("dir")));  // refused before the directory was made
  expect_one_line_error("sample --grid " + path("imgs/000001.png") + " --image-dir " + path("imgs"),
                        "is one of the files --image-dir writes");
  const std::string mixture =
      R"({"num_classes": 1, "weights": [1], "means": [[0, 0]], "covariances": [[[1, 0], [0, 1]]], "classes": [0]})";
  write_file_atomically(a, mixture);
  expect_one_line_error("sample --mixture " + a + " --out " + b + " --plot " + a,
                        "--plot '" + a + "' would overwrite --mixture, an input");
  EXPECT_EQ(read_file_bytes(a), mixture);
  expect_one_line_error(
      "eval-classifier --classifier " + path("c") + " --json " + a + " --plot " + a,
      "--json and --plot both write");
  expect_one_line_error("eval --samples " + a + " --json " + a,
                        "--json '" + a + "' would overwrite --samples");
  EXPECT_FALSE(fs::exists(b));
}

TEST_F(CliTest, FewStepSamplersAndGuidanceRulesRunFromTheCommandLine) {
  const std::string toy = "sample --steps 12 --num-samples 8 --class 0,1,2,3 ";
  CliResult result = run(toy + "--sampler dpmpp-2m --cfg-scale 2 --out " + path("scalar.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(read_npy(path("scalar.npy")).sizes(), torch::IntArrayRef({8, 2}));
  // Per-sample strengths: the same value for every sample is the scalar run, bit for bit.
  write_npy(path("w.npy"), torch::full({8}, 2.0f));
  result = run(toy + "--sampler dpmpp-2m --cfg-scale " + path("w.npy") + " --out " + path("file.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_TRUE(torch::equal(read_npy(path("scalar.npy")), read_npy(path("file.npy"))));
  for (const char* flags :
       {"--sampler unipc --time log-snr --cfg-scale 1", "--sampler euler --cfg-pp 0.6", "--sampler heun --s-churn 5",
        "--sampler dpmpp-3m --sigmas log-snr --cfg-scale 3 --apg --apg-threshold 2 --cfg-rescale 0.7",
        "--sampler ddim --classifier-scale 1 --guidance-interval-sigma 0.5,20 --dynamic-threshold 0.9",
        "--sampler dpmpp-2m-sde --sigmas timesteps"}) {
    SCOPED_TRACE(flags);
    result = run(toy + flags + " --out " + path("x.npy"));
    EXPECT_EQ(result.exit_code, 0) << result.err;
    EXPECT_TRUE(torch::isfinite(read_npy(path("x.npy"))).all().item<bool>());
  }
  const std::string out = " --out " + path("bad.npy");
  expect_one_line_error(toy + "--sigmas karras" + out, "--sigmas applies to the sigma-space samplers");
  expect_one_line_error(toy + "--sampler heun --cfg-pp 0.6" + out, "--cfg-pp");
  expect_one_line_error(toy + "--sampler euler --cfg-pp 0.6 --cfg-scale 1" + out, "not both");
  expect_one_line_error(toy + "--sampler dpmpp-2m --s-churn 1" + out, "--s-churn");
  expect_one_line_error(toy + "--sampler euler --apg-eta 1 --cfg-scale 1" + out, "--apg-eta needs --apg");
  expect_one_line_error(toy + "--cfg-scale abc" + out, "--cfg-scale 'abc'");
  expect_one_line_error(toy + "--cfg-scale " + path("absent.npy") + out, "absent.npy");
  expect_one_line_error(toy + "--guidance-interval 1,2 --guidance-interval-sigma 1,2" + out, "not both");
  expect_one_line_error(toy + "--cfg-scale 1 --guide-model " + path("g") + out, "--guide-model applies to --model");
  expect_one_line_error(toy + "--sampler ddim --time log-snr" + out, "--time");
  expect_one_line_error(toy + "--sampler unipc --sigmas geometric" + out, "geometric");
  EXPECT_FALSE(fs::exists(path("bad.npy")));
}

TEST_F(CliTest, BadNoiseFilesAreOneLineErrors) {
  write_npy(path("wrong_shape.npy"), torch::zeros({16, 3}));
  expect_one_line_error("sample --noise " + path("wrong_shape.npy") + " --out " + path("x.npy"), "[16, 3]");
  torch::Tensor nan_noise = torch::zeros({16, 2});
  nan_noise[3][1] = NAN;
  write_npy(path("nan.npy"), nan_noise);
  expect_one_line_error("sample --noise " + path("nan.npy") + " --out " + path("x.npy"), "NaN");
  write_file_atomically(path("garbage.npy"), "not numpy");
  expect_one_line_error("sample --noise " + path("garbage.npy") + " --out " + path("x.npy"), "garbage.npy");
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

TEST_F(CliTest, BadModelsAreOneLineErrorsNamingTheFile) {
  const std::string image = " --shape 1,4,4 --steps 5 --num-samples 2 --out " + path("x.npy");
  expect_one_line_error("sample --model " + path("missing.pt") + image, "missing.pt");
  expect_one_line_error("sample --model " + fixture_path("wrong_signature.pt") + image, "wrong_signature.pt");
  expect_one_line_error("sample --model " + fixture_path("wrong_output_shape.pt") + image, "wrong_output_shape.pt");
  expect_one_line_error("sample --model " + fixture_path("linear_conditional.pt") + image, "--num-classes");
  expect_one_line_error("sample --model " + fixture_path("linear_unconditional.pt") + " --sampler cfg-continuous" + image,
                        "log-SNR");
  expect_one_line_error("sample --model " + fixture_path("linear_unconditional.pt") + " --steps 5 --out " + path("x.npy"),
                        "--shape");
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

TEST_F(CliTest, BadThreadCountsAreOneLineErrors) {
  expect_one_line_error("--threads -2 info", "--threads");
  expect_one_line_error("--threads many info", "--threads");
  expect_one_line_error("info", "GUIDIFF_THREADS", "GUIDIFF_THREADS=lots");
  // Upper bounds: 100000 threads once stalled the machine, and --nproc 1000 forked 1000.
  expect_one_line_error("--threads 100000 info",
                        "--threads must be 1 to 1024 (or 0 for the default), got 100000");
  expect_one_line_error("info", "GUIDIFF_THREADS must be a whole number from 1 to 1024, got '5000'",
                        "GUIDIFF_THREADS=5000");
  expect_one_line_error("--nproc 100000 sample --out " + path("x.npy"), "--nproc must be 1 to ");
  expect_one_line_error("--nproc 0 sample --out " + path("x.npy"), "--nproc must be 1 to ");
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

// --conv and GUIDIFF_CONV choose the convolutions (the flag wins, auto by default); `info` says
// which, and a sample's manifest records it.
TEST_F(CliTest, ConvolutionChoiceComesFromTheFlagOrTheEnvironment) {
  EXPECT_NE(run("info").out.find("conv     auto: "), std::string::npos);
  EXPECT_NE(run("info", "GUIDIFF_CONV=direct").out.find("conv     direct: libtorch's convolutions"), std::string::npos);
  EXPECT_NE(run("--conv direct info").out.find("conv     direct: libtorch's convolutions"), std::string::npos);
  EXPECT_NE(run("info --conv winograd", "GUIDIFF_CONV=direct").out.find("conv     winograd: Winograd F(4x4,3x3)"),
            std::string::npos);
  expect_one_line_error("--conv fft info", "--conv");
  expect_one_line_error("info", "GUIDIFF_CONV", "GUIDIFF_CONV=fast");
  // GUIDIFF_WINOGRAD_PRODUCTS chooses where Winograd's matrix products run.
  EXPECT_NE(run("--conv winograd info", "GUIDIFF_WINOGRAD_PRODUCTS=blas").out.find("products by libtorch's BLAS"),
            std::string::npos);
  expect_one_line_error("info", "GUIDIFF_WINOGRAD_PRODUCTS", "GUIDIFF_WINOGRAD_PRODUCTS=mkl");
  for (const std::string conv : {"direct", "winograd"}) {
    ASSERT_EQ(run("--conv " + conv + " sample --steps 5 --num-samples 2 --out " + path("x.npy") + " --manifest " +
                  path("m.json")).exit_code, 0);
    EXPECT_EQ(nlohmann::json::parse(read_file_bytes(path("m.json"))).at("conv"), conv);
  }
}

TEST_F(CliTest, UnavailableDeviceIsAOneLineError) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "CUDA is available here";
  expect_one_line_error("--device cuda sample --model " + fixture_path("linear_unconditional.pt") +
                            " --shape 2 --steps 5 --out " + path("x.npy"),
                        "cuda");
}

// ---- training and sampling the trained models -------------------------------------------

// Ctrl-C saves a checkpoint and exits with 130, so a script that trains (the recipes) stops
// instead of copying unfinished weights. SIGINT goes in once the first log line shows the
// training loop running (the handler is installed before it).
TEST_F(CliTest, CtrlCDuringTrainingSavesACheckpointAndExitsWith130) {
  const std::string run_dir = path("run");
  const std::string script =
      "'" + std::string(GUIDIFF_CLI_PATH) + "' train diffusion --data mixture --mixture-size 500 --steps 10000000 "
      "--batch-size 16 --timesteps 100 --log-every 1 --out-dir '" + run_dir + "' </dev/null 2>'" + path("err.txt") +
      "' & pid=$!; tries=0; while [ ! -s '" + run_dir + "/log.jsonl' ] && [ $tries -lt 1200 ]; do sleep 0.1; "
      "tries=$((tries + 1)); done; kill -INT $pid; wait $pid; echo $?";
  const CliResult shell = run_shell(script);
  const std::string err = read_file_bytes(path("err.txt"));
  EXPECT_EQ(shell.out, "130\n") << err;
  EXPECT_NE(err.find("interrupted: checkpoint saved at step"), std::string::npos) << err;
  EXPECT_EQ(err.find("guidiff: error"), std::string::npos) << err;
  EXPECT_TRUE(fs::exists(run_dir + "/resume.safetensors"));
}

TEST_F(CliTest, TrainedCheckpointsSampleWithEveryGuidanceRule) {
  const std::string common = " --data mixture --mixture-size 2000 --steps 60 --batch-size 64 --timesteps 100 --lr 2e-3";
  const std::string mlp = R"({"kind": "mlp_denoiser", "hidden_channels": 32, "num_blocks": 1})";
  {
    std::ofstream(path("mlp.json")) << mlp;
  }
  CliResult result = run("train diffusion --conditional --p-uncond 0.2 --config " + path("mlp.json") + " --out-dir " +
                         path("denoiser") + common);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.err.find("trained to step 60"), std::string::npos) << result.err;
  for (const char* file : {"model.safetensors", "model.json", "raw.safetensors", "resume.safetensors", "log.jsonl"}) {
    EXPECT_TRUE(fs::exists(path("denoiser") + "/" + file)) << file;
  }
  result = run("train classifier --out-dir " + path("classifier") + common);
  ASSERT_EQ(result.exit_code, 0) << result.err;

  // The built-in mixture guided by the trained checkpoint classifier: it moves the samples
  // (against s = 0) and the model card describes it.
  const std::string toy =
      "sample --timesteps 100 --steps 10 --num-samples 8 --class 0,1 --classifier " +
      path("classifier");
  result = run(toy + " --classifier-scale 3 --out " + path("toy_cg.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto card = nlohmann::json::parse(read_file_bytes(path("toy_cg.model_card.json")));
  EXPECT_EQ(card.at("classifier").at("kind"), "mlp_classifier");
  EXPECT_GT(card.at("classifier").at("parameters").get<int64_t>(), 0);
  result = run(toy + " --classifier-scale 0 --out " + path("toy_unguided.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_FALSE(torch::allclose(read_npy(path("toy_cg.npy")), read_npy(path("toy_unguided.npy"))));
  // A classifier without a scale would be loaded and ignored; one for other samples is refused.
  expect_one_line_error(toy + " --out " + path("x.npy"), "needs --classifier-scale");
  expect_one_line_error(toy + " --classifier-scale 1 --dim 3 --out " + path("x.npy"),
                        "takes samples of shape [2]; the mixture's are [3]");

  // CFG on the conditional model, classifier guidance on its null class, and both.
  const std::string sample = "sample --timesteps 100 --steps 10 --num-samples 8 --class 0,1 --model " + path("denoiser");
  result = run(sample + " --cfg-scale 2 --out " + path("cfg.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(read_npy(path("cfg.npy")).sizes(), torch::IntArrayRef({8, 2}));
  result = run(sample + " --unconditional --classifier " + path("classifier") + " --classifier-scale 2 --out " +
               path("cg.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  result = run(sample + " --sampler ddpm --classifier " + path("classifier") +
               " --classifier-scale 1 --cfg-scale 1 --out " + path("both.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_FALSE(torch::equal(read_npy(path("cfg.npy")), read_npy(path("cg.npy"))));
  // Autoguidance by the model itself: eps~ = (1 + w) eps - w eps = eps, the conditional sample.
  result = run(sample + " --sampler dpmpp-2m --guide-model " + path("denoiser") + " --cfg-scale 1.5 --out " +
               path("auto.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  result = run(sample + " --sampler dpmpp-2m --out " + path("conditional.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_TRUE(torch::equal(read_npy(path("auto.npy")), read_npy(path("conditional.npy"))));

  // The same run directory again needs --resume; with it, training continues to --steps.
  expect_one_line_error("train diffusion --conditional --p-uncond 0.2 --config " + path("mlp.json") + " --out-dir " +
                            path("denoiser") + common,
                        "--resume");
  result = run("train diffusion --conditional --p-uncond 0.2 --resume --out-dir " + path("denoiser") +
               " --data mixture --mixture-size 2000 --steps 70 --batch-size 64 --timesteps 100 --lr 2e-3");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.err.find("resumed from step 60"), std::string::npos) << result.err;
}

TEST_F(CliTest, TrainedModelsKeepTheDataClassNamesAndSampleGridsShowThem) {
  // Two classes of four 8x8 images, in folders named after them.
  fs::create_directories(path("shades/dark"));
  fs::create_directories(path("shades/light"));
  write_png_images(path("shades/dark"), torch::full({4, 1, 8, 8}, -0.8));
  write_png_images(path("shades/light"), torch::full({4, 1, 8, 8}, 0.8));
  {
    std::ofstream(path("unet.json")) << R"({"kind": "unet", "model_channels": 8, "channel_mult": [1], )"
                                        R"("num_res_blocks": 1, "attention_resolutions": [], "norm_groups": 4})";
  }
  const std::string train = "train diffusion --data folder:" + path("shades") +
                            " --conditional --p-uncond 0.2 --batch-size 4 --timesteps 50 --out-dir " + path("run");
  CliResult result = run(train + " --config " + path("unet.json") + " --steps 2");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  for (const char* file : {"model.json", "raw.json"}) {
    const auto saved = nlohmann::json::parse(read_file_bytes(path("run") + "/" + file));
    EXPECT_EQ(saved.at("class_names"), nlohmann::json({"dark", "light"})) << file;
  }
  // The run's saved config, names and all, builds the network again on --resume.
  result = run(train + " --resume --steps 3");
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.err.find("resumed from step 2"), std::string::npos) << result.err;

  // Three samples of each class: a row of three per class, named from the model ("light": 5
  // glyphs, 29 px, plus gaps of 2 on each side: a margin of 33).
  result = run("sample --model " + path("run") + " --timesteps 50 --class 0,1 --num-samples 6 --steps 2 --grid " + path("g.png"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(png_size(path("g.png")), std::make_pair(33 + 3 * 10 + 2, 2 * 10 + 2));
  const auto card = nlohmann::json::parse(read_file_bytes(path("g.model_card.json")));
  EXPECT_EQ(card.at("model").at("class_names"), nlohmann::json({"dark", "light"}));
}

TEST_F(CliTest, DefaultNetworksFitTheImageSize) {
  // Without --config the UNets' levels and attention are fitted to the images: 28x28 once
  // failed on the 32x32 default's attention_resolutions [16], a field the user never wrote.
  for (const auto& [side, mult, attention] :
       {std::tuple<int64_t, nlohmann::json, nlohmann::json>{28, {1, 2, 2}, {7}},
        {30, {1, 2}, {15}},
        {32, {1, 2, 2}, {16}}}) {
    const std::string data = path("images" + std::to_string(side));
    for (const char* name : {"a", "b"}) {
      fs::create_directories(data + "/" + name);
      write_png_images(data + "/" + name, torch::rand({2, 1, side, side}) * 2 - 1);
    }
    const std::string run_dir = path("run" + std::to_string(side));
    const std::string task = side == 28 ? "diffusion" : "classifier";
    const CliResult result =
        run("train " + task + " --data folder:" + data + " --channels 1 --steps 1 --batch-size 2 " +
            "--timesteps 50 --log-every 0 --out-dir " + run_dir);
    ASSERT_EQ(result.exit_code, 0) << side << ": " << result.err;
    const auto config = nlohmann::json::parse(read_file_bytes(run_dir + "/model.json"));
    EXPECT_EQ(config.at("channel_mult"), mult) << side;
    EXPECT_EQ(config.at("attention_resolutions"), attention) << side;
  }
}

TEST_F(CliTest, BadTrainingRequestsAreOneLineErrors) {
  const std::string out = " --out-dir " + path("run");
  expect_one_line_error("train diffusion --data nowhere" + out, "--data");
  expect_one_line_error("train diffusion --data mnist:" + path("empty") + out, "empty");
  expect_one_line_error("train diffusion --data mixture --batch-size 0" + out, "--batch-size");
  expect_one_line_error("train diffusion --data mixture --p-uncond 2" + out, "--p-uncond");
  expect_one_line_error("train diffusion --data mixture --objective fancy" + out, "fancy");
  expect_one_line_error("train diffusion --data mixture --config " + path("missing.json") + out, "missing.json");
  {
    std::ofstream(path("unet.json")) << R"({"kind": "unet"})";
  }
  expect_one_line_error("train diffusion --data mixture --config " + path("unet.json") + out, "does not fit");
  expect_one_line_error("sample --model " + path("run") + " --steps 5 --out " + path("x.npy"), "run");
  EXPECT_FALSE(fs::exists(path("x.npy")));
}

// ---- sample outputs, eval and sweep ------------------------------------------------------

// The TorchScript run of TorchScriptConditionalModelWithCfgMatchesTheClosedForm, as files.
TEST_F(CliTest, SampleWritesNpzManifestAndSingleImages) {
  const CliResult result =
      run("sample --model " + fixture_path("linear_conditional.pt") + " --num-classes 3 --shape 1,4,4 "
          "--steps 10 --num-samples 6 --batch-size 4 --seed 11 --class 0,1,2 --cfg-scale 2 --npz " +
          path("x.npz") + " --image-dir " + path("images") + " --out " + path("x.npy"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const SampleBatchNpz batch = read_sample_batch_npz(path("x.npz"));
  EXPECT_EQ(batch.images.sizes(), (std::vector<int64_t>{6, 4, 4, 1}));
  EXPECT_TRUE(torch::equal(batch.labels, torch::tensor({0, 1, 2, 0, 1, 2}, torch::kLong)));
  EXPECT_TRUE(torch::equal(batch.images, images_to_uint8_nhwc(read_npy(path("x.npy")))));
  const auto manifest = nlohmann::json::parse(read_file_bytes(path("x.json")));
  EXPECT_EQ(manifest.at("seed"), 11);
  EXPECT_EQ(manifest.at("sampler"), "ddim");
  EXPECT_EQ(manifest.at("steps"), 10);
  EXPECT_EQ(manifest.at("steps_run"), 10);
  EXPECT_EQ(manifest.at("model_evaluations"), 10);
  EXPECT_EQ(manifest.at("guidance").at("cfg_scale"), 2.0);
  EXPECT_EQ(manifest.at("guidiff_version"), GUIDIFF_VERSION);
  EXPECT_EQ(png_size(path("images/000005.png")), std::make_pair(4, 4));
  EXPECT_FALSE(fs::exists(path("images/000006.png")));
  expect_one_line_error("sample --num-samples 4 --npz " + path("toy.npz"), "--npz needs image samples");
  // Without --steps the manifest says what ran: the respacing's 25 steps, and the sigma
  // samplers' default 50, where Heun calls the model twice a step but the last.
  for (const auto& [flags, steps, evaluations] :
       {std::tuple<std::string, int, int>{"--respacing ddim25", 25, 25},
        {"--sampler heun", 50, 99}}) {
    const CliResult toy = run("sample " + flags + " --num-samples 2 --out " + path("t.npy") +
                              " --manifest " + path("t.json"));
    ASSERT_EQ(toy.exit_code, 0) << toy.err;
    const auto json = nlohmann::json::parse(read_file_bytes(path("t.json")));
    EXPECT_EQ(json.at("steps"), 0) << flags;
    EXPECT_EQ(json.at("steps_run"), steps) << flags;
    EXPECT_EQ(json.at("model_evaluations"), evaluations) << flags;
  }
}

class EvalCliTest : public CliTest {
 protected:
  // A random cnn_classifier for side x side grey images and 3 classes, and a reference
  // folder of 3 classes x 8 images.
  void SetUp() override {
    CliTest::SetUp();
    torch::manual_seed(1);
    save_model(build_model({{"kind", "cnn_classifier"}, {"image_size", 8}, {"in_channels", 1}, {"channels", {8, 16}},
                            {"norm_groups", 4}, {"num_classes", 3}}),
               path("evaluator"));
    for (int c = 0; c < 3; ++c) {
      const std::string folder = path("reference/c" + std::to_string(c));
      fs::create_directories(folder);
      write_png_images(folder, torch::rand({8, 1, 8, 8}) * 2 - 1);
    }
    common_ = " --evaluator " + path("evaluator") + " --reference folder:" + path("reference") + " --cache-dir " +
              path("cache");
  }
  std::string common_;
};

TEST_F(EvalCliTest, EvalScoresAnNpzAndWritesJson) {
  write_sample_batch_npz(path("s.npz"), images_to_uint8_nhwc(torch::rand({12, 1, 8, 8}) * 2 - 1),
                         torch::arange(12, torch::kLong) % 3);
  const CliResult result = run("eval --samples " + path("s.npz") + common_ + " --json " + path("scores.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("FID"), std::string::npos) << result.out;
  EXPECT_NE(result.err.find("FID from only 12 feature vectors"), std::string::npos) << result.err;  // the warning
  const auto json = nlohmann::json::parse(read_file_bytes(path("scores.json")));
  EXPECT_EQ(json.at("count"), 12);
  EXPECT_EQ(json.at("reference_count"), 24);
  EXPECT_GE(json.at("fid").get<double>(), 0.0);
  EXPECT_GE(json.at("class_accuracy").get<double>(), 0.0);
  EXPECT_LE(json.at("class_accuracy").get<double>(), 1.0);
  // The cache exists now; a second run reads it and prints the same FID.
  const CliResult again = run("eval --samples " + path("s.npz") + common_ + " --json " + path("again.json"));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(again.err.find("computing reference"), std::string::npos) << again.err;
  EXPECT_EQ(nlohmann::json::parse(read_file_bytes(path("again.json"))).at("fid"), json.at("fid"));
}

TEST_F(EvalCliTest, FeatureCalibrationReadsAGreyFolderAsTheEvaluatorsImages) {
  // The folder's PNGs are grey, as the evaluator's images; scoring reads them so, and so must
  // --calibrate-features (it once read them as RGB and failed on the evaluator's shape).
  Model named = load_model(path("evaluator"));
  named.class_names = {"a", "b", "c"};
  save_model(named, path("evaluator"));
  const CliResult result = run("eval --calibrate-features --evaluator " + path("evaluator") +
                               " --data folder:" + path("reference"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_NE(result.out.find("feature_scales"), std::string::npos) << result.out;
  const auto calibrated = nlohmann::json::parse(read_file_bytes(path("evaluator.json")));
  EXPECT_TRUE(calibrated.contains("feature_scales"));
  // The rest of the file stays: it once kept the network's config alone, dropping the names.
  EXPECT_EQ(calibrated.at("class_names"), nlohmann::json({"a", "b", "c"}));
  // The modes that score nothing refuse the scoring flags, once dropped without a word.
  expect_one_line_error("eval --calibrate-features --evaluator " + path("evaluator") +
                            " --data folder:" + path("reference") + " --json " + path("j.json"),
                        "--json does not apply to --calibrate-features");
  expect_one_line_error("eval --write-reference " + path("r.npz") +
                            " --data folder:" + path("reference") + " --labels " + path("l.npy"),
                        "--labels does not apply to --write-reference");
  expect_one_line_error(
      "eval --samples " + path("s.npz") + common_ + " --features evaluator --inception-weights " +
          path("w.pt"),
      "--inception-weights applies to the Inception features, not --features evaluator");
  // --split chooses --data's images: with --samples it would be ignored, so it is refused.
  expect_one_line_error("eval --samples " + path("absent.npz") + " --split test" + common_,
                        "--split applies to --data");
}

TEST_F(EvalCliTest, EvalOfTheReferenceDataIsItsOwnFloor) {
  const CliResult result = run("eval --data folder:" + path("reference") + common_ + " --json " + path("j.json"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto json = nlohmann::json::parse(read_file_bytes(path("j.json")));
  // The same images' features (the float32 network per image; only row order and float64
  // sums differ, ~1e-16): FID ~1e-14, and the square root of a rank-deficient covariance's
  // rounding only lowers d into the clamp at 0. 1e-6 is slack; precision/recall count copies.
  EXPECT_NEAR(json.at("fid").get<double>(), 0.0, 1e-6);
  EXPECT_EQ(json.at("precision"), 1.0);
  EXPECT_EQ(json.at("recall"), 1.0);
}

TEST_F(EvalCliTest, EvalBadInputsAreOneLineErrors) {
  write_sample_batch_npz(path("small.npz"), images_to_uint8_nhwc(torch::zeros({12, 1, 6, 6})), {});
  expect_one_line_error("eval --samples " + path("small.npz") + common_, "takes [1, 8, 8]");
  write_file_atomically(path("broken.npz"), "PK\x03\x04 not really");
  expect_one_line_error("eval --samples " + path("broken.npz") + common_, "broken.npz");
  expect_one_line_error("eval" + common_, "exactly one of --samples");
  expect_one_line_error("eval --samples " + path("small.npz") + common_ + " --features " +
                            fixture_path("features_wrong_rank.pt"),
                        "features_wrong_rank.pt");
  expect_one_line_error("eval --samples " + path("small.npz") + " --evaluator " + path("nothing") +
                            " --reference folder:" + path("reference"),
                        "evaluator");
  EXPECT_FALSE(fs::exists(path("cache")));  // nothing half-written
  // --reference-stats naming a file that is not statistics (a mistyped data set, say): the
  // file is left as it was, and the run stops (it once was "recomputed" over).
  write_sample_batch_npz(path("s.npz"), images_to_uint8_nhwc(torch::zeros({12, 1, 8, 8})), {});
  write_file_atomically(path("precious.npy"), "my data");
  expect_one_line_error(
      "eval --samples " + path("s.npz") + common_ + " --reference-stats " + path("precious.npy"),
      "precious.npy' exists and is not usable statistics");
  EXPECT_EQ(read_file_bytes(path("precious.npy")), "my data");
  // A model of 10 classes against the 3-class evaluator: refused before sampling, by the
  // check (after sampling, class_accuracy itself would refuse the labels in other words).
  save_model(build_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                          {"norm_groups", 4}, {"num_classes", 10}}),
             path("unet10"));
  expect_one_line_error("eval --model " + path("unet10") + " --class 0,1,2,3,4,5,6,7,8,9 --num-samples 10 --steps 2" +
                            common_,
                        "tells 3 classes apart, so samples of the model's 10 classes cannot be scored");
  // The evaluator sees clean images only: as a guide it would steer by nonsense.
  expect_one_line_error(
      "sample --model " + path("unet10") + " --unconditional --classifier " + path("evaluator") +
          " --classifier-scale 1 --steps 2 --num-samples 2 --out " + path("x.npy"),
      "is a cnn_classifier of clean images");
}

TEST_F(EvalCliTest, SweepOverSamplersPlotsFidAgainstModelEvaluations) {
  torch::manual_seed(3);
  save_model(build_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                          {"norm_groups", 4}, {"num_classes", 3}}),
             path("unet"));
  const CliResult result = run("sweep --model " + path("unet") + " --samplers ddim,heun --cfg-scales 1 --steps 2,3 "
                               "--num-samples 12 --no-real-baseline --out-dir " + path("sweep") + common_);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  for (const char* file : {"plots/fid_vs_nfe_cfg.png", "plots/fid_vs_steps.png", "settings/heun_cfg_w1_steps3/grid.png",
                           "settings/ddim_cfg_w1_steps2/samples.npz", "grids/heun_cfg_steps2.png"}) {
    EXPECT_TRUE(fs::exists(path("sweep/") + file)) << file;
  }
  // Model evaluations are counted: heun makes 2N - 1 calls, ddim N.
  const std::string csv = read_file_bytes(path("sweep/results.csv"));
  EXPECT_NE(csv.find(",sampler,model_evaluations,near_black_fraction,seconds"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",heun,5,"), std::string::npos) << csv;
  EXPECT_NE(csv.find(",ddim,3,"), std::string::npos) << csv;
  EXPECT_NE(read_file_bytes(path("sweep/report.md")).find("heun, cfg w=1, 3 steps (5 NFE)"), std::string::npos);
  expect_one_line_error("sweep --model " + path("unet") + " --samplers ddim,lms --cfg-scales 1 --out-dir " + path("s3") +
                            common_,
                        "--samplers");
}

TEST_F(EvalCliTest, SweepGridsNameTheModelsClassesAndShowOnlyThoseAskedFor) {
  // 12 classes, named, and 10 samples: classes 10 and 11 are never asked for.
  torch::manual_seed(5);
  Model unet = build_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                            {"channel_mult", {1}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                            {"norm_groups", 4}, {"num_classes", 12}});
  for (int c = 0; c < 12; ++c) unet.class_names.push_back(std::string(static_cast<size_t>(c + 1), 'x'));
  save_model(unet, path("unet"));
  save_model(build_model({{"kind", "cnn_classifier"}, {"image_size", 8}, {"in_channels", 1}, {"channels", {8}},
                          {"norm_groups", 4}, {"num_classes", 12}}),
             path("evaluator12"));
  const CliResult result = run("sweep --model " + path("unet") + " --cfg-scales 0,1 --steps 2 --num-samples 10 "
                               "--no-real-baseline --out-dir " + path("sweep") + " --evaluator " + path("evaluator12") +
                               " --reference folder:" + path("reference") + " --cache-dir " + path("cache12"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  // Ten rows of 8x8 images at 10x (84 / 8) with 2 px padding, after the margin of the longest
  // name asked for: class 9's ten x's, 59 px at 2 px a font pixel (10 * 6 - 1 = 59 font pixels
  // would be 118), plus gaps of 4 on each side.
  // Refused before sampling: the 3-class evaluator cannot score 10 classes.
  expect_one_line_error("sweep --model " + path("unet") + " --cfg-scales 0 --steps 2 --num-samples 10 --no-real-baseline "
                        "--out-dir " + path("refused") + common_,
                        "tells 3 classes apart, so samples of the model's 10 classes cannot be scored");
  EXPECT_FALSE(fs::exists(path("refused/sweep.json")));
  const int name_margin = 2 * (10 * 6 - 1) + 2 * 2 * 2;
  // The strength grid also has the strengths on top: 7 font pixels and gaps of 4 above and below.
  EXPECT_EQ(png_size(path("sweep/grids/cfg_steps2.png")), std::make_pair(name_margin + 2 * 82 + 2, 22 + 10 * 82 + 2));
  EXPECT_EQ(png_size(path("sweep/settings/cfg_w1_steps2/grid.png")), std::make_pair(name_margin + 82 + 2, 10 * 82 + 2));
}

TEST_F(EvalCliTest, SweepGuidesTheConditionalModelWithTheClassifierOnRequest) {
  torch::manual_seed(4);
  const nlohmann::json unet = {{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                               {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                               {"norm_groups", 4}, {"num_classes", 3}};
  // Both networks' output layers start at zero (eps = 0 whatever the class; no classifier
  // gradient): random weights everywhere make the class and the guidance matter.
  const auto randomize = [](const Model& model) {
    torch::NoGradGuard no_grad;
    for (torch::Tensor& parameter : model.module->parameters()) parameter.add_(torch::randn_like(parameter) * 0.3);
    return model;
  };
  save_model(randomize(build_model(unet)), path("unet"));
  const Model classifier =
      build_model({{"kind", "encoder_unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                   {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                   {"norm_groups", 4}, {"pool", "adaptive"}, {"num_classes", 3}});
  save_model(randomize(classifier), path("classifier"));
  const std::string args = "sweep --model " + path("unet") + " --classifier " + path("classifier") +
                           " --classifier-scales 3 --conditional-classifier-scales 0,3 --cfg-scales 0 --steps 2 "
                           "--num-samples 12 --no-real-baseline --out-dir " + path("sweep") + common_;
  const CliResult result = run(args);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto images = [&](const std::string& setting) {
    return read_sample_batch_npz(path("sweep/settings/" + setting + "/samples.npz")).images;
  };
  // Unguided, the conditional model given the requested class is CFG at w = 0, pixel for pixel.
  EXPECT_TRUE(torch::equal(images("classifier-cond_s0_steps2"), images("cfg_w0_steps2")));
  // Guided, it starts from the same x_T as the null-class run but follows the class's eps.
  EXPECT_FALSE(torch::equal(images("classifier-cond_s3_steps2"), images("classifier_s3_steps2")));
  EXPECT_FALSE(torch::equal(images("classifier-cond_s3_steps2"), images("cfg_w0_steps2")));
  EXPECT_TRUE(fs::exists(path("sweep/grids/classifier-cond_steps2.png")));
  const std::string csv = read_file_bytes(path("sweep/results.csv"));
  EXPECT_NE(csv.find("\nclassifier-cond,3,2,12,"), std::string::npos) << csv;
  EXPECT_NE(read_file_bytes(path("sweep/report.md")).find("classifier-cond s=3, 2 steps"), std::string::npos);

  expect_one_line_error("sweep --model " + path("unet") + " --conditional-classifier-scales 1 --out-dir " + path("s2") +
                            common_,
                        "--conditional-classifier-scales needs --classifier");
  nlohmann::json unconditional = unet;
  unconditional.erase("num_classes");
  save_model(build_model(unconditional), path("uncond"));
  expect_one_line_error("sweep --model " + path("uncond") + " --classifier " + path("classifier") +
                            " --conditional-classifier-scales 1 --out-dir " + path("s3") + common_,
                        "needs a class-conditional --model");
  expect_one_line_error("sweep --model " + path("uncond") + " --cfg-scales 0 --out-dir " + path("s4") + common_,
                        "is unconditional: sweeping it needs --classifier");
  // Refused before the directory was claimed: the corrected command is not refused for it.
  EXPECT_FALSE(fs::exists(path("s4/sweep.json")));
}

TEST_F(EvalCliTest, SweepWritesEverySettingPlotsGridsAndReportAndResumes) {
  torch::manual_seed(2);
  save_model(build_model({{"kind", "unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                          {"norm_groups", 4}, {"num_classes", 3}}),
             path("unet"));
  save_model(build_model({{"kind", "encoder_unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                          {"norm_groups", 4}, {"pool", "adaptive"}, {"num_classes", 3}}),
             path("classifier"));
  const std::string args = "sweep --model " + path("unet") + " --classifier " + path("classifier") +
                           " --classifier-scales 0,2 --cfg-scales 0:1:1 --steps 2,3 --num-samples 12 --batch-size 5 "
                           "--out-dir " + path("sweep") + common_;
  const CliResult result = run(args);
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const std::string csv = read_file_bytes(path("sweep/results.csv"));
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 1 + 8) << csv;
  for (const char* file : {"plots/fid_vs_is.png", "plots/precision_recall.png", "plots/accuracy_vs_strength.png",
                           "plots/fid_vs_steps.png", "report.md", "report.html", "results.json",
                           "settings/cfg_w1_steps3/samples.npz", "settings/classifier_s2_steps2/grid.png"}) {
    EXPECT_TRUE(fs::exists(path("sweep/") + file)) << file;
  }
  // rows = 3 classes, columns = 2 strengths, 8 px images drawn 10x (80 px) with 2 px padding,
  // under a top margin of strength labels (7 font pixels of 2 px plus 4 px gaps: 22 px) and
  // beside a left margin of class names.
  const auto [grid_width, grid_height] = png_size(path("sweep/grids/cfg_steps2.png"));
  EXPECT_EQ(grid_height, 22 + 3 * (80 + 2) + 2);
  EXPECT_GT(grid_width, 2 * (80 + 2) + 2);
  const std::string report = read_file_bytes(path("sweep/report.md"));
  EXPECT_NE(report.find("cfg w=1, 3 steps"), std::string::npos) << report;
  EXPECT_NE(report.find("real"), std::string::npos);
  EXPECT_NE(report.find("not comparable to Inception"), std::string::npos);
  // The same x_T in every setting: unguided classifier-method samples ignore the label, so
  // s = 0 at 2 steps is one set of images whatever the class asked.
  const SampleBatchNpz cfg0 = read_sample_batch_npz(path("sweep/settings/cfg_w0_steps2/samples.npz"));
  EXPECT_EQ(cfg0.images.size(0), 12);

  // Interrupted: one setting lost. The rerun redoes only that one, with the same result.
  fs::remove(path("sweep/settings/cfg_w1_steps3/scores.json"));
  const CliResult resumed = run(args);
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  size_t skipped = 0;
  for (size_t at = 0; (at = resumed.err.find("already done", at)) != std::string::npos; ++at) ++skipped;
  EXPECT_EQ(skipped, 7u) << resumed.err;
  const auto columns_without_seconds = [](const std::string& text) {
    std::string out;
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) out += line.substr(0, line.rfind(',')) + "\n";
    return out;
  };
  EXPECT_EQ(columns_without_seconds(read_file_bytes(path("sweep/results.csv"))), columns_without_seconds(csv));
  // Another request in the same directory is refused, not mixed in.
  expect_one_line_error(
      "sweep --model " + path("unet") + " --classifier " + path("classifier") +
          " --classifier-scales 0,2 --cfg-scales 0:1:1 --steps 2,3 --num-samples 11 --out-dir " +
          path("sweep") + common_,
      "num_samples");
  // Flags no setting would read are refused, not silently dropped.
  expect_one_line_error(
      "sweep --model " + path("unet") + " --classifier " + path("classifier") +
          " --cfg-scales 1 --out-dir " + path("s5") + common_,
      "--classifier is used by --classifier-scales and --conditional-classifier-scales");
  expect_one_line_error("sweep --model " + path("unet") +
                            " --sampler euler --eta 0.5 --cfg-scales 1 --out-dir " + path("s5") +
                            common_,
                        "--eta applies to the ddim sampler");
  expect_one_line_error("sweep --model " + path("unet") +
                            " --sigmas karras --cfg-scales 1 --out-dir " + path("s5") + common_,
                        "--sigmas applies to the sigma-space samplers");
  expect_one_line_error("sweep --model " + path("unet") + " --cfg-scales 0:1e6:0.001 --out-dir " +
                            path("s5") + common_,
                        "has more than 1000 values");
  EXPECT_FALSE(fs::exists(path("s5/sweep.json")));
  // A classifier retrained under the same path: its results are not reused.
  save_model(build_model({{"kind", "encoder_unet"}, {"image_size", 8}, {"in_channels", 1}, {"model_channels", 8},
                          {"channel_mult", {1, 2}}, {"num_res_blocks", 1}, {"attention_resolutions", std::vector<int>{}},
                          {"norm_groups", 4}, {"pool", "adaptive"}, {"num_classes", 3}}),
             path("classifier"));
  expect_one_line_error(args, "holds a sweep made with other network files");
  expect_one_line_error("sweep --model " + path("unet") + " --classifier-scales 1 --out-dir " + path("s2") + common_,
                        "--classifier-scales needs --classifier");
}


// ---- guided-diffusion's models (tests/data/guided_diffusion) -------------------------------

class GuidedDiffusionCliTest : public CliTest {
 protected:
  static std::string data(const std::string& name) { return std::string(GUIDIFF_TEST_DATA_DIR) + "/guided_diffusion/" + name; }
  static std::string metadata(const std::string& key) {
    return load_safetensors(data("reference.safetensors")).metadata.at(key);
  }
  // A tiny reference case's network config as a file, for --model-config.
  std::string config_file(const std::string& name) const {
    write_file_atomically(path(name + ".json"), metadata("config." + name));
    return path(name + ".json");
  }
};

TEST_F(GuidedDiffusionCliTest, SamplesFromAPtFileWithItsFlagsAndConvertsIt) {
  const std::string flags = metadata("flags.adm64");
  const std::string sampling = " --timestep_respacing ddim3 --use_ddim True --num_samples 3 --batch_size 2 --seed 5";
  const CliResult sampled = run("sample --model_path " + data("adm64.pt") + " --model-flags '" + flags + "'" + sampling +
                                " --npz " + path("a.npz"));
  ASSERT_EQ(sampled.exit_code, 0) << sampled.err;
  // The CLI's run is generate() on the model the flags describe, with the model's cosine
  // schedule and guided-diffusion's clipping.
  const Model model = load_guided_diffusion_model(data("adm64.pt"), GuidedDiffusionFlags::parse(flags, "test"),
                                                  GuidedDiffusionRole::diffusion);
  GenerationConfig config;
  config.sampler = SamplerKind::ddim;
  config.schedule = BetaScheduleKind::cosine;
  config.respacing = "ddim3";
  config.clip_x0 = true;
  config.num_samples = 3;
  config.seed = 5;
  config.sample_shape = {3, 16, 16};
  const auto expected = generate(model.denoiser, nullptr, config, {}, {});
  const auto written = read_sample_batch_npz(path("a.npz"));
  EXPECT_TRUE(torch::equal(written.images, images_to_uint8_nhwc(expected.samples)));
  const auto card = nlohmann::json::parse(read_file_bytes(path("a.model_card.json")));
  EXPECT_EQ(card.at("model").at("origin").at("project"), "openai/guided-diffusion");
  EXPECT_EQ(card.at("model").at("diffusion").at("noise_schedule"), "cosine");
  EXPECT_EQ(card.at("sampling").at("respacing"), "ddim3");

  // Converted once, the checkpoint needs no flags and gives the same samples.
  const CliResult converted = run("convert " + data("adm64.pt") + " --model-flags '" + flags + "' --out " + path("converted"));
  ASSERT_EQ(converted.exit_code, 0) << converted.err;
  EXPECT_NE(converted.out.find("peak RSS"), std::string::npos) << converted.out;
  const CliResult again = run("sample --model " + path("converted") + sampling + " --npz " + path("b.npz"));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(read_file_bytes(path("a.npz")), read_file_bytes(path("b.npz")));
}

TEST_F(GuidedDiffusionCliTest, UpsamplesBaseSamplesWithTheirLabels) {
  // Base samples in guided-diffusion's layout: 8x8 images and classes.
  const auto pixels = torch::randint(0, 256, {3, 8, 8, 3}, torch::TensorOptions().dtype(torch::kUInt8));
  write_sample_batch_npz(path("base.npz"), pixels, torch::tensor({1, 4, 6}, torch::kLong));
  const std::string model = " --model " + data("upsampler.pt") + " --model-config " + config_file("upsampler");
  const CliResult result = run("upsample" + model + " --base-samples " + path("base.npz") +
                               " --timestep_respacing 2 --use_ddim False --npz " + path("up.npz"));
  ASSERT_EQ(result.exit_code, 0) << result.err;
  const auto up = read_sample_batch_npz(path("up.npz"));
  EXPECT_EQ(up.images.sizes(), (std::vector<int64_t>{3, 16, 16, 3}));
  EXPECT_TRUE(torch::equal(up.labels, torch::tensor({1, 4, 6}, torch::kLong)));
  EXPECT_TRUE(fs::exists(path("up.model_card.json")));
  // Under --bf16 the upsampler runs channels-last from its first convolution on (its input, the
  // noisy image beside the upsampled low-resolution one, is NCHW).
  const CliResult bf16 =
      run("upsample" + model + " --base-samples " + path("base.npz") +
          " --timestep_respacing 2 --use_ddim False --bf16 --npz " + path("up16.npz"));
  ASSERT_EQ(bf16.exit_code, 0) << bf16.err;
  const auto up16 = read_sample_batch_npz(path("up16.npz"));
  EXPECT_EQ(up16.images.sizes(), up.images.sizes());
  EXPECT_TRUE(torch::equal(up16.labels, up.labels));

  expect_one_line_error("sample" + model + " --npz " + path("x.npz"), "use guidiff upsample");
  write_sample_batch_npz(path("big.npz"), torch::zeros({2, 16, 16, 3}, torch::kUInt8), torch::tensor({1, 2}, torch::kLong));
  expect_one_line_error("upsample" + model + " --base-samples " + path("big.npz") + " --npz " + path("y.npz"),
                        "takes 8x8");
}

TEST_F(GuidedDiffusionCliTest, BadFlagsAndRequestsAreOneLineErrors) {
  const std::string pt = " --model " + data("adm64.pt");
  expect_one_line_error("sample" + pt + " --model-flags '--num_channel 32' --npz " + path("a.npz"),
                        "did you mean --num_channels");
  expect_one_line_error("sample" + pt + " --model-flags '" + metadata("flags.adm64") +
                            "' --use_ddim True --sampler ddpm --npz " + path("a.npz"),
                        "--sampler contradicts --use_ddim True");
  expect_one_line_error("sample" + pt + " --model-flags '" + metadata("flags.adm64") +
                            " --noise_schedule linear' --npz " + path("a.npz"),
                        "noise_schedule is given twice");
  expect_one_line_error("sample --model " + data("adm128.pt") + " --model-config " + config_file("adm128") +
                            " --cfg-scale 2 --class 1 --npz " + path("a.npz"),
                        "null class");
  expect_one_line_error("sample" + pt + " --model-flags '" + metadata("flags.adm64") + "' --schedule linear --npz " +
                            path("a.npz"),
                        "contradicts the model's cosine schedule");
  expect_one_line_error("convert " + data("pt/bad_truncated.pt") + " --model-flags '" + metadata("flags.adm64") +
                            "' --out " + path("c"),
                        "bad_truncated.pt");
}

}  // namespace

TEST_F(CliTest, EvalWithInceptionNeedsItsWeightsAndSaysHowToGetThem) {
  write_sample_batch_npz(path("s.npz"), torch::zeros({2, 8, 8, 3}, torch::kUInt8), {});
  const std::string base = "eval --features inception --samples '" + path("s.npz") + "' --cache-dir '" + path("cache") + "'";
  expect_one_line_error(base, "curl -L --create-dirs -o", "GUIDIFF_INCEPTION_WEIGHTS=");
  expect_one_line_error(base + " --inception-weights '" + path("none.pth") + "'", "none.pth' does not exist");
  expect_one_line_error("eval --write-reference '" + path("r.npz") + "' --samples '" + path("s.npz") + "'",
                        "--write-reference takes the images of --data", "GUIDIFF_INCEPTION_WEIGHTS=");
}

// End to end with pytorch-fid's weight file as it would be with the formula weights of
// tests/fixtures/make_inception_fixture.py: FID and sFID between its two image sets must be
// PyTorch's, whether the reference is a batch of images or a batch written by
// --write-reference from an image folder (with its statistics). Tolerance: test_fid_inception.
TEST_F(CliTest, EvalWithInceptionGivesPyTorchsFidAndSfidAndWritesReferenceBatches) {
  const std::string weights = path("formula.pth");
  guidiff::testing::write_formula_weights_file(weights);
  const NamedArrays fixture = read_npz(std::string(GUIDIFF_TEST_DATA_DIR) + "/fid_inception_formula.npz");
  const auto array = [&](const std::string& name) { return npz_array(fixture, name, "fid_inception_formula.npz"); };
  const double fid = array("fid").item<double>(), sfid = array("sfid").item<double>();
  write_sample_batch_npz(path("a.npz"), array("images_a"), {});
  write_sample_batch_npz(path("b.npz"), array("images_b"), {});
  const std::string inception = " --features inception --inception-weights '" + weights + "' --cache-dir '" + path("cache") + "'";

  const CliResult scored = run("eval --samples '" + path("a.npz") + "' --reference '" + path("b.npz") + "' --json '" +
                               path("ab.json") + "'" + inception, "GUIDIFF_INCEPTION_WEIGHTS=");
  ASSERT_EQ(scored.exit_code, 0) << scored.err;
  EXPECT_NE(scored.out.find("sFID"), std::string::npos) << scored.out;
  EXPECT_NE(scored.out.find("FID Inception-v3"), std::string::npos) << scored.out;
  const nlohmann::json ab = nlohmann::json::parse(read_file_bytes(path("ab.json")));
  EXPECT_NEAR(ab.at("fid").get<double>(), fid, 1e-4 * fid);
  EXPECT_NEAR(ab.at("sfid").get<double>(), sfid, 1e-4 * sfid);
  EXPECT_GE(ab.at("precision").get<double>(), 0.0);
  EXPECT_EQ(ab.at("neighbour_count").get<int64_t>(), 6);

  // Set b as an image folder (two classes of three), written as a reference batch.
  const torch::Tensor images_b = uint8_nhwc_to_images(array("images_b"));
  fs::create_directories(path("folder/c0"));
  fs::create_directories(path("folder/c1"));
  write_png_images(path("folder/c0"), images_b.slice(0, 0, 3));
  write_png_images(path("folder/c1"), images_b.slice(0, 3, 6));
  const CliResult written = run("eval --write-reference '" + path("ref.npz") + "' --data 'folder:" + path("folder") + "'" +
                                inception, "GUIDIFF_INCEPTION_WEIGHTS=");
  ASSERT_EQ(written.exit_code, 0) << written.err;
  const ReferenceBatch reference = read_reference_batch(path("ref.npz"));
  EXPECT_TRUE(torch::equal(reference.images, array("images_b")));
  EXPECT_TRUE(torch::equal(reference.labels, torch::tensor({0, 0, 0, 1, 1, 1}, torch::kLong)));
  const FeatureStatistics pool = feature_statistics(array("pool3_b"));
  ASSERT_TRUE(reference.pool_statistics.mean.defined());
  ASSERT_TRUE(reference.spatial_statistics.mean.defined());
  const double mean_scale = pool.mean.abs().max().item<double>();
  EXPECT_LT((reference.pool_statistics.mean - pool.mean).abs().max().item<double>(), 1e-4 * mean_scale);
  EXPECT_EQ(reference.spatial_statistics.mean.size(0), 2023);

  const CliResult against_batch = run("eval --samples '" + path("a.npz") + "' --reference '" + path("ref.npz") +
                                      "' --json '" + path("ref.json") + "'" + inception, "GUIDIFF_INCEPTION_WEIGHTS=");
  ASSERT_EQ(against_batch.exit_code, 0) << against_batch.err;
  const nlohmann::json with_statistics = nlohmann::json::parse(read_file_bytes(path("ref.json")));
  EXPECT_NEAR(with_statistics.at("fid").get<double>(), fid, 1e-4 * fid);
  EXPECT_NEAR(with_statistics.at("sfid").get<double>(), sfid, 1e-4 * sfid);
}
