// The bad-flag matrix: every flag of every subcommand, as `guidiff --list-options` lists them,
// given a value of the wrong type, out of range, a missing file or a file of the wrong kind,
// on top of a small command that works. Each must end with exit status 2 and one line
// "guidiff: error: ..." naming the flag or the value, never a crash, a stack trace or a run
// that ignores the value. The cases run guidiff's run_cli() in forked copies of this test
// (run_forked); TheBinaryIsRunCli checks the binary against it. scripts/bad_flags.sh runs
// it and prints the whole table.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "guidiff/cli/run_cli.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/safetensors.hpp"

namespace fs = std::filesystem;

namespace {

struct CliRun {
  int exit_code = -1;  // -1: killed by a signal
  std::string err;
};

// `guidiff ARGS` as a process of the real binary, in `scratch`.
CliRun run_binary(const std::string& args, const fs::path& scratch) {
  const fs::path err_file = scratch / "stderr.txt";
  const std::string command = "cd '" + scratch.string() + "' && '" + GUIDIFF_CLI_PATH + "' " + args +
                              " </dev/null >/dev/null 2>'" + err_file.string() + "'";
  const int status = std::system(command.c_str());
  CliRun run;
  run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.err = guidiff::read_file_bytes(err_file.string());
  return run;
}

// A command line's words; a word in single quotes ('a b c') is one word, quotes kept.
std::vector<std::string> words_of(const std::string& line) {
  std::vector<std::string> words;
  for (size_t at = 0; at < line.size();) {
    if (line[at] == ' ') {
      ++at;
      continue;
    }
    size_t end = line[at] == '\'' ? line.find('\'', at + 1) + 1 : line.find(' ', at);
    if (end == std::string::npos || end == 0) end = line.size();
    words.push_back(line.substr(at, end - at));
    at = end;
  }
  return words;
}

// Many `guidiff ARGS` runs, two at a time, each in a forked copy of this process calling
// guidiff::cli::run_cli() (what guidiff's main() is) in its scratch directory, with stdout to
// /dev/null and stderr to a file. A process that starts the binary spends about a second
// loading libtorch, which over the matrix's hundreds of cases would be minutes; a fork shares
// this process's. The parent runs no parallel kernels before forking (its fixtures are
// tensors below ATen's parallel grain), so the children start with a usable thread pool.
std::vector<CliRun> run_forked(const std::vector<std::pair<std::string, fs::path>>& runs) {
  std::vector<CliRun> results(runs.size());
  std::map<pid_t, size_t> running;
  size_t next = 0;
  while (next < runs.size() || !running.empty()) {
    while (running.size() < 2 && next < runs.size()) {
      const auto& [args, scratch] = runs[next];
      std::vector<std::string> words = words_of(args);
      for (std::string& word : words) {
        if (word.size() >= 2 && word.front() == '\'' && word.back() == '\'') word = word.substr(1, word.size() - 2);
      }
      words.insert(words.begin(), "guidiff");
      const std::string err_file = (scratch / "stderr.txt").string();
      std::fflush(stdout);
      std::fflush(stderr);
      const pid_t pid = ::fork();
      if (pid < 0) throw std::runtime_error("fork failed");
      if (pid == 0) {
        const int null = ::open("/dev/null", O_RDWR);
        const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (null < 0 || err < 0 || ::chdir(scratch.c_str()) != 0) ::_exit(100);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(err, 2);
        std::vector<char*> argv;
        for (std::string& word : words) argv.push_back(word.data());
        argv.push_back(nullptr);
        const int code = guidiff::cli::run_cli(static_cast<int>(words.size()), argv.data());
        std::fflush(stdout);
        std::fflush(stderr);
        ::_exit(code);
      }
      running[pid] = next++;
    }
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, 0);
    if (done < 0) throw std::runtime_error("waitpid failed");
    const auto found = running.find(done);
    if (found == running.end()) continue;
    CliRun& run = results[found->second];
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    run.err = guidiff::read_file_bytes((runs[found->second].second / "stderr.txt").string());
    running.erase(found);
  }
  return results;
}

struct OptionInfo {
  std::string command, option, type;
  bool flag = false;
  bool positional = false;  // option is the argument's name, given without a flag
};

// What a text option holds, which decides its bad values.
enum class TextKind {
  input_file, model, output_file, output_dir, choice, list, data_spec,
  number_or_file,  // a number, or a .npy of one number per sample (--cfg-scale)
  cache_file,      // an output file whose missing directories are created (--reference-stats)
  flag_string,     // guided-diffusion's flags, verbatim (--model-flags)
};

// Every text option, by name (the same name means the same kind in every subcommand), or by
// "<command> <name>" where a subcommand differs. A flag missing here fails the test: a new
// flag needs its bad values.
const std::map<std::string, TextKind> kTextKinds = {
    {"--model", TextKind::model},           {"--classifier", TextKind::model},
    {"--evaluator", TextKind::model},       {"--features", TextKind::input_file},
    {"--config", TextKind::input_file},     {"--noise", TextKind::input_file},
    {"--labels", TextKind::input_file},     {"--samples", TextKind::input_file},
    {"--mixture", TextKind::input_file},    {"--reference-stats", TextKind::cache_file},
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
    {"--conv", TextKind::choice},
    {"--respacing", TextKind::list},        {"--guidance-interval", TextKind::list},
    {"--class", TextKind::list},            {"--classifier-scales", TextKind::list},
    {"--cfg-scales", TextKind::list},       {"sweep --steps", TextKind::list},
    {"--data", TextKind::data_spec},        {"--reference", TextKind::data_spec},
    {"--sigmas", TextKind::choice},         {"--samplers", TextKind::list},
    {"--lr-schedule", TextKind::choice},    {"--guide-model", TextKind::model},
    {"--guidance-interval-sigma", TextKind::list}, {"--conditional-classifier-scales", TextKind::list},
    {"--classifier-scale", TextKind::number_or_file},
    {"--cfg-scale", TextKind::number_or_file},
    {"--model-flags", TextKind::flag_string}, {"--classifier-flags", TextKind::flag_string},
    {"--model-config", TextKind::input_file}, {"--classifier-config", TextKind::input_file},
    {"--use_ddim", TextKind::choice},       {"--clip_denoised", TextKind::choice},
    {"--base-samples", TextKind::input_file}, {"convert input", TextKind::model},
    {"convert --out", TextKind::output_dir},
    {"--inception-weights", TextKind::input_file}, {"--write-reference", TextKind::output_file},
};

// Numeric flags for which -1 is a meaningful value (so not out of range).
const std::set<std::string> kNegativeAllowed = {"--classifier-scale", "--cfg-scale"};

// A small working command per subcommand. Placeholders: {T} the case's scratch directory,
// {F} the fixtures shared by all cases (SetUpTestSuite), {M} the committed Fashion-MNIST
// models, {D} the guided-diffusion test files and {ADM64} the flag string of adm64.pt;
// "@name:value" is the positional argument `name`. Each base stays as small as the flag
// allows: the toy mixture where the flag acts on it, tiny networks elsewhere, and a
// 12-image folder as the evaluation reference (the default, Fashion-MNIST's 60000 training
// images, would cost most of the matrix's time).
#define GUIDIFF_BAD_FLAGS_EVAL_COMMON "--evaluator {M}/evaluator --reference folder:{F}/images --cache-dir {F}/cache"
const std::map<std::string, std::string> kBases = {
    {"", "sample --num-samples 4 --steps 3 --out {T}/x.npy"},  // global flags
    {"info", "info"},
    {"sample", "sample --num-samples 4 --steps 3 --out {T}/x.npy"},
    {"sample sigma", "sample --sampler euler --num-samples 4 --steps 3 --out {T}/x.npy"},
    // Flags that act only with a network: autoguidance, and guided-diffusion's .pt files.
    {"sample unet", "sample --model {M}/cfg_unet --class 1 --cfg-scale 1 --num-samples 1 --steps 2 --out {T}/x.npy"},
    {"sample pt", "sample --model {D}/adm64.pt --model-flags '{ADM64}' --respacing 2 --num-samples 1 --npz {T}/a.npz"},
    {"sample pt config", "sample --model {D}/adm64.pt --model-config {F}/adm64.json --respacing 2 --num-samples 1 "
                         "--npz {T}/a.npz"},
    {"sample pt classifier", "sample --model {D}/adm64.pt --model-config {F}/adm64.json --classifier "
                             "{D}/classifier_attention.pt --classifier-config {F}/classifier_attention.json "
                             "--classifier-scale 1 --class 1 --respacing 2 --num-samples 1 --npz {T}/a.npz"},
    {"upsample", "upsample --model {D}/upsampler.pt --model-config {F}/upsampler.json --base-samples {F}/base.npz "
                 "--respacing 2 --npz {T}/up.npz"},
    {"convert", "convert @input:{D}/adm64.pt --model-flags '{ADM64}' --out {T}/converted"},
    {"convert config", "convert @input:{D}/adm64.pt --config {F}/adm64.json --out {T}/converted"},
    {"demo", "demo --out-dir {T}/demo --num-samples 8 --steps 3"},
    {"train diffusion", "train diffusion --data mixture --mixture-size 64 --batch-size 8 --steps 2 --out-dir {T}/run"},
    {"train classifier", "train classifier --data mixture --mixture-size 64 --batch-size 8 --steps 2 --out-dir {T}/run"},
    // Precision/recall and density/coverage take each point's 5th neighbour: more than 5
    // points on each side.
    {"eval", "eval --samples {F}/samples.npz " GUIDIFF_BAD_FLAGS_EVAL_COMMON},
    {"eval model", "eval --model {M}/cfg_unet --num-samples 10 --steps 2 " GUIDIFF_BAD_FLAGS_EVAL_COMMON},
    {"eval-classifier", "eval-classifier --classifier {M}/classifier --data folder:{F}/images --buckets 2"},
    {"sweep", "sweep --model {M}/cfg_unet --cfg-scales 0 --steps 2 --num-samples 10 --no-real-baseline "
              "--out-dir {T}/sweep " GUIDIFF_BAD_FLAGS_EVAL_COMMON},
};

// Flags whose base is not their subcommand's, by "<command> <option>".
const std::map<std::string, std::string> kOptionBases = {
    {"sample --sigmas", "sample sigma"},       {"sample --s-churn", "sample sigma"},
    {"sample --s-tmin", "sample sigma"},       {"sample --s-tmax", "sample sigma"},
    {"sample --s-noise", "sample sigma"},      {"sample --guide-model", "sample unet"},
    {"sample --model-flags", "sample pt"},
    {"sample --classifier-flags", "sample pt"},
    {"sample --use_ddim", "sample pt"},
    {"sample --clip_denoised", "sample pt"},
    {"sample --model-config", "sample pt config"},
    {"sample --classifier-config", "sample pt classifier"},
    {"convert --config", "convert config"},
};


struct Case {
  std::string command, option, value, why;
  std::string base;         // with the case's option left out
  bool positional = false;  // the value is in base already
};

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

std::string quoted(const std::string& value) { return "'" + value + "'"; }

// `base` without `option` and its value, if it has them: the case gives the option instead
// (CLI11 refuses an option given twice, which would pass a case for the wrong reason). A
// positional "@name:value" becomes `replacement` for the option `name`, its value otherwise.
std::string without_option(const std::string& base, const std::string& option, bool flag,
                           const std::string& replacement = "") {
  const std::vector<std::string> words = words_of(base);
  std::string out;
  for (size_t i = 0; i < words.size(); ++i) {
    std::string word = words[i];
    if (word == option) {
      if (!flag) ++i;  // its value
      continue;
    }
    if (word[0] == '@') {
      const size_t colon = word.find(':');
      word = word.substr(1, colon - 1) == option ? replacement : word.substr(colon + 1);
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
    case TextKind::cache_file:
      return {{"{F}/a-directory", "a directory"}, {"{F}/image.png/x.stats", "under a regular file"}};
    case TextKind::number_or_file:
      return {{"abc", "neither a number nor a file"}, {"inf", "not finite"}, {"{T}/missing.npy", "missing file"},
              {"{F}/a-directory", "a directory"}, {"{F}/image.png", "wrong kind of file"}};
    case TextKind::flag_string:
      return {{"--no_such_flag 1", "unknown flag"}, {"--image_size", "flag without its value"},
              {"image_size 16", "not a flag"}};
  }
  return {};
}

std::vector<Case> build_cases(const std::vector<OptionInfo>& options, std::vector<std::string>& unclassified) {
  // eval's sampling flags (those `sample` has too) act only with --model: without it they
  // are refused whatever their value (EvalRefusesSamplingFlagsWithoutAModel).
  std::set<std::string> sample_flags;
  for (const OptionInfo& option : options) {
    if (option.command == "sample") sample_flags.insert(option.option);
  }
  std::vector<Case> cases;
  for (const OptionInfo& option : options) {
    if (option.option == "--help" || option.option == "--version" || option.option == "--list-options") continue;
    std::string base_key = option.command;
    if (option.command == "eval" && sample_flags.count(option.option) > 0) base_key = "eval model";
    if (const auto own = kOptionBases.find(option.command + " " + option.option); own != kOptionBases.end()) {
      base_key = own->second;
    }
    if (kBases.count(base_key) == 0) {
      unclassified.push_back(option.command + " (no base command)");
      continue;
    }
    const auto add = [&](const std::string& value, const std::string& why) {
      if (option.positional) {
        cases.push_back({option.command, option.option, value, why,
                         without_option(kBases.at(base_key), option.option, false, quoted(value)), true});
        return;
      }
      cases.push_back({option.command, option.option, value, why, without_option(kBases.at(base_key), option.option, option.flag)});
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
    options.push_back({json.at("command"), json.at("option"), json.at("type"), json.at("flag"), json.at("positional")});
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
    torch::manual_seed(0);
    // 10 Fashion-MNIST-shaped samples, and a labelled folder of 12 grey images (classes 0-3)
    // for eval's reference and eval-classifier's data.
    guidiff::write_sample_batch_npz((fixtures_ / "samples.npz").string(),
                                    torch::randint(0, 256, {10, 28, 28, 1}, torch::kUInt8),
                                    torch::arange(10, torch::kLong) % 4);
    for (int label = 0; label < 4; ++label) {
      const fs::path folder = fixtures_ / "images" / std::to_string(label);
      fs::create_directories(folder);
      guidiff::write_png_images(folder.string(), torch::rand({3, 1, 28, 28}) * 2 - 1);
    }
    // guided-diffusion's tiny networks: their configs, and 8x8 base samples to upsample.
    const auto metadata = guidiff::load_safetensors(kGuidedDiffusionData + "/reference.safetensors").metadata;
    for (const std::string name : {"adm64", "upsampler", "classifier_attention"}) {
      guidiff::write_file_atomically((fixtures_ / (name + ".json")).string(), metadata.at("config." + name));
    }
    adm64_flags_ = metadata.at("flags.adm64");
    guidiff::write_sample_batch_npz((fixtures_ / "base.npz").string(), torch::randint(0, 256, {2, 8, 8, 3}, torch::kUInt8),
                                    torch::tensor({1, 4}, torch::kLong));
  }
  static void TearDownTestSuite() { fs::remove_all(fixtures_); }

  std::string expand(std::string text, const fs::path& scratch) const {
    text = replace_all(text, "{ADM64}", adm64_flags_);
    text = replace_all(text, "{M}", std::string(GUIDIFF_SOURCE_DIR) + "/models/fashion-mnist");
    text = replace_all(text, "{D}", kGuidedDiffusionData);
    return replace_all(replace_all(text, "{T}", scratch.string()), "{F}", fixtures_.string());
  }

  static inline const std::string kGuidedDiffusionData = std::string(GUIDIFF_TEST_DATA_DIR) + "/guided_diffusion";
  static fs::path fixtures_;
  static std::string adm64_flags_;
};

fs::path BadFlags::fixtures_;
std::string BadFlags::adm64_flags_;

TEST_F(BadFlags, EveryBaseCommandWorks) {
  // Without this the matrix would prove nothing: a case must fail because of its one value.
  std::vector<std::pair<std::string, fs::path>> runs;
  std::vector<std::string> names;
  for (const auto& [name, base] : kBases) {
    const fs::path scratch = fixtures_ / ("base-" + std::to_string(names.size()));
    fs::create_directories(scratch);
    runs.emplace_back(expand(without_option(base, "", true), scratch), scratch);  // positionals filled in
    names.push_back(name);
  }
  const std::vector<CliRun> results = run_forked(runs);
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(results[i].exit_code, 0) << names[i] << ": guidiff " << runs[i].first << "\n" << results[i].err;
  }
}

TEST_F(BadFlags, TheBinaryIsRunCli) {
  // The matrix calls run_cli() in forks; the binary gives the same outcomes as a process.
  const fs::path scratch = fixtures_ / "binary";
  fs::create_directories(scratch);
  const CliRun good = run_binary("sample --num-samples 2 --steps 2 --out x.npy", scratch);
  EXPECT_EQ(good.exit_code, 0) << good.err;
  const CliRun bad = run_binary("sample --num-samples 2 --steps 2 --out x.npy --eta abc", scratch);
  const CliRun forked = run_forked({{"sample --num-samples 2 --steps 2 --out x.npy --eta abc", scratch}}).front();
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_EQ(bad.err, "guidiff: error: --eta: 'abc' is not a number\n");
  EXPECT_EQ(forked.exit_code, bad.exit_code);
  EXPECT_EQ(forked.err, bad.err);
}

TEST_F(BadFlags, EveryFlagRejectsBadValuesWithOneLineAndExitStatus2) {
  const std::vector<OptionInfo> options = list_options(fixtures_);
  ASSERT_GT(options.size(), 50u);
  std::vector<std::string> unclassified;
  const std::vector<Case> cases = build_cases(options, unclassified);
  EXPECT_TRUE(unclassified.empty()) << "flags without bad values (add them to kTextKinds): " << ::testing::PrintToString(unclassified);

  std::vector<std::pair<std::string, fs::path>> runs;
  std::vector<std::string> values;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const fs::path scratch = fixtures_ / ("case-" + std::to_string(i));
    fs::create_directories(scratch);
    const std::string value = expand(c.value, scratch);
    runs.emplace_back(c.positional ? expand(c.base, scratch)
                                   : expand(c.base, scratch) + " " + c.option +
                                         (c.value[0] == '=' ? value : " " + quoted(value)),
                      scratch);
    values.push_back(value);
  }
  const std::vector<CliRun> results = run_forked(runs);
  std::vector<std::string> table;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const CliRun& run = results[i];
    const std::string& value = values[i];
    const std::string line = run.err.substr(0, run.err.find('\n'));
    const bool one_line = !run.err.empty() && run.err.find('\n') == run.err.size() - 1;
    const bool names_it = line.find(c.option) != std::string::npos ||
                          line.find(value.substr(value[0] == '=' ? 1 : 0)) != std::string::npos;
    table.push_back("| " + (c.command.empty() ? std::string("(global)") : c.command) + " | `" + c.option + " " + c.value +
                    "` | " + c.why + " | " + std::to_string(run.exit_code) + " | " + line + " |");
    if (run.exit_code != 2 || !one_line || line.rfind("guidiff: error: ", 0) != 0 || !names_it) {
      ADD_FAILURE() << "guidiff " << runs[i].first << " (" << c.why << ") -> exit " << run.exit_code << ", stderr:\n"
                    << run.err;
    }
    fs::remove_all(runs[i].second);
  }
  if (const char* report = std::getenv("GUIDIFF_BAD_FLAGS_REPORT")) {
    std::ofstream out(report);
    out << "| command | flag and value | case | exit | stderr |\n|---|---|---|---|---|\n";
    for (const auto& row : table) out << row << "\n";
  }
  std::printf("bad-flag matrix: %zu cases over %zu flags\n", cases.size(), options.size());
}

TEST_F(BadFlags, EvalRefusesSamplingFlagsWithoutAModel) {
  // Scoring --samples, eval once ignored every sampling flag (the matrix gives them a model).
  std::vector<std::pair<std::string, fs::path>> runs;
  const std::vector<std::string> flags = {"--steps 3", "--sigmas karras", "--guide-model {M}/cfg_unet", "--cfg-scale 2"};
  for (const std::string& flag : flags) {
    const fs::path scratch = fixtures_ / ("eval-" + std::to_string(runs.size()));
    fs::create_directories(scratch);
    runs.emplace_back(expand(kBases.at("eval") + " " + flag, scratch), scratch);
  }
  const std::vector<CliRun> results = run_forked(runs);
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(results[i].exit_code, 2) << runs[i].first << "\n" << results[i].err;
    EXPECT_EQ(results[i].err, "guidiff: error: " + flags[i].substr(0, flags[i].find(' ')) +
                                  " applies to sampling from --model, not to scoring --samples or --data\n");
  }
}

TEST_F(BadFlags, NumbersAreDecimalFiniteAndInRange) {
  // What CLI11 alone would accept: octal and hex, clamped overflow, a negative unsigned seed
  // wrapped to 2^64 - 1, nan and inf.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--steps", "010"},  {"--steps", "0x10"}, {"--steps", "1.5"},   {"--steps", " 5"},
      {"--steps", "1e3"},  {"--steps", "-99999999999999999999"},      {"--seed", "18446744073709551616"},
      {"--seed", "-1"},    {"--seed", "+-1"},  {"--eta", "nan"},      {"--eta", "1e400"},
      {"--eta", "-inf"},   {"--eta", "0x"},    {"--threads", "99999999999"}};
  // And what stays accepted: decimal with a sign, exponents for real numbers.
  const std::vector<std::string> accepted = {"--steps +2", "--steps 2 --seed 18446744073709551615", "--steps 2 --eta 1e-3",
                                             "--steps 2 --eta -0"};
  std::vector<std::pair<std::string, fs::path>> runs;
  for (const auto& [flag, value] : cases) {
    runs.emplace_back("sample --num-samples 2 --out x.npy " + std::string(flag == "--steps" ? "" : "--steps 2 ") + flag +
                          " " + quoted(value),
                      fixtures_ / ("numbers-" + std::to_string(runs.size())));
  }
  for (const std::string& args : accepted) {
    runs.emplace_back("sample --num-samples 2 --out x.npy " + args, fixtures_ / ("numbers-" + std::to_string(runs.size())));
  }
  for (const auto& run : runs) fs::create_directories(run.second);
  const std::vector<CliRun> results = run_forked(runs);
  for (size_t i = 0; i < runs.size(); ++i) {
    const CliRun& run = results[i];
    if (i < cases.size()) {
      EXPECT_EQ(run.exit_code, 2) << runs[i].first << "\n" << run.err;
      EXPECT_EQ(run.err.rfind("guidiff: error: " + cases[i].first, 0), 0u) << runs[i].first << "\n" << run.err;
      EXPECT_EQ(std::count(run.err.begin(), run.err.end(), '\n'), 1) << run.err;
    } else {
      EXPECT_EQ(run.exit_code, 0) << runs[i].first << "\n" << run.err;
    }
  }
}

TEST_F(BadFlags, CountsPastWhatTheyCountOrPastTheMemoryAreRefusedBeforeTheRun) {
  // Values each flag's type allows, refused for what they mean. The samples (1024 floats each,
  // 7.5 TiB in all) would otherwise be made for days and fail as they were written.
  const std::string eval_classifier =
      without_option(kBases.at("eval-classifier"), "--buckets", false);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"sample --dim 1024 --num-samples 2000000000 --steps 1 --out x.npy",
       "--num-samples 2000000000: the samples, kept until they are written, need 7.47 TiB of "
       "memory"},
      {eval_classifier + " --buckets 1001",
       "--buckets must be at most the 1000 noise levels scored"},
      {eval_classifier + " --max-t 100 --buckets 101",
       "--buckets must be at most the 100 noise levels scored"},
      {eval_classifier + " --max-t 2000", "--max-t must be at most --timesteps (1000), got 2000"},
      {kBases.at("train classifier") + " --accuracy-buckets 100000",
       "--accuracy-buckets must be 1 to 1000"},
  };
  std::vector<std::pair<std::string, fs::path>> runs;
  for (const auto& [args, message] : cases) {
    const fs::path scratch = fixtures_ / ("counts-" + std::to_string(runs.size()));
    fs::create_directories(scratch);
    runs.emplace_back(expand(args, scratch), scratch);
  }
  const std::vector<CliRun> results = run_forked(runs);
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(results[i].exit_code, 2) << runs[i].first << "\n" << results[i].err;
    EXPECT_EQ(results[i].err.rfind("guidiff: error: " + cases[i].second, 0), 0u)
        << runs[i].first << "\n"
        << results[i].err;
    EXPECT_EQ(std::count(results[i].err.begin(), results[i].err.end(), '\n'), 1) << results[i].err;
  }
}

}  // namespace
