// The building blocks of the ADM UNet (Dhariwal & Nichol 2021, Appendix A; the layout of
// openai/guided-diffusion's unet.py). Child modules are registered under guided-diffusion's
// names and positions (in_layers.2, out_layers.3, qkv, proj_out, op, conv, ...) so that
// parameter names, and therefore checkpoints, correspond one to one.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "guidiff/models/unet_config.hpp"
#include "guidiff/models/winograd_conv.hpp"

namespace guidiff {

// GroupNorm computed in float32 for 16-bit inputs (bf16, half), the result cast back to them
// (guided-diffusion's GroupNorm32). Under bf16 autocast the convolutions hand it bfloat16
// activations, which libtorch's GroupNorm would refuse next to its float32 weights; the
// statistics are also more accurate in float32. Same parameters as torch::nn::GroupNorm.
class Float32GroupNormImpl : public torch::nn::GroupNormImpl {
 public:
  using torch::nn::GroupNormImpl::GroupNormImpl;
  torch::Tensor forward(const torch::Tensor& input);
  // silu(forward(input) * (1 + scale) + shift), or silu(forward(input)) when scale and shift
  // are undefined (one without the other is an InputError); they hold one value per sample and
  // channel ([N, C, 1, ...]: ResBlock's scale-shift norm). For 16-bit inputs when no gradient
  // is recorded, blocks of groups are normalised, scaled and activated in float32 while they
  // sit in cache and rounded once at the end; channels-last bf16 inputs on the CPU take
  // guidiff's kernels for that (norm_kernels.hpp), recorded or not, with their own backward.
  // Otherwise (float32 inputs, recorded NCHW 16-bit ones) the separate operations.
  torch::Tensor forward_silu(const torch::Tensor& input, const torch::Tensor& scale = {},
                             const torch::Tensor& shift = {});
};
TORCH_MODULE(Float32GroupNorm);

// GroupNorm(groups, channels), eps 1e-5 (guided-diffusion's normalization() with 32 groups).
// Throws InputError naming norm_groups unless groups divides channels.
Float32GroupNorm make_group_norm(int64_t groups, int64_t channels);
// Sets every parameter of `module` to zero (guided-diffusion's zero_module): the layers that
// end a residual branch start as the identity map.
void zero_parameters(torch::nn::Module& module);

enum class Resample { none, up, down };
// Nearest-neighbour x2 upsampling and 2x2 average pooling (parameter-free resampling).
torch::Tensor upsample_nearest(const torch::Tensor& x);
torch::Tensor downsample_average(const torch::Tensor& x);

struct ResBlockOptions {
  int64_t channels = 0;      // input channels
  int64_t out_channels = 0;  // output channels (a 1x1 conv skip when they differ)
  int64_t emb_channels = 0;  // time(+class) embedding width
  double dropout = 0.0;
  bool use_scale_shift_norm = false;
  int64_t norm_groups = 32;
  Resample resample = Resample::none;  // up/down-sampling residual block (BigGAN style)
};

// h = in_layers(x) (GroupNorm, SiLU, conv3x3); add the embedding projected by emb_layers
// (or apply it as GroupNorm(h) * (1 + scale) + shift); out_layers (GroupNorm, SiLU,
// Dropout, zero-init conv3x3); return skip_connection(x) + h.
class ResBlockImpl : public torch::nn::Module {
 public:
  explicit ResBlockImpl(const ResBlockOptions& options);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);

 private:
  ResBlockOptions options_;
  Float32GroupNorm in_norm_{nullptr};
  Conv3x3 in_conv_{nullptr};
  torch::nn::Linear emb_linear_{nullptr};
  Float32GroupNorm out_norm_{nullptr};
  torch::nn::Dropout dropout_{nullptr};
  Conv3x3 out_conv_{nullptr};
  torch::nn::Conv2d skip_conv_{nullptr};  // null: identity skip
};
TORCH_MODULE(ResBlock);

// Multi-head QKV self-attention over a [N, 3 H C, T] qkv tensor -> [N, H C, T], softmax of
// (q / c^(1/4)) . (k / c^(1/4)) over keys (Vaswani et al. 2017 Eq. 1, scaled on both
// sides as guided-diffusion does for fp16 stability).
// Legacy layout: heads first, each head's channels hold [q; k; v] (QKVAttentionLegacy).
torch::Tensor qkv_attention_legacy(const torch::Tensor& qkv, int64_t heads);
// New layout: [q; k; v] first, each split into heads (QKVAttention).
torch::Tensor qkv_attention(const torch::Tensor& qkv, int64_t heads);

// Heads for a `channels`-wide attention layer: channels / num_head_channels when that is > 0,
// else num_heads. Throws InputError naming the field whose value does not divide channels.
int64_t attention_heads(int64_t channels, int64_t num_heads, int64_t num_head_channels);

// x + proj_out(attention(qkv(norm(x)))) over all spatial positions; proj_out zero-init.
class AttentionBlockImpl : public torch::nn::Module {
 public:
  AttentionBlockImpl(int64_t channels, int64_t heads, bool new_attention_order,
                     int64_t norm_groups);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t heads_;
  bool new_attention_order_;
  Float32GroupNorm norm_{nullptr};
  torch::nn::Conv1d qkv_{nullptr};
  torch::nn::Conv1d proj_out_{nullptr};
};
TORCH_MODULE(AttentionBlock);

// CLIP's attention pooling: the spatial mean, prepended as an extra token, attends to all
// positions (with a learned positional embedding); its output, projected, is the result.
// [N, C, S, S] -> [N, output_dim].
class AttentionPool2dImpl : public torch::nn::Module {
 public:
  AttentionPool2dImpl(int64_t spatial_dim, int64_t embed_dim, int64_t heads, int64_t output_dim);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t heads_;
  torch::Tensor positional_embedding_;  // [C, S*S + 1]
  torch::nn::Conv1d qkv_proj_{nullptr};
  torch::nn::Conv1d c_proj_{nullptr};
};
TORCH_MODULE(AttentionPool2d);

// Halve (stride-2 conv "op", or average pooling) / double (nearest, then conv "conv").
class DownsampleImpl : public torch::nn::Module {
 public:
  DownsampleImpl(int64_t channels, bool use_conv);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d op_{nullptr};
};
TORCH_MODULE(Downsample);

class UpsampleImpl : public torch::nn::Module {
 public:
  UpsampleImpl(int64_t channels, bool use_conv);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  Conv3x3 conv_{nullptr};
};
TORCH_MODULE(Upsample);

// A sequence of layers registered as "0", "1", ...; residual blocks get the embedding, the
// others only x (guided-diffusion's TimestepEmbedSequential).
class TimestepSequentialImpl : public torch::nn::Module {
 public:
  template <typename Layer>
  void append(Layer layer) {
    auto registered = register_module(std::to_string(steps_.size()), layer);
    steps_.push_back([registered](const torch::Tensor& x, const torch::Tensor&) mutable {
      return registered->forward(x);
    });
  }
  void append(ResBlock block);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& emb);

 private:
  std::vector<std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>> steps_;
};
TORCH_MODULE(TimestepSequential);

// The down half shared by the UNet and the classifier: input_blocks (conv in; per level
// num_res_blocks residual blocks [+ attention]; a downsampling layer between levels) and the
// middle block (ResBlock, AttentionBlock, ResBlock). The caller registers both modules.
struct DownPath {
  torch::nn::ModuleList input_blocks{nullptr};  // to register as "input_blocks"
  std::vector<TimestepSequential> blocks;       // the same blocks, typed
  TimestepSequential middle_block{nullptr};     // to register as "middle_block"
  std::vector<int64_t> block_channels;          // output channels of each input block (skip widths)
  int64_t channels = 0;                         // width at the bottom
  int64_t downsample_rate = 1;                  // 2^(levels-1)

  // Input blocks, then the middle block; each input block's output is appended to `skips`
  // when given (the UNet's skip connections).
  torch::Tensor forward(torch::Tensor h, const torch::Tensor& emb,
                        std::vector<torch::Tensor>* skips);
};
// `input_channels`: channels of the network's input (in_channels, or twice that for a
// super-resolution UNet, whose input carries the upsampled low-resolution image too).
DownPath build_down_path(const UNetBackboneConfig& config, int64_t input_channels);

// The residual block options of `config` from `channels` to `out_channels`.
ResBlockOptions res_block_options(const UNetBackboneConfig& config, int64_t channels,
                                  int64_t out_channels, Resample resample = Resample::none);
// An attention block of `config` over `channels`; heads from num_head_channels, else
// `num_heads` (config.num_heads when -1; the UNet's up path passes num_heads_upsample).
AttentionBlock make_attention_block(const UNetBackboneConfig& config, int64_t channels, int64_t num_heads = -1);
// time_embed: Linear(model_channels, 4 mc), SiLU, Linear(4 mc, 4 mc).
torch::nn::Sequential make_time_embed(const UNetBackboneConfig& config);

}  // namespace guidiff
