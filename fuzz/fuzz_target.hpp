// The fuzz targets: one function per guidiff reader, fed arbitrary bytes. libFuzzer
// (libfuzzer_main.cpp), the seed-mutation driver (mutate_main.cpp) and the corpus-replay test
// (test_fuzz_corpus.cpp) all run them through run_input(), which decides what a finding is:
//   - the reader returns, or throws guidiff::Error with one short line: the input is handled;
//   - any other exception (c10::Error, std::bad_alloc, a JSON library error, ...), a message
//     with a line break or longer than kMaxMessageBytes: a finding;
//   - a crash, a sanitizer report, a hang or a huge allocation: a finding (the process dies).
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace guidiff::fuzz {

using TargetFunction = void (*)(std::string_view input);

struct Target {
  const char* name;    // corpus directory fuzz/corpus/<name>, GUIDIFF_FUZZ_TARGET=<name>
  TargetFunction run;  // throws guidiff::Error for a rejected input
  const char* reads;   // what it exercises, for listings
};

// Every target, in the order of the campaign.
const std::vector<Target>& all_targets();
// The target called `name`, or nullptr.
const Target* find_target(std::string_view name);

// A one-line error the CLI prints whole; longer means a message that dumps its input.
constexpr size_t kMaxMessageBytes = 1024;

struct Outcome {
  bool finding = false;
  std::string what;  // the finding, or the rejected input's error message
};
Outcome run_input(const Target& target, std::string_view input);

// A path in this process's scratch directory (/dev/shm when writable, else TMPDIR), which is
// created on first use and removed at exit. Targets for readers that take paths write there.
std::string scratch_path(const std::string& name);
// Writes `bytes` to `path` (not atomically: scratch files are private to the process).
void write_scratch_file(const std::string& path, std::string_view bytes);
// Removes everything under `dir` and recreates it empty.
void reset_scratch_dir(const std::string& dir);

}  // namespace guidiff::fuzz
