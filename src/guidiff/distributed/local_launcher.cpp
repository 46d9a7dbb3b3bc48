// Starting and supervising local workers (see local_launcher.hpp).
#include "guidiff/distributed/local_launcher.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include "guidiff/core/errors.hpp"
#include "guidiff/distributed/communicator.hpp"

extern char** environ;

namespace guidiff {
namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_terminate_requested = 0;
void on_terminate(int) { g_terminate_requested = 1; }

// "exited with status 2", "was killed by signal 9 (Killed)".
std::string how_it_ended(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int signal_number = WTERMSIG(status);
    return "was killed by signal " + std::to_string(signal_number) + " (" + strsignal(signal_number) + ")";
  }
  return "ended with wait status " + std::to_string(status);
}

int exit_code_of(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// The environment of worker `rank`: ours, with torchrun's variables replaced.
std::vector<std::string> worker_environment(int rank, int nproc, int port) {
  std::map<std::string, std::string> set = {{"RANK", std::to_string(rank)},
                                            {"LOCAL_RANK", std::to_string(rank)},
                                            {"WORLD_SIZE", std::to_string(nproc)},
                                            {"LOCAL_WORLD_SIZE", std::to_string(nproc)},
                                            {"GROUP_RANK", "0"},
                                            {"MASTER_ADDR", "127.0.0.1"},
                                            {"MASTER_PORT", std::to_string(port)},
                                            {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                            {"TORCHELASTIC_RESTART_COUNT", "0"}};
  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string text = *entry;
    if (set.count(text.substr(0, text.find('='))) == 0) environment.push_back(text);
  }
  for (const auto& [name, value] : set) environment.push_back(name + "=" + value);
  return environment;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (auto& text : strings) result.push_back(text.data());
  result.push_back(nullptr);
  return result;
}

}  // namespace

struct LocalRendezvousStore::Server {
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  c10::intrusive_ptr<c10d::Store> prefixed;
};

LocalRendezvousStore::LocalRendezvousStore() : server_(std::make_unique<Server>()) {
  c10d::TCPStoreOptions options;
  options.port = 0;
  options.isServer = true;
  options.waitWorkers = false;
  options.multiTenant = true;
  try {
    server_->tcp = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", options);
  } catch (const std::exception& error) {
    throw DistributedError(std::string("cannot open a rendezvous store on 127.0.0.1: ") + error.what());
  }
  server_->prefixed = c10::make_intrusive<c10d::PrefixStore>(rendezvous_prefix(0), server_->tcp);
}

LocalRendezvousStore::~LocalRendezvousStore() = default;

int LocalRendezvousStore::port() const { return server_->tcp->getPort(); }

void LocalRendezvousStore::record_failure(int64_t rank, const std::string& reason) noexcept {
  try {
    if (!server_->prefixed->check({failure_key(rank)})) {
      server_->prefixed->set(failure_key(rank), std::vector<uint8_t>(reason.begin(), reason.end()));
    }
  } catch (const std::exception&) {
    // The others will see the rank's heartbeat stop instead.
  }
}

std::vector<std::string> arguments_without_nproc(const std::vector<std::string>& arguments) {
  std::vector<std::string> kept;
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (i > 0 && arguments[i] == "--nproc") {
      ++i;  // and its value
      continue;
    }
    if (i > 0 && arguments[i].rfind("--nproc=", 0) == 0) continue;
    kept.push_back(arguments[i]);
  }
  return kept;
}

int launch_local_workers(const std::vector<std::string>& arguments, const LocalLaunchOptions& options) {
  if (options.nproc < 1) throw DistributedError("--nproc must be >= 1, got " + std::to_string(options.nproc));
  if (const char* world = std::getenv("WORLD_SIZE"); world != nullptr && *world != '\0') {
    throw DistributedError("--nproc starts its own workers, but this process already is one (WORLD_SIZE=" +
                           std::string(world) + "); under torchrun leave --nproc out");
  }
  LocalRendezvousStore store;
  const int port = store.port();

  // Everything the children need is built before fork: between fork and exec only
  // async-signal-safe calls are allowed (the store runs threads).
  std::vector<std::string> argument_strings = arguments_without_nproc(arguments);
  std::vector<char*> argv = pointers(argument_strings);
  std::vector<std::vector<std::string>> environments;
  for (int rank = 0; rank < options.nproc; ++rank) environments.push_back(worker_environment(rank, options.nproc, port));
  std::vector<std::vector<char*>> envps;
  for (auto& environment : environments) envps.push_back(pointers(environment));
  const pid_t launcher = ::getpid();

  struct sigaction ignore {}, terminate {}, old_interrupt {}, old_terminate {};
  ignore.sa_handler = SIG_IGN;
  terminate.sa_handler = on_terminate;
  ::sigaction(SIGINT, &ignore, &old_interrupt);  // the workers get Ctrl-C themselves
  g_terminate_requested = 0;
  ::sigaction(SIGTERM, &terminate, &old_terminate);

  std::map<pid_t, int> running;  // pid -> rank
  for (int rank = 0; rank < options.nproc; ++rank) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (const auto& [child, _] : running) ::kill(child, SIGTERM);
      throw DistributedError("--nproc: cannot start worker " + std::to_string(rank) + ": " + std::strerror(errno));
    }
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // a worker never outlives its launcher
      if (::getppid() != launcher) ::_exit(1);
      ::execve("/proc/self/exe", argv.data(), envps[static_cast<size_t>(rank)].data());
      const char message[] = "guidiff: error: --nproc: cannot execute /proc/self/exe\n";
      (void)!::write(2, message, sizeof message - 1);
      ::_exit(127);
    }
    running[pid] = rank;
  }

  int result = 0;
  std::string first_failure;
  std::optional<Clock::time_point> stop_survivors_at, kill_survivors_at;
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0 && running.count(pid) > 0) {
      const int rank = running[pid];
      running.erase(pid);
      if (status != 0 && first_failure.empty()) {
        const std::string how = how_it_ended(status);
        first_failure = "rank " + std::to_string(rank) + " " + how;
        result = exit_code_of(status);
        store.record_failure(rank, "its process " + how);  // unless it said why itself
        stop_survivors_at = Clock::now() + options.grace;
      }
      continue;
    }
    if (pid < 0 && errno == ECHILD) break;
    const auto now = Clock::now();
    if (g_terminate_requested && !stop_survivors_at) stop_survivors_at = now;
    if (stop_survivors_at && now >= *stop_survivors_at && !kill_survivors_at) {
      for (const auto& [child, _] : running) ::kill(child, SIGTERM);
      kill_survivors_at = now + std::chrono::seconds(5);
    }
    if (kill_survivors_at && now >= *kill_survivors_at) {
      for (const auto& [child, _] : running) ::kill(child, SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::sigaction(SIGINT, &old_interrupt, nullptr);
  ::sigaction(SIGTERM, &old_terminate, nullptr);
  if (!first_failure.empty()) {
    std::fprintf(stderr, "guidiff: error: --nproc %d: %s; the run stopped\n", options.nproc, first_failure.c_str());
  } else if (g_terminate_requested) {
    std::fprintf(stderr, "guidiff: error: --nproc %d: terminated; the workers were stopped\n", options.nproc);
    result = 128 + SIGTERM;
  }
  return result;
}

}  // namespace guidiff
