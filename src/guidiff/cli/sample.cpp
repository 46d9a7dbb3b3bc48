// `guidiff sample`: turns the shared sampling flags (sampling_setup.hpp) into models and a
// GenerationConfig, calls generate() and writes the outputs: .npy arrays, an .npz in
// guided-diffusion's layout, PNG grids or single PNGs, plots, and a JSON manifest.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "guidiff/cli/commands.hpp"
#include "guidiff/cli/common.hpp"
#include "guidiff/cli/progress.hpp"
#include "guidiff/cli/sampling_setup.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/eval/mixture_purity.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/plot.hpp"
#include "guidiff/sampling/generation_checks.hpp"

namespace guidiff::cli {
namespace {

struct SampleFlags {
  SamplingFlags sampling;
  // Outputs.
  std::string out, labels_out, plot, grid, trajectory, npz, manifest, image_dir;
  int64_t grid_scale = 1;
};

// The model card goes beside every sample output: x.npz -> x.model_card.json, and
// DIR/model_card.json for --image-dir.
std::vector<std::string> model_card_paths(const SampleFlags& flags) {
  std::vector<std::string> paths;
  for (const std::string* output : {&flags.npz, &flags.out, &flags.grid}) {
    if (output->empty()) continue;
    const std::string path = std::filesystem::path(*output).replace_extension(".model_card.json").string();
    if (std::find(paths.begin(), paths.end(), path) == paths.end()) paths.push_back(path);
  }
  if (!flags.image_dir.empty()) paths.push_back((std::filesystem::path(flags.image_dir) / "model_card.json").string());
  return paths;
}

// The manifest goes where --manifest says, or beside the .npz (x.npz -> x.json).
std::string manifest_path(const SampleFlags& flags) {
  if (!flags.manifest.empty() || flags.npz.empty()) return flags.manifest;
  return std::filesystem::path(flags.npz).replace_extension(".json").string();
}

// --image-dir's own files (000000.png, ..., model_card.json) would overwrite, or be
// overwritten by, another output named inside it.
void check_outside_image_dir(const std::string& image_dir, const NamedPaths& outputs) {
  const std::filesystem::path dir = std::filesystem::absolute(image_dir).lexically_normal();
  for (const auto& [name, path] : outputs) {
    if (path.empty()) continue;
    const std::filesystem::path file = std::filesystem::absolute(path).lexically_normal();
    const std::string stem = file.stem().string();
    const bool numbered =
        file.extension() == ".png" && !stem.empty() &&
        std::all_of(stem.begin(), stem.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (file.parent_path() == dir && (numbered || file.filename() == "model_card.json")) {
      throw InputError(name + " '" + path +
                       "' is one of the files --image-dir writes; name it otherwise");
    }
  }
}

void check_outputs(const SampleFlags& flags, const std::vector<int64_t>& shape, const torch::Tensor& labels) {
  if (flags.out.empty() && flags.plot.empty() && flags.grid.empty() && flags.npz.empty() && flags.image_dir.empty()) {
    throw InputError("nothing to write: give --out, --npz, --grid, --image-dir or --plot");
  }
  if (!flags.labels_out.empty() && !labels.defined()) {
    throw InputError("--labels-out needs class labels (--class)");
  }
  if (!flags.plot.empty() && shape != std::vector<int64_t>{2}) {
    throw InputError("--plot draws 2-D samples (shape 2); use --grid for images");
  }
  // The files the user named (the manifest beside --npz among them).
  NamedPaths outputs = {
      {"--out", flags.out},   {"--labels-out", flags.labels_out}, {"--plot", flags.plot},
      {"--grid", flags.grid}, {"--trajectory", flags.trajectory}, {"--npz", flags.npz}};
  if (flags.manifest.empty()) {
    outputs.emplace_back("the manifest beside --npz", manifest_path(flags));
  } else {
    outputs.emplace_back("--manifest", flags.manifest);
  }
  if (!flags.image_dir.empty()) check_outside_image_dir(flags.image_dir, outputs);
  // Then what guidiff names beside them.
  outputs.emplace_back("--image-dir", flags.image_dir);
  for (const std::string& card : model_card_paths(flags)) {
    outputs.emplace_back("the model card '" + card + "'", card);
  }
  const SamplingFlags& in = flags.sampling;
  check_distinct_outputs(outputs, {{"--model", in.model},
                                   {"--classifier", in.classifier},
                                   {"--guide-model", in.guide_model},
                                   {"--base-samples", in.base_samples},
                                   {"--noise", in.noise},
                                   {"--mixture", in.mixture == "demo" ? "" : in.mixture}});
  const bool images = shape.size() == 3 && (shape[0] == 1 || shape[0] == 3);
  if (!flags.grid.empty() && !images) throw InputError("--grid needs image samples of shape 1,H,W or 3,H,W");
  if (flags.grid_scale < 1 || flags.grid_scale > 16) {
    throw InputError("--grid-scale must be 1 to 16, got " + std::to_string(flags.grid_scale));
  }
  if (!flags.npz.empty() && !images) throw InputError("--npz needs image samples of shape 1,H,W or 3,H,W");
  if (!flags.image_dir.empty() && !images) throw InputError("--image-dir needs image samples of shape 1,H,W or 3,H,W");
  // Created first: the other outputs may be named inside it.
  if (!flags.image_dir.empty()) {
    std::error_code error;
    std::filesystem::create_directories(flags.image_dir, error);
    if (!std::filesystem::is_directory(flags.image_dir)) {
      throw FileError("--image-dir '" + flags.image_dir + "' cannot be created");
    }
  }
  check_output_path("--out", flags.out);
  check_output_path("--labels-out", flags.labels_out);
  check_output_path("--plot", flags.plot);
  check_output_path("--grid", flags.grid);
  check_output_path("--trajectory", flags.trajectory);
  check_output_path("--npz", flags.npz);
  check_output_path("--manifest", flags.manifest);
}

std::string describe(const GenerationConfig& config) {
  char text[160];
  std::snprintf(text, sizeof text, "%s, classifier scale s = %g, CFG weight w = %g", to_string(config.sampler).c_str(),
                config.classifier_scale, config.cfg_scale);
  return text;
}

void write_outputs(const SampleFlags& flags, const GenerationConfig& config, const SamplingModels& models,
                   const GenerationResult& result) {
  if (!flags.out.empty()) write_npy(flags.out, result.samples);
  if (!flags.labels_out.empty()) write_npy(flags.labels_out, result.labels);
  if (!flags.trajectory.empty()) write_npy(flags.trajectory, torch::stack(result.trajectory));
  if (!flags.grid.empty()) {
    ImageGridOptions grid;
    grid.nrow = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(config.num_samples))));
    grid.scale = flags.grid_scale;
    torch::Tensor images = result.samples;
    if (result.labels.defined()) {
      // One class per row (more where it has more samples than the square grid's row holds),
      // named on the left, as the sweep's grids are.
      const torch::Tensor labels = result.labels.to(torch::kCPU, torch::kLong);
      grid.nrow = std::min(grid.nrow, torch::bincount(labels).max().item<int64_t>());
      ClassRows rows = arrange_by_class(result.samples, labels, models.class_names, grid.nrow);
      images = std::move(rows.images);
      grid.row_labels = std::move(rows.row_labels);
    }
    write_png_grid(flags.grid, images, grid);
  }
  if (!flags.image_dir.empty()) write_png_images(flags.image_dir, result.samples);
  if (!flags.npz.empty()) write_sample_batch_npz(flags.npz, images_to_uint8_nhwc(result.samples), result.labels);
  const std::string manifest = manifest_path(flags);
  if (!manifest.empty()) {
    nlohmann::json json = sampling_manifest(flags.sampling, config, result);
    json["outputs"] = {{"npy", flags.out}, {"npz", flags.npz}, {"grid", flags.grid}, {"image_dir", flags.image_dir}};
    write_file_atomically(manifest, json.dump(2) + "\n");
  }
  nlohmann::json card = models.model_card;
  card["sampling"] = sampling_manifest(flags.sampling, config, result);
  for (const std::string& path : model_card_paths(flags)) write_file_atomically(path, card.dump(2) + "\n");
  if (!flags.plot.empty()) {
    // Colour by the requested class; without one, the toy's samples by the class of their
    // nearest mixture component.
    torch::Tensor colours = result.labels;
    if (!colours.defined() && models.mixture) colours = nearest_class(*models.mixture, result.samples);
    ScatterPlotOptions options;
    options.title = "guidiff sample: " + describe(config);
    write_scatter_plot(flags.plot, {{std::to_string(config.num_samples) + " samples", result.samples, colours}},
                       options);
  }
}

void run_sample(SampleFlags& flags, const GlobalOptions& global) {
  SamplingSetup setup = prepare_sampling(flags.sampling, global);
  GenerationConfig& config = setup.config;
  config.keep_trajectory = !flags.trajectory.empty();
  Communicator& communicator = *global.communicator;
  // Rank 0 alone writes (and checks where it will write); every rank samples its share.
  if (communicator.is_main()) check_outputs(flags, config.sample_shape, setup.models.labels);
  communicator.barrier("checking the outputs");  // the others learn at once if rank 0 refused them
  generation_checks::check_config(config);  // before the note below counts batches of a bad request
  const int64_t batches = (config.num_samples + config.batch_size - 1) / config.batch_size;
  if (communicator.is_main() && batches < communicator.world_size()) {
    std::fprintf(stderr, "sampling: note: %lld batch(es) for %lld processes, so some have nothing to do; a smaller --batch-size spreads the work\n",
                 static_cast<long long>(batches), static_cast<long long>(communicator.world_size()));
  }

  const auto started = std::chrono::steady_clock::now();
  GenerationResult result;
  {
    std::optional<ProgressBar> progress;
    if (communicator.is_main()) progress.emplace("sampling");
    result = run_sampling(communicator, setup, [&progress](int64_t done, int64_t total) {
      if (progress) progress->update(done, total);
    });
  }
  if (!communicator.is_main()) return;
  // Sampling time alone (no start-up, loading or writing): what bench/ compares.
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::fprintf(stderr, "sampling: %lld samples in %.3f s (%.2f samples/s)%s\n", static_cast<long long>(config.num_samples),
               seconds, static_cast<double>(config.num_samples) / seconds,
               communicator.distributed() ? (" on " + std::to_string(communicator.world_size()) + " processes").c_str() : "");
  write_outputs(flags, config, setup.models, result);
}

// `sample` and `upsample` share every flag; upsample adds the base samples it conditions on.
Command add_sampling_command(CLI::App& app, const GlobalOptions& global, bool upsample) {
  CLI::App* command = upsample ? app.add_subcommand("upsample", "upsample base samples with a super-resolution model "
                                                                "(guided-diffusion's upsamplers)")
                               : app.add_subcommand("sample", "draw samples from a diffusion model, optionally guided");
  auto flags = std::make_shared<SampleFlags>();
  SampleFlags& f = *flags;
  add_sampling_flags(*command, f.sampling);
  if (upsample) {
    f.sampling.super_resolution = true;
    command->add_option("--base-samples,--base_samples", f.sampling.base_samples,
                        "low-resolution samples to upsample: .npz in guided-diffusion's layout (arr_0 uint8 NHWC, arr_1 labels)")
        ->required();
  }
  command->add_option("--out", f.out, "samples as float32 .npy [num_samples, shape...]");
  command->add_option("--labels-out", f.labels_out, "requested labels as int64 .npy [num_samples]");
  command->add_option("--npz", f.npz, "images as .npz in guided-diffusion's layout: arr_0 uint8 NHWC, arr_1 labels");
  command->add_option("--manifest", f.manifest, "JSON manifest of the run (default with --npz: beside it, .json)");
  command->add_option("--plot", f.plot, "scatter plot PNG of 2-D samples coloured by class");
  command->add_option("--grid", f.grid, "PNG grid of image samples");
  command->add_option("--grid-scale", f.grid_scale, "each pixel of --grid becomes an N x N block (nearest neighbour), 1 to 16")
      ->capture_default_str();
  command->add_option("--image-dir", f.image_dir, "one PNG per sample: DIR/000000.png, ... (created if missing)");
  command->add_option("--trajectory", f.trajectory, "every step's x as float32 .npy [steps + 1, num_samples, shape...]");
  return {command, [flags, &global] { run_sample(*flags, global); }};
}

}  // namespace

Command add_sample_command(CLI::App& app, const GlobalOptions& global) { return add_sampling_command(app, global, false); }
Command add_upsample_command(CLI::App& app, const GlobalOptions& global) { return add_sampling_command(app, global, true); }

}  // namespace guidiff::cli
