// The bad-flag matrix: every flag of every subcommand, as `guidiff --list-options` lists them,
// given a value of the wrong type, out of range, a missing file or a file of the wrong kind,
// on top of a small command that works. Each must end with exit status 2 and one line
// "guidiff: error: ..." naming the flag or the value, never a crash, a stack trace or a run
// that ignores the value. scripts/bad_flags.sh runs it and prints the whole table.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"

namespace fs = std::filesystem;

namespace {

struct CliRun {
  int exit_code = -1;  // -1: killed by a signal
  std::string err;
};

CliRun run_cli(const std::string& args, const fs::path& scratch) {
  const fs::path err_file = scratch / "stderr.txt";
  const std::string command = "cd '" + scratch.string() + "' && '" + GUIDIFF_CLI_PATH + "' " + args +
                              " </dev/null >/dev/null 2>'" + err_file.string() + "'";
  const int status = std::system(command.c_str());
  CliRun run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.err = guidiff::read_file_bytes(err_file.string());
  return run;
}

struct OptionInfo {
  std::string command, option, type;
  bool flag = false;
};

// What a text option holds, which decides its bad values.
enum class TextKind { input_file, model, output_file, output_dir, choice, list, data_spec };

// Every text option, by name (the same name means the same kind in every subcommand), or by
// "<command> <name>" where a subcommand differs. A flag missing here fails the test: a new
// flag needs its bad values.
const std::map<std::string, TextKind> kTextKinds = {
    {"--model", TextKind::model},           {"--classifier", TextKind::model},
    {"--evaluator", TextKind::model},       {"--features", TextKind::input_file},
    {"--config", TextKind::input_file},     {"--noise", TextKind::input_file},
    {"--labels", TextKind::input_file},     {"--samples", TextKind::input_file},
    {"--mixture", TextKind::input_file},    {"--reference-stats", TextKind::output_file},
    {"--out", TextKind::output_file},       {"--labels-out", TextKind::output_file},
    {"--plot", TextKind::output_file},      {"--grid", TextKind::output_file},
    {"--trajectory", TextKind::output_file}, {"--npz", TextKind::output_file},
    {"--manifest", TextKind::output_file},  {"--json", TextKind::output_file},
    {"--image-dir", TextKind::output_dir},  {"--out-dir", TextKind::output_dir},
    {"--cache-dir", TextKind::output_dir},  {"--sampler", TextKind::choice},
    {"--schedule", TextKind::choice},       {"--variance", TextKind::choice},
    {"--time", TextKind::choice},           {"--objective", TextKind::choice},
    {"--split", TextKind::choice},          {"--reference-split", TextKind::choice},
    {"--device", TextKind::choice},         {"--shape", TextKind::list},
    {"--respacing", TextKind::list},        {"--guidance-interval", TextKind::list},
    {"--class", TextKind::list},            {"--classifier-scales", TextKind::list},
    {"--cfg-scales", TextKind::list},       {"sweep --steps", TextKind::list},
    {"--data", TextKind::data_spec},        {"--reference", TextKind::data_spec},
};

// Numeric flags for which -1 is a meaningful value (so not out of range).
const std::set<std::string> kNegativeAllowed = {"--classifier-scale", "--cfg-scale"};

// A small working command per subcommand; {T} is the case's scratch directory, {F} the
// fixtures shared by all cases. Some flags only act with a model, so they get their own base.
const std::map<std::string, std::string> kBases = {
    {"", "sample --num-samples 4 --steps 3 --out {T}/x.npy"},  // global flags
    {"info", "info"},
    {"sample", "sample --num-samples 4 --steps 3 --out {T}/x.npy"},
    {"demo", "demo --out-dir {T}/demo --num-samples 8 --steps 3"},
    {"train diffusion", "train diffusion --data mixture --mixture-size 64 --batch-size 8 --steps 2 --out-dir {T}/run"},
    {"train classifier", "train classifier --data mixture --mixture-size 64 --batch-size 8 --steps 2 --out-dir {T}/run"},
    {"eval", "eval --samples {F}/samples.npz --evaluator " GUIDIFF_SOURCE_DIR "/models/fashion-mnist/evaluator "
             "--cache-dir {F}/cache"},
    {"eval model", "eval --model " GUIDIFF_SOURCE_DIR "/models/fashion-mnist/cfg_unet --num-samples 4 --steps 2 "
                   "--evaluator " GUIDIFF_SOURCE_DIR "/models/fashion-mnist/evaluator --cache-dir {F}/cache"},
    {"sweep", "sweep --model " GUIDIFF_SOURCE_DIR "/models/fashion-mnist/cfg_unet --cfg-scales 0 --steps 2 "
              "--num-samples 10 --no-real-baseline --evaluator " GUIDIFF_SOURCE_DIR "/models/fashion-mnist/evaluator "
              "--out-dir {T}/sweep --cache-dir {F}/cache"},
};

// eval's sampling flags act only with --model.
const std::set<std::string> kEvalModelFlags = {"--model", "--classifier", "--mixture", "--dim", "--shape", "--num-classes",
                                               "--time", "--sampler", "--respacing", "--steps", "--eta", "--schedule",
                                               "--timesteps", "--clip", "--no-clip", "--variance", "--class",
                                               "--unconditional", "--classifier-scale", "--cfg-scale",
                                               "--variance-exponent", "--guidance-interval", "--bf16", "--seed",
                                               "--batch-size", "--num-samples", "--noise"};

struct Case {
  std::string command, option, value, why;
  std::string base;
};

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

std::string quoted(const std::string& value) { return "'" + value + "'"; }

// `base` without `option` and its value, if it has them: the case gives the option instead
// (CLI11 refuses an option given twice, which would pass a case for the wrong reason).
std::string without_option(const std::string& base, const std::string& option, bool flag) {
  std::istringstream words(base);
  std::string out, word;
  while (words >> word) {
    if (word == option) {
      if (!flag) words >> word;  // its value
      continue;
    }
    out += (out.empty() ? "" : " ") + word;
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> bad_values(const OptionInfo& option, TextKind kind) {
  (void)option;
  switch (kind) {
    case TextKind::input_file:
      return {{"{T}/missing.json", "missing file"}, {"{F}/a-directory", "a directory"}, {"{F}/image.png", "wrong kind of file"}};
    case TextKind::model:
      return {{"{T}/missing-model", "missing file"}, {"{F}/a-directory", "a directory without a model"},
              {"{F}/image.png", "wrong kind of file"}};
    case TextKind::output_file:
      return {{"{T}/no-such-dir/out.bin", "directory missing"}, {"{F}/a-directory", "a directory"}};
    case TextKind::output_dir:
      return {{"{F}/image.png/sub", "under a regular file"}};
    case TextKind::choice:
      return {{"bogus", "unknown choice"}};
    case TextKind::list:
      return {{"1,,x", "malformed list"}};
    case TextKind::data_spec:
      return {{"bogus-set", "unknown data set"}, {"folder:{T}/missing", "missing folder"},
              {"mnist:{F}/a-directory", "a directory without the files"}, {"mixture:{F}/image.png", "wrong kind of file"}};
  }
  return {};
}

std::vector<Case> build_cases(const std::vector<OptionInfo>& options, std::vector<std::string>& unclassified) {
  std::vector<Case> cases;
  for (const OptionInfo& option : options) {
    if (option.option == "--help" || option.option == "--version" || option.option == "--list-options") continue;
    std::string base_key = option.command;
    if (option.command == "eval" && kEvalModelFlags.count(option.option) > 0) base_key = "eval model";
    if (kBases.count(base_key) == 0) {
      unclassified.push_back(option.command + " (no base command)");
      continue;
    }
    const std::string base = without_option(kBases.at(base_key), option.option, option.flag);
    const auto add = [&](const std::string& value, const std::string& why) {
      cases.push_back({option.command, option.option, value, why, base});
    };
    if (option.flag) {
      add("=maybe", "not a boolean");
      continue;
    }
    // Every numeric flag gets the same one check (check_numeric_options), so the matrix gives
    // each a wrong type, an overflow and -1; NumbersAreDecimalFiniteAndInRange below goes
    // through every other malformed spelling on one flag of each type.
    if (option.type == "INT") {
      add("abc", "wrong type");
      add("99999999999999999999", "out of range (overflow)");
      if (kNegativeAllowed.count(option.option) == 0) add("-1", "out of range");
      continue;
    }
    if (option.type == "UINT") {
      add("abc", "wrong type");
      add("-1", "out of range (negative)");
      continue;
    }
    if (option.type == "FLOAT") {
      add("abc", "wrong type");
      add("inf", "out of range (not finite)");
      if (kNegativeAllowed.count(option.option) == 0) add("-1", "out of range");
      continue;
    }
    auto kind = kTextKinds.find(option.command + " " + option.option);
    if (kind == kTextKinds.end()) kind = kTextKinds.find(option.option);
    if (kind == kTextKinds.end()) {
      unclassified.push_back(option.command + " " + option.option + " (" + option.type + ")");
      continue;
    }
    for (const auto& [value, why] : bad_values(option, kind->second)) add(value, why);
  }
  return cases;
}

std::vector<OptionInfo> list_options(const fs::path& scratch) {
  const std::string out = (scratch / "options.jsonl").string();
  const std::string command = "'" + std::string(GUIDIFF_CLI_PATH) + "' --list-options >'" + out + "'";
  EXPECT_EQ(std::system(command.c_str()), 0);
  std::vector<OptionInfo> options;
  std::istringstream lines(guidiff::read_file_bytes(out));
  for (std::string line; std::getline(lines, line);) {
    const auto json = nlohmann::json::parse(line);
    options.push_back({json.at("command"), json.at("option"), json.at("type"), json.at("flag")});
  }
  return options;
}

class BadFlags : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string pattern = (fs::temp_directory_path() / "guidiff-bad-flags-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    fixtures_ = pattern;
    fs::create_directories(fixtures_ / "a-directory");
    guidiff::ImageGridOptions single;
    single.nrow = 1;
    single.padding = 0;
    guidiff::write_png_grid((fixtures_ / "image.png").string(), torch::zeros({1, 1, 8, 8}), single);
    guidiff::write_sample_batch_npz((fixtures_ / "samples.npz").string(),
                                    torch::randint(0, 256, {4, 28, 28, 1}, torch::kUInt8), torch::tensor({0, 1, 2, 3}));
  }
  static void TearDownTestSuite() { fs::remove_all(fixtures_); }

  std::string expand(const std::string& text, const fs::path& scratch) const {
    return replace_all(replace_all(text, "{T}", scratch.string()), "{F}", fixtures_.string());
  }

  static fs::path fixtures_;
};

fs::path BadFlags::fixtures_;

TEST_F(BadFlags, EveryBaseCommandWorks) {
  // Without this the matrix would prove nothing: a case must fail because of its one value.
  for (const auto& [name, base] : kBases) {
    const fs::path scratch = fixtures_ / ("base-" + std::to_string(std::hash<std::string>()(name)));
    fs::create_directories(scratch);
    const CliRun run = run_cli(expand(base, scratch), scratch);
    EXPECT_EQ(run.exit_code, 0) << name << ": guidiff " << expand(base, scratch) << "\n" << run.err;
  }
}

TEST_F(BadFlags, EveryFlagRejectsBadValuesWithOneLineAndExitStatus2) {
  const std::vector<OptionInfo> options = list_options(fixtures_);
  ASSERT_GT(options.size(), 50u);
  std::vector<std::string> unclassified;
  const std::vector<Case> cases = build_cases(options, unclassified);
  EXPECT_TRUE(unclassified.empty()) << "flags without bad values (add them to kTextKinds): " << ::testing::PrintToString(unclassified);

  // Two at a time: each case is a process that loads libtorch.
  std::vector<std::string> table(cases.size());
  std::vector<std::string> failures(cases.size());
  std::atomic<size_t> next{0};
  const auto worker = [&] {
    for (size_t i; (i = next++) < cases.size();) {
      const Case& c = cases[i];
      const fs::path scratch = fixtures_ / ("case-" + std::to_string(i));
      fs::create_directories(scratch);
      const std::string value = expand(c.value, scratch);
      const std::string args = expand(c.base, scratch) + " " + c.option + (c.value[0] == '=' ? value : " " + quoted(value));
      const CliRun run = run_cli(args, scratch);
      const std::string line = run.err.substr(0, run.err.find('\n'));
      const bool one_line = !run.err.empty() && run.err.find('\n') == run.err.size() - 1;
      const bool names_it = line.find(c.option) != std::string::npos ||
                            line.find(value.substr(value[0] == '=' ? 1 : 0)) != std::string::npos;
      table[i] = "| " + (c.command.empty() ? std::string("(global)") : c.command) + " | `" + c.option + " " + c.value +
                 "` | " + c.why + " | " + std::to_string(run.exit_code) + " | " + line + " |";
      if (run.exit_code != 2 || !one_line || line.rfind("guidiff: error: ", 0) != 0 || !names_it) {
        failures[i] = "guidiff " + args + " (" + c.why + ") -> exit " + std::to_string(run.exit_code) + ", stderr:\n" + run.err;
      }
      fs::remove_all(scratch);
    }
  };
  std::thread a(worker), b(worker);
  a.join();
  b.join();
  for (const auto& failure : failures) {
    if (!failure.empty()) ADD_FAILURE() << failure;
  }
  if (const char* report = std::getenv("GUIDIFF_BAD_FLAGS_REPORT")) {
    std::ofstream out(report);
    out << "| command | flag and value | case | exit | stderr |\n|---|---|---|---|---|\n";
    for (const auto& row : table) out << row << "\n";
  }
  std::printf("bad-flag matrix: %zu cases over %zu flags\n", cases.size(), options.size());
}

TEST_F(BadFlags, NumbersAreDecimalFiniteAndInRange) {
  // What CLI11 alone would accept: octal and hex, clamped overflow, a negative unsigned seed
  // wrapped to 2^64 - 1, nan and inf.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--steps", "010"},  {"--steps", "0x10"}, {"--steps", "1.5"},   {"--steps", " 5"},
      {"--steps", "1e3"},  {"--steps", "-99999999999999999999"},      {"--seed", "18446744073709551616"},
      {"--seed", "-1"},    {"--seed", "+-1"},  {"--eta", "nan"},      {"--eta", "1e400"},
      {"--eta", "-inf"},   {"--eta", "0x"},    {"--threads", "99999999999"}};
  const fs::path scratch = fixtures_ / "numbers";
  fs::create_directories(scratch);
  for (const auto& [flag, value] : cases) {
    const std::string args =
        "sample --num-samples 2 --out x.npy " + std::string(flag == "--steps" ? "" : "--steps 2 ") + flag + " " + quoted(value);
    const CliRun run = run_cli(args, scratch);
    EXPECT_EQ(run.exit_code, 2) << args << "\n" << run.err;
    EXPECT_EQ(run.err.rfind("guidiff: error: " + flag, 0), 0u) << args << "\n" << run.err;
    EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << run.err;
  }
  // And what stays accepted: decimal with a sign, exponents for real numbers.
  for (const std::string args : {"--steps +2", "--steps 2 --seed 18446744073709551615", "--steps 2 --eta 1e-3",
                                  "--steps 2 --eta -0"}) {
    const CliRun run = run_cli("sample --num-samples 2 --out x.npy " + args, scratch);
    EXPECT_EQ(run.exit_code, 0) << args << "\n" << run.err;
  }
}

}  // namespace
