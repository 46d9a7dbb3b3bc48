// The libFuzzer entry point (GUIDIFF_FUZZ builds): one binary for every target, chosen by the
// environment variable GUIDIFF_FUZZ_TARGET, e.g.
//   GUIDIFF_FUZZ_TARGET=npy build-fuzz/fuzz/guidiff_fuzz -max_total_time=600 corpus/ fuzz/corpus/npy
// A finding aborts with its description, so libFuzzer saves the input as a crash.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "fuzz_target.hpp"
#include "guidiff/core/threads.hpp"

namespace {
const guidiff::fuzz::Target* g_target = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* name = std::getenv("GUIDIFF_FUZZ_TARGET");
  g_target = guidiff::fuzz::find_target(name != nullptr ? name : "");
  if (g_target == nullptr) {
    std::fprintf(stderr, "guidiff_fuzz: set GUIDIFF_FUZZ_TARGET to one of:");
    for (const auto& target : guidiff::fuzz::all_targets()) std::fprintf(stderr, " %s", target.name);
    std::fprintf(stderr, "\n");
    std::exit(2);
  }
  guidiff::configure_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto outcome =
      guidiff::fuzz::run_input(*g_target, std::string_view(reinterpret_cast<const char*>(data), size));
  if (outcome.finding) {
    std::fprintf(stderr, "guidiff fuzz finding in target %s: %s\n", g_target->name, outcome.what.c_str());
    std::abort();
  }
  return 0;
}
