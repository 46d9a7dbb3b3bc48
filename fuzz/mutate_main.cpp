// guidiff_fuzz_mutate: the seed-mutation fuzzer (see mutator.hpp) and a replayer, for builds
// without libFuzzer. Usage:
//   guidiff_fuzz_mutate --target NAME [--seconds S] [--runs N] [--seed K] [--findings DIR] CORPUS...
//   guidiff_fuzz_mutate --target NAME --replay FILE_OR_DIR...
//   guidiff_fuzz_mutate --list
// Prints one summary line "target NAME: R runs in S s (E/s), F findings" and exits 1 when an
// input was a finding (the input is saved in --findings, default ./fuzz-findings).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "fuzz_target.hpp"
#include "guidiff/core/threads.hpp"
#include "mutator.hpp"

extern "C" void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

namespace {

using guidiff::fuzz::Target;

// What a crash handler saves: the input being run, and where to.
const std::string* g_current = nullptr;
char g_crash_path[4096] = {0};
int g_timeout_seconds = 20;

void save_current_input() {
  if (g_current == nullptr || g_crash_path[0] == '\0') return;
  const int fd = ::open(g_crash_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  const char* data = g_current->data();
  size_t left = g_current->size();
  while (left > 0) {
    const ssize_t n = ::write(fd, data, left);
    if (n <= 0) break;
    data += n;
    left -= static_cast<size_t>(n);
  }
  ::close(fd);
  const char note[] = "guidiff_fuzz_mutate: the input that crashed is saved in ";
  [[maybe_unused]] ssize_t ignored = ::write(2, note, sizeof note - 1);
  ignored = ::write(2, g_crash_path, std::strlen(g_crash_path));
  ignored = ::write(2, "\n", 1);
}

void on_fatal_signal(int signal_number) {
  if (signal_number == SIGALRM) {
    const char note[] = "guidiff_fuzz_mutate: an input ran past the timeout\n";
    [[maybe_unused]] ssize_t ignored = ::write(2, note, sizeof note - 1);
  }
  save_current_input();
  ::signal(signal_number, SIG_DFL);
  ::raise(signal_number == SIGALRM ? SIGABRT : signal_number);
}

void install_crash_handlers() {
  for (int signal_number : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGALRM}) ::signal(signal_number, on_fatal_signal);
  if (&__sanitizer_set_death_callback != nullptr) __sanitizer_set_death_callback(save_current_input);
}

std::string hex_hash(const std::string& bytes) {
  uint64_t hash = 0xcbf29ce484222325ull;  // FNV-1a
  for (unsigned char c : bytes) hash = (hash ^ c) * 0x100000001b3ull;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

int usage() {
  std::fprintf(stderr,
               "usage: guidiff_fuzz_mutate --target NAME [--seconds S] [--runs N] [--seed K] [--findings DIR] CORPUS...\n"
               "       guidiff_fuzz_mutate --target NAME --replay FILE_OR_DIR...\n"
               "       guidiff_fuzz_mutate --list\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string target_name, findings_dir = "fuzz-findings";
  double seconds = 0;
  long long runs = 0;
  unsigned long long seed = 1;
  bool replay = false;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "guidiff_fuzz_mutate: %s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--list") {
      for (const Target& target : guidiff::fuzz::all_targets()) std::printf("%-18s %s\n", target.name, target.reads);
      return 0;
    } else if (arg == "--target") {
      target_name = value();
    } else if (arg == "--seconds") {
      seconds = std::atof(value().c_str());
    } else if (arg == "--runs") {
      runs = std::atoll(value().c_str());
    } else if (arg == "--seed") {
      seed = std::strtoull(value().c_str(), nullptr, 10);
    } else if (arg == "--findings") {
      findings_dir = value();
    } else if (arg == "--timeout") {
      g_timeout_seconds = std::atoi(value().c_str());
    } else if (arg == "--replay") {
      replay = true;
    } else if (!arg.empty() && arg[0] == '-') {
      return usage();
    } else {
      paths.push_back(arg);
    }
  }
  const Target* target = guidiff::fuzz::find_target(target_name);
  if (target == nullptr) {
    std::fprintf(stderr, "guidiff_fuzz_mutate: unknown --target '%s' (see --list)\n", target_name.c_str());
    return 2;
  }
  const std::vector<std::string> files = guidiff::fuzz::list_inputs(paths);
  if (files.empty()) {
    std::fprintf(stderr, "guidiff_fuzz_mutate: no input files under the given paths\n");
    return 2;
  }
  guidiff::configure_threads(1);  // one core per fuzzer; results do not depend on it
  std::filesystem::create_directories(findings_dir);
  std::snprintf(g_crash_path, sizeof g_crash_path, "%s/crash-%s-%d", findings_dir.c_str(), target->name, ::getpid());
  install_crash_handlers();

  std::vector<std::string> corpus;
  for (const auto& file : files) corpus.push_back(guidiff::fuzz::read_input(file));
  guidiff::fuzz::Mutator mutator(seed);
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  long long done = 0, findings = 0;
  const long long total = replay ? static_cast<long long>(corpus.size()) : runs;
  for (;; ++done) {
    if (total > 0 && done >= total) break;
    if (!replay && seconds > 0 && elapsed() >= seconds) break;
    if (!replay && total <= 0 && seconds <= 0) break;
    const std::string input = replay ? corpus[static_cast<size_t>(done)]
                                     : mutator.mutate(corpus[mutator.below(corpus.size())], corpus);
    g_current = &input;
    ::alarm(static_cast<unsigned>(g_timeout_seconds));
    const guidiff::fuzz::Outcome outcome = guidiff::fuzz::run_input(*target, input);
    ::alarm(0);
    g_current = nullptr;
    if (outcome.finding) {
      ++findings;
      const std::string path = findings_dir + "/finding-" + target->name + "-" + hex_hash(input);
      std::ofstream(path, std::ios::binary) << input;
      std::fprintf(stderr, "FINDING in %s (%s): %s\n", target->name,
                   replay ? files[static_cast<size_t>(done)].c_str() : path.c_str(), outcome.what.c_str());
      if (!replay && findings >= 20) break;
    }
  }
  const double time = elapsed();
  std::printf("target %s: %lld runs in %.1f s (%.0f/s), %lld findings\n", target->name, done, time,
              time > 0 ? static_cast<double>(done) / time : 0.0, findings);
  return findings > 0 ? 1 : 0;
}
