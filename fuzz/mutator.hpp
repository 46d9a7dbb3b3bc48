// The seed-mutation fuzzer used where libFuzzer is not available (a gcc build) and in the
// test suite's short fuzz runs: random edits of corpus files, deterministic for a given seed.
// It has no coverage feedback, so it finds less than libFuzzer per execution; the edits are
// the ones that break binary formats and JSON (bit flips, boundary integers, cut and
// duplicated ranges, splices of two inputs, number and token swaps).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace guidiff::fuzz {

class Mutator {
 public:
  explicit Mutator(uint64_t seed) : state_(seed) {}
  // A copy of `input` with 1 to 4 random edits; `corpus` supplies splice partners.
  std::string mutate(const std::string& input, const std::vector<std::string>& corpus);
  uint64_t next();                  // splitmix64
  size_t below(size_t bound);       // uniform in [0, bound), bound > 0

 private:
  void edit_once(std::string& data, const std::vector<std::string>& corpus);
  uint64_t state_;
};

// Every regular file under the given files or directories (sorted, so runs are repeatable).
std::vector<std::string> list_inputs(const std::vector<std::string>& paths);
std::string read_input(const std::string& path);

}  // namespace guidiff::fuzz
