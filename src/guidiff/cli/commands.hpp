// The `guidiff` subcommands. Each registers its flags on the CLI11 app and returns the
// function that runs it once parsing (and thread set-up) is done.
#pragma once
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "guidiff/distributed/communicator.hpp"

namespace guidiff::cli {

// Flags that apply to every subcommand.
struct GlobalOptions {
  int threads = 0;             // --threads; 0: GUIDIFF_THREADS or all cores
  std::string device = "cpu";  // --device cpu|cuda
  int nproc = 0;               // --nproc: run as this many local processes (0: as launched)
  double dist_timeout = 600;   // --dist-timeout, seconds
  std::string conv;            // --conv auto|winograd|direct; empty: GUIDIFF_CONV, else auto
  // The processes of this run (torchrun's environment; one process without it), joined by
  // join_processes() before the subcommand runs.
  std::shared_ptr<Communicator> communicator = std::make_shared<Communicator>();
  // The parsed --device; throws InputError for an unknown or unavailable device. In a
  // data-parallel run on GPUs, process LOCAL_RANK of this machine uses cuda:LOCAL_RANK. Resolved
  // at the first call (which also turns TF32 off for a GPU) and the same afterwards.
  torch::Device torch_device() const;
  // Connects to the run's other processes when `launch` (this process's launch environment)
  // makes it one of several. Throws DistributedError when the rendezvous fails.
  void join_processes(const LaunchEnvironment& launch);

 private:
  mutable std::optional<torch::Device> resolved_device_;
};

// Thrown by a subcommand that stops early without an error, having said why itself (Ctrl-C
// during training): the process exits with `code` and prints nothing more.
struct ExitStatus {
  int code;
};

struct Command {
  CLI::App* app;             // the subcommand; run it when app->parsed()
  std::function<void()> run;
};

Command add_info_command(CLI::App& app, const GlobalOptions& global);
Command add_sample_command(CLI::App& app, const GlobalOptions& global);
Command add_upsample_command(CLI::App& app, const GlobalOptions& global);
Command add_convert_command(CLI::App& app, const GlobalOptions& global);
Command add_demo_command(CLI::App& app, const GlobalOptions& global);
Command add_train_command(CLI::App& app, const GlobalOptions& global);
Command add_eval_command(CLI::App& app, const GlobalOptions& global);
Command add_eval_classifier_command(CLI::App& app, const GlobalOptions& global);
Command add_sweep_command(CLI::App& app, const GlobalOptions& global);

}  // namespace guidiff::cli
