// The fuzz campaign's short form, run by the test suite in the ordinary (gcc) build: every
// reader gets its seed corpus (fuzz/corpus/<target>), every input a fuzz run ever found
// (fuzz/regressions/<target>) and a few hundred deterministic mutations of them. A crash
// fails the test binary; an escaping non-guidiff exception or a malformed message fails the
// test naming the input. scripts/fuzz.sh runs the long form under libFuzzer and sanitizers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "fuzz_target.hpp"
#include "guidiff/core/threads.hpp"
#include "mutator.hpp"

namespace guidiff::fuzz {
namespace {

namespace fs = std::filesystem;

const fs::path kFuzzDir = fs::path(GUIDIFF_SOURCE_DIR) / "fuzz";

// Mutations per reader: a few seconds for the slowest targets (resume, model_config).
constexpr int kMutationsPerTarget = 300;

class FuzzCorpus : public ::testing::TestWithParam<const Target*> {
 protected:
  static void SetUpTestSuite() { configure_threads(1); }
  const Target& target() const { return *GetParam(); }
  std::vector<std::string> files(const char* kind) const {
    return list_inputs({(kFuzzDir / kind / target().name).string()});
  }
};

TEST_P(FuzzCorpus, SeedsIncludeAcceptedInputs) {
  // Fuzzing starts from valid files: a corpus the reader rejects whole only explores errors.
  const auto seeds = files("corpus");
  ASSERT_FALSE(seeds.empty()) << "no seeds in fuzz/corpus/" << target().name;
  int accepted = 0;
  for (const auto& file : seeds) {
    const Outcome outcome = run_input(target(), read_input(file));
    EXPECT_FALSE(outcome.finding) << file << ": " << outcome.what;
    accepted += !outcome.finding && outcome.what.empty();
  }
  EXPECT_GT(accepted, 0) << "the reader rejects every seed of " << target().name;
}

TEST_P(FuzzCorpus, PastFindingsAreRejectedCleanly) {
  for (const auto& file : files("regressions")) {
    const Outcome outcome = run_input(target(), read_input(file));
    EXPECT_FALSE(outcome.finding) << file << ": " << outcome.what;
  }
}

TEST_P(FuzzCorpus, MutatedSeedsAreHandled) {
  std::vector<std::string> inputs;
  for (const auto& file : files("corpus")) inputs.push_back(read_input(file));
  for (const auto& file : files("regressions")) inputs.push_back(read_input(file));
  ASSERT_FALSE(inputs.empty());
  Mutator mutator(/*seed=*/20240601);
  for (int i = 0; i < kMutationsPerTarget; ++i) {
    const std::string input = mutator.mutate(inputs[mutator.below(inputs.size())], inputs);
    const Outcome outcome = run_input(target(), input);
    if (outcome.finding) {
      const std::string saved = "fuzz-finding-" + std::string(target().name) + "-" + std::to_string(i);
      std::ofstream(saved, std::ios::binary) << input;
      ADD_FAILURE() << "mutation " << i << " (saved as " << fs::absolute(saved) << "): " << outcome.what;
    }
  }
}

std::vector<const Target*> target_pointers() {
  std::vector<const Target*> pointers;
  for (const Target& target : all_targets()) pointers.push_back(&target);
  return pointers;
}

INSTANTIATE_TEST_SUITE_P(Readers, FuzzCorpus, ::testing::ValuesIn(target_pointers()),
                         [](const ::testing::TestParamInfo<const Target*>& info) { return std::string(info.param->name); });

}  // namespace
}  // namespace guidiff::fuzz
