// Configurations of the ADM UNet (Dhariwal & Nichol 2021, openai/guided-diffusion UNetModel)
// and its encoder half used as a noise-aware classifier (EncoderUNetModel). Field names
// follow guided-diffusion's constructor arguments and script flags; JSON configs use them
// as keys, every key optional (the defaults below), unknown keys rejected.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/models/conditioning.hpp"
#include "guidiff/models/config_fields.hpp"

namespace guidiff {

// What the UNet and the classifier share: the down path, the middle block, time input.
struct UNetBackboneConfig {
  int64_t image_size = 32;  // side of the square training images
  int64_t in_channels = 3;
  int64_t model_channels = 64;  // the base width; the time embedding is 4x this
  // Channels per level as multiples of model_channels, truncated to whole channels as
  // guided-diffusion does (its 512x512 models start at 0.5).
  std::vector<double> channel_mult = {1, 2, 2};
  int64_t num_res_blocks = 2;                     // residual blocks per level (down path)
  // Feature-map sides (in pixels, like guided-diffusion's --attention_resolutions flag) at
  // which residual blocks are followed by self-attention, e.g. {16, 8} for 32x32 images.
  // The middle block always has attention.
  std::vector<int64_t> attention_resolutions = {16};
  double dropout = 0.0;
  bool conv_resample = true;             // learned 3x3 conv in Down/Upsample
  int64_t num_heads = 1;                 // heads per attention block ...
  int64_t num_head_channels = -1;        // ... unless this is > 0: heads = C / this
  bool use_scale_shift_norm = false;     // FiLM-like GroupNorm(h) * (1 + scale) + shift
  bool resblock_updown = false;          // residual blocks (not plain layers) resample
  bool use_new_attention_order = false;  // QKVAttention (split qkv first) vs legacy
  int64_t norm_groups = 32;              // GroupNorm groups; must divide every width
  TimeInputConfig time;                  // discrete timesteps or log-SNR lambda

  int64_t time_embed_dim() const { return 4 * model_channels; }
  int64_t num_levels() const { return static_cast<int64_t>(channel_mult.size()); }
  // int(channel_mult[level] * model_channels).
  int64_t level_channels(int64_t level) const;
  // Downsampling factors (1, 2, 4, ...) of the levels with attention.
  std::vector<int64_t> attention_downsample_rates() const;

  // Throws InputError "<context>: field "<name>" ..." for the first invalid field. Widths
  // that norm_groups or the head settings must divide are checked when the model is built.
  void validate(const std::string& context) const;
  void read(ConfigFields& fields);
  void write(nlohmann::json& object) const;
};

struct UNetConfig : UNetBackboneConfig {
  int64_t num_classes = 0;   // 0: unconditional
  // label_emb rows: num_classes + 1 with the null class (guidiff's models, for classifier-free
  // guidance), num_classes without (guided-diffusion's class-conditional models).
  bool null_class = true;
  bool learn_sigma = false;  // output 2 * in_channels: eps, then the variance output
  int64_t num_heads_upsample = -1;  // heads in the up path's attention; -1: num_heads
  // Super-resolution (guided-diffusion's SuperResModel): > 0 is the side of the low-resolution
  // image the model is conditioned on; it is upsampled bilinearly to the sample's size and
  // concatenated to x_t, so the network takes 2 * in_channels channels.
  int64_t low_res_size = 0;

  bool is_super_resolution() const { return low_res_size > 0; }
  int64_t network_in_channels() const { return in_channels * (is_super_resolution() ? 2 : 1); }
  int64_t out_channels() const { return in_channels * (learn_sigma ? 2 : 1); }
  int64_t label_rows() const { return num_classes + (null_class ? 1 : 0); }
  int64_t upsample_heads_setting() const { return num_heads_upsample == -1 ? num_heads : num_heads_upsample; }
  void validate() const;  // context "unet config"
};

struct ClassifierConfig : UNetBackboneConfig {
  int64_t num_classes = 10;        // logits per sample
  // "attention" (AttentionPool2d), "adaptive" (mean), or "spatial" / "spatial_v2" (an MLP on
  // the spatial means of every input block and the middle block; v2 with GroupNorm and SiLU).
  std::string pool = "attention";

  void validate() const;  // context "classifier config"
};

// JSON (de)serialisation: to_json writes every field (null_class, num_heads_upsample and
// low_res_size only when they differ from their defaults); from_json reads the given ones over
// the defaults, validates, and throws InputError naming an unknown, mistyped or invalid field.
void to_json(nlohmann::json& object, const UNetConfig& config);
void from_json(const nlohmann::json& object, UNetConfig& config);
void to_json(nlohmann::json& object, const ClassifierConfig& config);
void from_json(const nlohmann::json& object, ClassifierConfig& config);

}  // namespace guidiff
