// Trainable networks as files: a JSON config {"kind": "unet" | "encoder_unet" |
// "mlp_denoiser" | "mlp_classifier" |
// "cnn_classifier", <that kind's config fields>} builds the network, and
// its weights live beside the config as <name>.safetensors with <name>.json (docs/formats.md).
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "guidiff/io/safetensors.hpp"
#include "guidiff/models/denoiser.hpp"
#include "guidiff/models/diffusion_settings.hpp"

namespace guidiff {

enum class ModelKind { unet, encoder_unet, mlp_denoiser, mlp_classifier, cnn_classifier };
const char* model_kind_name(ModelKind kind);

// A network and the interface it implements: denoiser for unet / mlp_denoiser, classifier
// for encoder_unet / mlp_classifier / cnn_classifier (the other one is null).
struct Model {
  ModelKind kind = ModelKind::unet;
  nlohmann::json config;                      // complete: every field, and "kind"
  std::shared_ptr<torch::nn::Module> module;  // parameters, train()/eval(), to(device)
  std::shared_ptr<Denoiser> denoiser;
  std::shared_ptr<Classifier> classifier;
  // The diffusion process the model was trained with, when known (guided-diffusion's
  // models: from their flags); the config file keeps it under "diffusion".
  std::optional<DiffusionSettings> diffusion;
  // Where the weights came from (e.g. {"format": ..., "file": ..., "flags": ...}); the config
  // file keeps it under "source". Null for models guidiff trained.
  nlohmann::json source;
  // The classes' names, one per class, from the data set it was trained on (empty when the
  // data named none); the config file keeps them under "class_names". Grids label rows with them.
  std::vector<std::string> class_names;
};

// The classifier that guides sampling takes the noise level (encoder_unet, mlp_classifier).
// Throws InputError naming `what` (e.g. "--classifier 'x'") unless `model` is one: a
// cnn_classifier sees only clean images (an evaluator) and would guide by nonsense.
void check_guidance_classifier(const Model& model, const std::string& what);

// A freshly initialised network (training mode, CPU, float32) from its config. Throws
// InputError naming "kind" or the config field at fault, or saying the weights need more
// memory than `memory_budget` bytes (default: what the machine has available,
// available_memory_bytes()); that is found before the memory is filled.
Model build_model(const nlohmann::json& config,
                  std::optional<int64_t> memory_budget = std::nullopt);

// The two files of a saved model. `dir_or_prefix` is an existing directory (files
// <dir>/model.*), or a prefix ("runs/a/ema" -> runs/a/ema.safetensors, runs/a/ema.json),
// or either file's path.
struct ModelFiles {
  std::string weights;  // <name>.safetensors
  std::string config;   // <name>.json
};
ModelFiles model_files(const std::string& dir_or_prefix);

// The classes the network tells apart: a denoiser's (without its null class) or a classifier's.
int64_t model_class_count(const Model& model);

// The number of trainable scalars in `module`.
int64_t count_parameters(const torch::nn::Module& module);

// The tensors a checkpoint holds: parameters then buffers, by their full names.
NamedTensors model_state(const torch::nn::Module& module);
// Tensors held in a file, as a loader sees them: what each is, and how to read it (one at a
// time, so that a large file is never held twice).
struct StoredTensors {
  struct Entry {
    std::string name;
    std::vector<int64_t> sizes;
    torch::ScalarType dtype;
  };
  std::vector<Entry> entries;
  std::function<torch::Tensor(size_t index)> read;  // entry index -> its values
};

// Copies the stored tensors into `module`, checking everything before copying anything:
// throws FileError naming `file` and the key that is missing from the file, unexpected in
// it, or has the wrong shape or a non-floating dtype for a floating tensor (other floating
// dtypes, e.g. float16 weights, are converted); `mismatch_hint` is appended to those
// messages. Each tensor is read, copied and dropped in turn.
void load_model_state(torch::nn::Module& module, const StoredTensors& stored, const std::string& file,
                      const std::string& mismatch_hint = "");
void load_model_state(torch::nn::Module& module, const SafetensorsContents& state,
                      const std::string& file);

// Writes the weights and the config (with "diffusion", "source" and "class_names" when set)
// atomically, both or neither. Throws FileError if they cannot be written.
void save_model(const Model& model, const std::string& dir_or_prefix);
// The JSON written beside the weights: the config, plus "diffusion", "source" and "class_names" if set.
nlohmann::json model_file_json(const Model& model);
// The files save_model writes (weights first), for checkpoints that write several models and
// files as one group (write_files_atomically). The weights are written from the network's own
// tensors, not a copy: they must not change until the files are written.
std::vector<StreamedFile> model_files_to_write(const Model& model, const std::string& dir_or_prefix);
// Builds the network from the config file and loads the weights, in eval mode on `device`.
// Throws FileError naming the file at fault (missing, malformed, an invalid config, or a
// key missing / unexpected / mismatched against the network the config builds).
Model load_model(const std::string& dir_or_prefix, const torch::Device& device = torch::kCPU);

}  // namespace guidiff
