// `guidiff convert`: a guided-diffusion `.pt` file (with its flags, or a JSON config of the
// network) to a guidiff checkpoint (safetensors + JSON config with the diffusion settings),
// so later runs need no flags. Prints what it loaded, how long loading took and the peak
// memory against the weights' size.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/models/guided_diffusion_models.hpp"

namespace guidiff::cli {
namespace {

struct ConvertFlags {
  std::string input, out, model_flags, classifier_flags, config;
};

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// The network the flags or the config describe, untrained.
Model build(const ConvertFlags& flags) {
  const int described = !flags.model_flags.empty() + !flags.classifier_flags.empty() + !flags.config.empty();
  if (described != 1) throw InputError("give exactly one of --model-flags, --classifier-flags or --config");
  if (!flags.config.empty()) {
    return build_pt_model(read_json_file("--config", flags.config));
  }
  if (!flags.classifier_flags.empty()) {
    return build_guided_diffusion_model(GuidedDiffusionFlags::parse(flags.classifier_flags, "--classifier-flags"),
                                        GuidedDiffusionRole::classifier);
  }
  const auto parsed = GuidedDiffusionFlags::parse(flags.model_flags, "--model-flags");
  // guided-diffusion's upsamplers are the models with --large_size / --small_size.
  const bool upsampler = parsed.given("large_size") || parsed.given("small_size");
  return build_guided_diffusion_model(parsed, upsampler ? GuidedDiffusionRole::super_resolution : GuidedDiffusionRole::diffusion);
}

void run_convert(const ConvertFlags& flags) {
  if (std::filesystem::exists(flags.out) && !std::filesystem::is_directory(flags.out)) {
    throw FileError("--out '" + flags.out + "' exists and is not a directory");
  }
  const auto started = std::chrono::steady_clock::now();
  Model model = build(flags);
  const double build_seconds = seconds_since(started);
  const auto reading = std::chrono::steady_clock::now();
  load_pt_weights(model, flags.input, flags.config.empty() ? " (are the flags those the model was trained with?)"
                                                           : " (does the config describe the network in the file?)");
  model.source["file"] = flags.input;
  model.module->eval();
  const double read_seconds = seconds_since(reading);
  const double seconds = seconds_since(started);
  const int64_t peak = peak_resident_bytes();
  int64_t weight_bytes = 0;
  for (const auto& parameter : model.module->parameters()) weight_bytes += parameter.numel() * parameter.element_size();
  std::error_code error;
  std::filesystem::create_directories(flags.out, error);
  if (!std::filesystem::is_directory(flags.out)) throw FileError("--out '" + flags.out + "' cannot be created");
  save_model(model, flags.out);
  const double mib = 1024.0 * 1024.0;
  std::printf("converted %s: %s, %lld parameters (%.1f MiB as float32)\n", flags.input.c_str(),
              model_kind_name(model.kind), static_cast<long long>(count_parameters(*model.module)),
              static_cast<double>(weight_bytes) / mib);
  std::printf("load: %.2f s (network built %.2f s, weights read %.2f s), peak RSS %.1f MiB = %.2fx the weights\n",
              seconds, build_seconds, read_seconds, static_cast<double>(peak) / mib,
              static_cast<double>(peak) / static_cast<double>(weight_bytes));
  std::printf("wrote %s\n", model_files(flags.out).weights.c_str());
}

}  // namespace

Command add_convert_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command = app.add_subcommand(
      "convert", "convert a guided-diffusion .pt (torch.save state dict) to a guidiff checkpoint");
  auto flags = std::make_shared<ConvertFlags>();
  command->add_option("input", flags->input, "the .pt file")->required();
  command->add_option("--out", flags->out, "directory for model.safetensors and model.json (created)")->required();
  command->add_option("--model-flags", flags->model_flags, "guided-diffusion's MODEL_FLAGS, verbatim (upsamplers: with --large_size/--small_size)");
  command->add_option("--classifier-flags", flags->classifier_flags, "guided-diffusion's classifier flags, with --image_size");
  command->add_option("--config", flags->config, "a guidiff JSON config of the network instead of flags");
  return {command, [flags] { run_convert(*flags); }};
}

}  // namespace guidiff::cli
