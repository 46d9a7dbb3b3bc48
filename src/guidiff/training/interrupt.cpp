// SIGINT as a flag (see interrupt.hpp).
#include "guidiff/training/interrupt.hpp"

#include <atomic>
#include <csignal>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;
std::atomic<bool> g_installed{false};
struct sigaction g_previous;

extern "C" void on_sigint(int) { g_interrupted = 1; }

}  // namespace

InterruptFlag::InterruptFlag() {
  if (g_installed.exchange(true)) throw InputError("only one InterruptFlag may be active at a time");
  g_interrupted = 0;
  struct sigaction action {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // a second Ctrl-C takes the default action
  sigaction(SIGINT, &action, &g_previous);
}

InterruptFlag::~InterruptFlag() {
  sigaction(SIGINT, &g_previous, nullptr);
  g_installed = false;
}

bool InterruptFlag::raised() const { return g_interrupted != 0; }

}  // namespace guidiff
