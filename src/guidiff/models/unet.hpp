// The ADM UNet denoiser and its encoder-half classifier (Dhariwal & Nichol 2021, "Diffusion
// Models Beat GANs on Image Synthesis", Sec. 3 and Appendix A), laid out as
// openai/guided-diffusion's UNetModel / EncoderUNetModel so parameter names match:
//   time_embed.{0,2}, label_emb, input_blocks.<i>.<j>..., middle_block.{0,1,2}...,
//   output_blocks.<i>.<j>..., out.{0,2} (UNet) / out.{0,3} or out.2.* (classifier).
// label_emb has num_classes + 1 rows, the last being the null class of classifier-free
// guidance, unless the config says null_class false (guided-diffusion's num_classes rows).
// A config with low_res_size > 0 is guided-diffusion's SuperResModel.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "guidiff/models/unet_blocks.hpp"
#include "guidiff/models/unet_config.hpp"

namespace guidiff {

class UNetModelImpl : public torch::nn::Module {
 public:
  // Throws InputError naming the config field at fault (validate(), or a width that
  // norm_groups / num_heads / num_head_channels does not divide).
  explicit UNetModelImpl(const UNetConfig& config);

  // x: float [N, in_channels, H, W] with H and W divisible by 2^(levels-1); time per the
  // config's TimeInputConfig; y: int64 [N] in [0, num_classes], num_classes meaning null.
  // An undefined y on a conditional model means the null class (an error without one); an
  // unconditional model ignores y. A super-resolution model needs low_res [N, in_channels,
  // h, w], upsampled bilinearly (half-pixel centres, no antialiasing) to H x W and
  // concatenated to x; others ignore it. Returns [N, out_channels, H, W]. Throws InputError
  // naming x, time, y or low_res.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& time,
                        const torch::Tensor& y = {}, const torch::Tensor& low_res = {});

  const UNetConfig& config() const { return config_; }

 private:
  UNetConfig config_;
  torch::nn::Sequential time_embed_{nullptr};
  torch::nn::Embedding label_emb_{nullptr};
  DownPath down_;
  std::vector<TimestepSequential> output_blocks_;
  // out = Sequential(GroupNorm, SiLU, conv), registered for its parameter names; the forward
  // runs the norm and SiLU as one (Float32GroupNormImpl::forward_silu), then the conv.
  torch::nn::Sequential out_{nullptr};
  Float32GroupNorm out_norm_{nullptr};
  torch::nn::Conv2d out_conv_{nullptr};
};
TORCH_MODULE(UNetModel);

class EncoderUNetModelImpl : public torch::nn::Module {
 public:
  // Throws InputError as UNetModelImpl does. Attention pooling uses num_head_channels, or
  // num_heads when that is -1. Parameter names of the pools: out.2.* (attention), out.3.*
  // (adaptive), out.0.* / out.2.* (spatial), out.0.* / out.1.* / out.3.* (spatial_v2).
  explicit EncoderUNetModelImpl(const ClassifierConfig& config);

  // x: [N, in_channels, H, W] (H = W = image_size for attention pooling); -> logits
  // [N, num_classes], differentiable in x.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& time);

  const ClassifierConfig& config() const { return config_; }

 private:
  ClassifierConfig config_;
  torch::nn::Sequential time_embed_{nullptr};
  DownPath down_;
  torch::nn::Sequential out_{nullptr};
};
TORCH_MODULE(EncoderUNetModel);

}  // namespace guidiff
