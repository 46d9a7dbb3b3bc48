// The `guidiff` subcommands. Each registers its flags on the CLI11 app and returns the
// function that runs it once parsing (and thread set-up) is done.
#pragma once
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <functional>
#include <string>

namespace guidiff::cli {

// Flags that apply to every subcommand.
struct GlobalOptions {
  int threads = 0;             // --threads; 0: GUIDIFF_THREADS or all cores
  std::string device = "cpu";  // --device cpu|cuda
  // The parsed --device; throws InputError for an unknown or unavailable device.
  torch::Device torch_device() const;
};

struct Command {
  CLI::App* app;             // the subcommand; run it when app->parsed()
  std::function<void()> run;
};

Command add_info_command(CLI::App& app, const GlobalOptions& global);
Command add_sample_command(CLI::App& app, const GlobalOptions& global);
Command add_demo_command(CLI::App& app, const GlobalOptions& global);
Command add_train_command(CLI::App& app, const GlobalOptions& global);
Command add_eval_command(CLI::App& app, const GlobalOptions& global);
Command add_eval_classifier_command(CLI::App& app, const GlobalOptions& global);
Command add_sweep_command(CLI::App& app, const GlobalOptions& global);

}  // namespace guidiff::cli
