// guidiff: the command-line entry point. Parses flags, sets the thread count, runs one
// subcommand; every failure becomes one line `guidiff: error: ...` on stderr and exit 2.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <csignal>
#include <cstdio>
#include <string>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/option_list.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/allocator.hpp"
#include "guidiff/core/threads.hpp"

namespace {

constexpr int kErrorExit = 2;

// The first line of a message, trimmed: what the user reads.
std::string one_line(const std::string& message) {
  std::string line = message.substr(0, message.find('\n'));
  const auto last = line.find_last_not_of(" \t\r");
  return last == std::string::npos ? "unknown error" : line.substr(0, last + 1);
}

int report(const std::string& message) {
  std::fprintf(stderr, "guidiff: error: %s\n", one_line(message).c_str());
  return kErrorExit;
}

}  // namespace

int main(int argc, char** argv) {
  // Under a file size limit (ulimit -f) a write past it fails with EFBIG and becomes the
  // usual one-line error, instead of SIGXFSZ killing the process mid-checkpoint.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"guidiff: sampling from guided diffusion models (classifier and classifier-free guidance)",
               "guidiff"};
  app.set_version_flag("--version", std::string("guidiff ") + GUIDIFF_VERSION);
  app.require_subcommand(0, 1);  // checked below, for a clearer message than CLI11's
  app.fallthrough();             // global flags may follow the subcommand

  guidiff::cli::GlobalOptions global;
  app.add_option("--threads", global.threads,
                 "intra-op threads (default: GUIDIFF_THREADS, else all cores)");
  app.add_option("--device", global.device, "where models run (sampling and training): cpu or cuda");
  bool list_options = false;
  app.add_flag("--list-options", list_options, "every subcommand's flags as JSON lines")->group("");  // hidden

  const guidiff::cli::Command commands[] = {
      guidiff::cli::add_info_command(app, global),
      guidiff::cli::add_sample_command(app, global),
      guidiff::cli::add_demo_command(app, global),
      guidiff::cli::add_train_command(app, global),
      guidiff::cli::add_eval_command(app, global),
      guidiff::cli::add_sweep_command(app, global),
  };
  // Set after the subcommands exist, so only the top level collects unknown arguments (the
  // subcommands pass theirs up) and they can be named in one line.
  app.allow_extras();
  guidiff::cli::check_numeric_options(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForAllHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::ParseError& error) {
    return report(error.what());
  }
  if (list_options) {
    std::fputs(guidiff::cli::option_list(app).c_str(), stdout);
    return 0;
  }
  if (!app.remaining().empty()) {
    return report("unknown argument '" + app.remaining().front() + "'" +
                  (app.get_subcommands().empty() ? " (expected a subcommand: info, sample, eval, sweep, train or demo)" : ""));
  }
  if (app.get_subcommands().empty()) return report("a subcommand is required: info, sample, eval, sweep, train or demo (see guidiff --help)");

  try {
    if (global.threads < 0) {
      throw guidiff::InputError("--threads must be >= 1 (or 0 for the default), got " +
                                std::to_string(global.threads));
    }
    guidiff::configure_allocator();
    guidiff::configure_threads(global.threads);
    for (const guidiff::cli::Command& command : commands) {
      if (command.app->parsed()) command.run();
    }
  } catch (const guidiff::Error& error) {
    return report(error.what());
  } catch (const c10::Error& error) {
    return report(error.what_without_backtrace());
  } catch (const std::exception& error) {
    return report(error.what());
  }
  return 0;
}
