// openai/guided-diffusion's released models (Dhariwal & Nichol 2021) as guidiff Models: the
// network comes from guided-diffusion's flags (guided_diffusion_flags.hpp), the weights from
// the `.pt` file torch.save wrote (pt_file.hpp), streamed into the network one tensor at a
// time. float16 weights (use_fp16 training) are widened to float32.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "guidiff/models/guided_diffusion_flags.hpp"
#include "guidiff/models/model_files.hpp"

namespace guidiff {

// Which of guided-diffusion's constructors the flags are for.
enum class GuidedDiffusionRole {
  diffusion,         // create_model: UNetModel (image_sample.py, classifier_sample.py)
  super_resolution,  // sr_create_model: SuperResModel (super_res_sample.py)
  classifier,        // create_classifier: EncoderUNetModel (classifier_sample.py)
};

// The network of `role` built from `flags` (freshly initialised weights, training mode, CPU),
// with its diffusion settings (denoisers). Throws InputError for flags guidiff cannot honour.
Model build_guided_diffusion_model(const GuidedDiffusionFlags& flags, GuidedDiffusionRole role);

// Builds the network of `role` from `flags`, loads `pt_path` into it and returns it in eval
// mode on `device`, with its diffusion settings (denoisers) and a source record
// {"format", "file", "flags", "role"}. Throws InputError for flags guidiff cannot honour and
// FileError naming the file for an unreadable `.pt` or one whose tensors do not fit the
// network the flags describe (a key missing, unexpected, or of another shape: the flags are
// then probably not the ones the file was trained with).
Model load_guided_diffusion_model(const std::string& pt_path, const GuidedDiffusionFlags& flags,
                                  GuidedDiffusionRole role, const torch::Device& device = torch::kCPU);

// Loads the torch.save state dict at `pt_path` into `model`'s network, one tensor at a time
// (FileError as load_model_state, with `mismatch_hint` appended to key/shape mismatches).
void load_pt_weights(Model& model, const std::string& pt_path, const std::string& mismatch_hint = "");

// The network of a guidiff JSON config ({"kind": ..., fields..., optionally "diffusion"}: the
// form `guidiff convert` writes), untrained, with its diffusion settings. Throws InputError
// naming the config field at fault.
Model build_pt_model(const nlohmann::json& config);
// That network with a `.pt` state dict's weights, in eval mode on `device`; FileError for
// the file.
Model load_pt_model(const std::string& pt_path, const nlohmann::json& config, const torch::Device& device = torch::kCPU);

// A model card for samples: what the model is and where it came from (its config, diffusion
// settings, parameter count and source; for guided-diffusion's models also the paper, the
// licence and guided-diffusion's own model card). `path` is what the user gave.
nlohmann::json model_card(const Model& model, const std::string& path);

}  // namespace guidiff
