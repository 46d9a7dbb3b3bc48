// openai/guided-diffusion's script flags, taken verbatim ("--image_size 64 --class_cond True
// ..."), and the one table that maps them, with guided-diffusion's defaults
// (guided_diffusion/script_util.py), onto guidiff's model configs and sampling settings.
//
// As in guided-diffusion's scripts, all flag strings share one namespace: the model's and the
// classifier's flags are merged (the classifier takes --image_size from the model's flags), a
// flag may appear in either, and giving it twice with different values is an error.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "guidiff/models/diffusion_settings.hpp"
#include "guidiff/models/unet_config.hpp"

namespace guidiff {

class GuidedDiffusionFlags {
 public:
  GuidedDiffusionFlags() = default;

  // Parses "--name value ..." (or --name=value); `source` names the string in errors, e.g.
  // "--model-flags". Throws InputError naming the flag: one guided-diffusion does not have (a
  // near miss is suggested), a missing value, a value of the wrong type (bools are
  // guided-diffusion's str2bool words: true/false, yes/no, t/f, y/n, 1/0), a flag given twice
  // with different values, or a path flag (--model_path, ...) that guidiff takes as its own
  // option instead.
  static GuidedDiffusionFlags parse(const std::string& text, const std::string& source);

  // Adds `other`'s flags; throws InputError for a flag both give with different values.
  void merge(const GuidedDiffusionFlags& other);

  bool empty() const { return values_.empty(); }
  bool given(const std::string& name) const { return values_.count(name) > 0; }
  // The flags given, as "--name value" in a canonical order (for model cards).
  std::string text() const;

  // The flag's value: as given, else guided-diffusion's default (names must be in the table).
  std::string text_of(const std::string& name) const;
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  bool boolean(const std::string& name) const;

 private:
  struct Given {
    std::string value;
    std::string source;
  };
  std::map<std::string, Given> values_;
};

// Sampling flags found in the flag strings (the README puts --classifier_scale among the
// classifier's flags, --timestep_respacing among the sampling ones).
struct GuidedDiffusionSampling {
  std::optional<std::string> timestep_respacing;
  std::optional<bool> use_ddim;
  std::optional<double> classifier_scale;
  std::optional<bool> clip_denoised;
  std::optional<int64_t> batch_size;
  std::optional<int64_t> num_samples;
};

// The flags' UNet (UNetModel, or SuperResModel when `super_resolution`: --large_size and
// --small_size replace --image_size). Class-conditional models get 1000 classes and no null
// class. Throws InputError naming the flag for values guidiff cannot honour (--predict_xstart
// True; --rescale_timesteps True with --diffusion_steps other than 1000; an --image_size
// without a default channel_mult and no --channel_mult) or that do not make a valid network.
UNetConfig unet_config_from_flags(const GuidedDiffusionFlags& flags, bool super_resolution);
// The flags' noise-aware classifier (EncoderUNetModel of create_classifier: 1000 classes,
// num_head_channels 64, legacy attention order in the blocks).
ClassifierConfig classifier_config_from_flags(const GuidedDiffusionFlags& flags);
DiffusionSettings diffusion_settings_from_flags(const GuidedDiffusionFlags& flags);
GuidedDiffusionSampling sampling_from_flags(const GuidedDiffusionFlags& flags);

// Every flag guidiff knows, with its default and what it becomes ("name", "default", "maps
// to"), for documentation and `guidiff convert --help`-style listings.
std::vector<std::vector<std::string>> guided_diffusion_flag_table();

}  // namespace guidiff
