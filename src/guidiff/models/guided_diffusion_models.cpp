// guided-diffusion's `.pt` models as guidiff Models (see guided_diffusion_models.hpp).
#include "guidiff/models/guided_diffusion_models.hpp"

#include <optional>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/pt_file.hpp"

namespace guidiff {
namespace {

constexpr const char* kSourceFormat = "guided-diffusion state dict (.pt)";

const char* role_name(GuidedDiffusionRole role) {
  switch (role) {
    case GuidedDiffusionRole::diffusion: return "diffusion";
    case GuidedDiffusionRole::super_resolution: return "super_resolution";
    case GuidedDiffusionRole::classifier: return "classifier";
  }
  return "diffusion";
}

nlohmann::json network_config(const GuidedDiffusionFlags& flags, GuidedDiffusionRole role) {
  nlohmann::json config;
  if (role == GuidedDiffusionRole::classifier) {
    config = classifier_config_from_flags(flags);
    config["kind"] = model_kind_name(ModelKind::encoder_unet);
  } else {
    config = unet_config_from_flags(flags, role == GuidedDiffusionRole::super_resolution);
    config["kind"] = model_kind_name(ModelKind::unet);
  }
  return config;
}

// The file's tensors as the loader reads them: one at a time, straight from the archive.
StoredTensors stored_tensors(const PtStateDict& file) {
  StoredTensors stored;
  for (const auto& info : file.tensors()) stored.entries.push_back({info.name, info.sizes, info.dtype});
  stored.read = [&file](size_t index) { return file.read(file.tensors()[index]); };
  return stored;
}

}  // namespace

void load_pt_weights(Model& model, const std::string& pt_path, const std::string& mismatch_hint) {
  const PtStateDict file(pt_path);
  load_model_state(*model.module, stored_tensors(file), pt_path, mismatch_hint);
}

Model build_pt_model(const nlohmann::json& config) {
  nlohmann::json network = config;
  std::optional<DiffusionSettings> diffusion;
  if (network.is_object() && network.contains("diffusion")) {
    diffusion = DiffusionSettings::from_json(network.at("diffusion"), "model config");
    network.erase("diffusion");
  }
  Model model = build_model(network);
  model.diffusion = diffusion;
  model.source = {{"format", kSourceFormat}, {"config", network}};
  return model;
}

Model load_pt_model(const std::string& pt_path, const nlohmann::json& config, const torch::Device& device) {
  Model model = build_pt_model(config);
  load_pt_weights(model, pt_path, " (does the config describe the network the file was saved from?)");
  model.module->to(device);
  model.module->eval();
  model.source["file"] = pt_path;
  return model;
}

Model build_guided_diffusion_model(const GuidedDiffusionFlags& flags, GuidedDiffusionRole role) {
  Model model = build_model(network_config(flags, role));
  if (role != GuidedDiffusionRole::classifier) model.diffusion = diffusion_settings_from_flags(flags);
  model.source = {{"format", kSourceFormat}, {"flags", flags.text()}, {"role", role_name(role)}};
  return model;
}

Model load_guided_diffusion_model(const std::string& pt_path, const GuidedDiffusionFlags& flags,
                                  GuidedDiffusionRole role, const torch::Device& device) {
  // Flags first: a wrong flag is reported before a large file is opened.
  Model model = build_guided_diffusion_model(flags, role);
  load_pt_weights(model, pt_path, " (are the flags those the model was trained with?)");
  model.module->to(device);
  model.module->eval();
  model.source["file"] = pt_path;
  return model;
}

nlohmann::json model_card(const Model& model, const std::string& path) {
  nlohmann::json card = {{"path", path},
                         {"kind", model_kind_name(model.kind)},
                         {"parameters", model.module ? count_parameters(*model.module) : 0},
                         {"config", model.config}};
  if (model.diffusion) card["diffusion"] = model.diffusion->to_json();
  if (!model.source.is_null()) card["source"] = model.source;
  if (!model.class_names.empty()) card["class_names"] = model.class_names;
  // Read with guided-diffusion's flags: one of its models (a JSON config may describe any).
  if (model.source.is_object() && model.source.contains("flags")) {
    card["origin"] = {
        {"project", "openai/guided-diffusion"},
        {"paper", "Dhariwal & Nichol 2021, Diffusion Models Beat GANs on Image Synthesis, arXiv:2105.05233"},
        {"licence", "MIT (openai/guided-diffusion)"},
        {"model_card", "https://github.com/openai/guided-diffusion/blob/main/model-card.md"},
        {"intended_use", "research on generative models; see guided-diffusion's model card for limitations "
                         "and biases of ImageNet and LSUN models"}};
  }
  return card;
}

}  // namespace guidiff
