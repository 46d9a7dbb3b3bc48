// guidiff's command line (see run_cli.hpp): parses flags, sets the thread count, runs one
// subcommand; every failure becomes one line `guidiff: error: ...` on stderr and exit 2.
#include "guidiff/cli/run_cli.hpp"

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/cli/option_list.hpp"
#include "guidiff/core/allocator.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/distributed/launch_environment.hpp"
#include "guidiff/distributed/local_launcher.hpp"
#include "guidiff/models/winograd_conv.hpp"
#include "guidiff/version.hpp"

namespace {

constexpr int kErrorExit = 2;

// "a, b or c": the names of `command`'s subcommands, as registered.
std::string subcommand_list(const CLI::App& command) {
  const std::vector<const CLI::App*> choices =
      command.get_subcommands([](const CLI::App*) { return true; });
  std::string names;
  for (size_t i = 0; i < choices.size(); ++i) {
    if (i > 0) names += i + 1 == choices.size() ? " or " : ", ";
    names += choices[i]->get_name();
  }
  return names;
}

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

// In a data-parallel run the line names this rank, and the other ranks learn why it stops.
int report(const std::string& message, guidiff::Communicator& communicator) {
  if (!communicator.distributed()) return report(message);
  communicator.announce_failure(one_line(message));
  return report("[" + communicator.describe() + "] " + message);
}

}  // namespace

namespace guidiff::cli {

int run_cli(int argc, char** argv) {
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
                 "intra-op threads (default: GUIDIFF_THREADS, else all cores, shared among a data-parallel run's processes on this machine)");
  app.add_option("--conv", global.conv,
                 "3x3 convolutions on the CPU: auto (the default: Winograd where oneDNN runs AVX2 kernels or narrower, or where "
                 "its matrix products run on oneDNN's sgemm; GUIDIFF_WINOGRAD_PRODUCTS=auto|onednn|blas), "
                 "winograd (Winograd F(4x4,3x3) in float32 sampling on images from 32x32, and on smaller ones in calls of " +
                     std::to_string(guidiff::kWinogradMinTilesPerCall) + " tiles or more with " +
                     std::to_string(guidiff::kWinogradMinChannelsPerCall) +
                     " channels or more) or direct (libtorch's own; also GUIDIFF_CONV)");
  app.add_option("--device", global.device, "where models run (sampling and training): cpu or cuda");
  app.add_option("--nproc", global.nproc,
                 "run as this many data-parallel processes on this machine (train, sample, sweep, eval; docs/distributed.md)");
  app.add_option("--dist-timeout", global.dist_timeout,
                 "seconds a process waits for the others (to arrive, and in any one exchange) before it stops")
      ->capture_default_str();
  bool list_options = false;
  app.add_flag("--list-options", list_options, "every subcommand's flags as JSON lines")->group("");  // hidden

  const guidiff::cli::Command commands[] = {
      guidiff::cli::add_info_command(app, global),
      guidiff::cli::add_sample_command(app, global),
      guidiff::cli::add_upsample_command(app, global),
      guidiff::cli::add_convert_command(app, global),
      guidiff::cli::add_demo_command(app, global),
      guidiff::cli::add_train_command(app, global),
      guidiff::cli::add_eval_command(app, global),
      guidiff::cli::add_eval_classifier_command(app, global),
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
    // CLI11 says only "A subcommand is required" for `guidiff train` (or `train bogus`): name
    // the command and its choices.
    for (const CLI::App* command : app.get_subcommands([](CLI::App*) { return true; })) {
      const std::string choices = subcommand_list(*command);
      if (!command->parsed() || choices.empty() || !command->get_subcommands().empty()) continue;
      const std::vector<std::string> extra = command->remaining();
      return report("guidiff " + command->get_name() + " needs a subcommand: " + choices +
                    (extra.empty() ? "" : " (got '" + extra.front() + "')"));
    }
    return report(error.what());
  }
  if (list_options) {
    std::fputs(guidiff::cli::option_list(app).c_str(), stdout);
    return 0;
  }
  const std::string subcommand_names = subcommand_list(app);  // "info, sample, ... or sweep"
  if (!app.remaining().empty()) {
    return report("unknown argument '" + app.remaining().front() + "'" +
                  (app.get_subcommands().empty()
                       ? " (expected a subcommand: " + subcommand_names + ")"
                       : ""));
  }
  if (app.get_subcommands().empty())
    return report("a subcommand is required: " + subcommand_names + " (see guidiff --help)");

  if (!(global.dist_timeout > 0.0) || global.dist_timeout > 1e9) {
    return report("--dist-timeout must be a number of seconds from above 0 to 1e9, got " +
                  guidiff::number_string(global.dist_timeout));
  }
  // Bounds that keep a typo from forking or spawning thousands: more processes or threads than
  // this only slow a run (they share the cores).
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  const int max_processes = std::max(64, cores);
  if (given(app.get_option("--nproc")) && (global.nproc < 1 || global.nproc > max_processes)) {
    return report("--nproc must be 1 to " + std::to_string(max_processes) +
                  " (processes on this machine), got " + std::to_string(global.nproc));
  }
  if (global.threads < 0 || global.threads > guidiff::kMaxThreads) {
    return report("--threads must be 1 to " + std::to_string(guidiff::kMaxThreads) +
                  " (or 0 for the default), got " + std::to_string(global.threads));
  }
  if (global.nproc != 0) {
    const std::string command = app.get_subcommands().front()->get_name();
    // The commands that shard their work over processes; the others run whole in one.
    if (command != "train" && command != "sample" && command != "sweep" && command != "eval") {
      return report("--nproc applies to train, sample, sweep and eval, not " + command);
    }
    try {
      guidiff::LocalLaunchOptions launch;
      launch.nproc = global.nproc;
      launch.grace = std::chrono::milliseconds(static_cast<int64_t>(global.dist_timeout * 1000.0)) + std::chrono::seconds(30);
      return guidiff::launch_local_workers(std::vector<std::string>(argv, argv + argc), launch);
    } catch (const std::exception& error) {
      return report(error.what());
    }
  }
  try {
    guidiff::configure_allocator();
    guidiff::configure_convolutions(global.conv);
    // One of several processes on this machine takes its share of the cores by default.
    const char* threads_variable = std::getenv("GUIDIFF_THREADS");
    const guidiff::LaunchEnvironment launch = guidiff::read_launch_environment();
    const bool threads_given = global.threads > 0 || (threads_variable != nullptr && *threads_variable != '\0');
    guidiff::configure_threads(threads_given || !launch.distributed() ? global.threads
                                                                      : guidiff::threads_per_local_process(launch));
    global.join_processes(launch);
    for (const guidiff::cli::Command& command : commands) {
      if (command.app->parsed()) command.run();
    }
  } catch (const guidiff::cli::ExitStatus& status) {
    return status.code;
  } catch (const guidiff::Error& error) {
    return report(error.what(), *global.communicator);
  } catch (const c10::Error& error) {
    return report(error.what_without_backtrace(), *global.communicator);
  } catch (const std::exception& error) {
    return report(error.what(), *global.communicator);
  }
  return 0;
}

}  // namespace guidiff::cli
