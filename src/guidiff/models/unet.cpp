// The ADM UNet and its encoder-half classifier (see unet.hpp).
#include "guidiff/models/unet.hpp"

#include <algorithm>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/conditioning.hpp"

namespace guidiff {
namespace {

// Block constructors name the field (norm_groups, num_heads, ...); add which config.
template <typename Build>
void with_context(const std::string& context, Build build) {
  try {
    build();
  } catch (const InputError& error) {
    const std::string message = error.what();
    if (message.rfind(context, 0) == 0) throw;
    throw InputError(context + ": " + message);
  }
}

namespace F = torch::nn::functional;

void check_image_input(const torch::Tensor& x, const UNetBackboneConfig& config) {
  const int64_t rate = int64_t{1} << (config.num_levels() - 1);
  if (!x.defined() || x.dim() != 4 || x.size(1) != config.in_channels || x.size(2) % rate != 0 ||
      x.size(3) % rate != 0) {
    throw InputError("x must be [N, " + std::to_string(config.in_channels) +
                     ", H, W] with H and W divisible by " + std::to_string(rate) + ", got " +
                     (x.defined() ? c10::str(x.sizes()) : std::string("nothing")));
  }
}

// emb = time_embed(sinusoidal(t', model_channels)) (guided-diffusion UNetModel.forward).
torch::Tensor embed_time(torch::nn::Sequential& time_embed, const UNetBackboneConfig& config,
                         const torch::Tensor& time, const torch::Tensor& x) {
  const auto t = config.time.embedding_time(time, x.size(0)).to(x.device());
  return time_embed->forward(sinusoidal_embedding(t, config.model_channels).to(x.scalar_type()));
}

// The low-resolution conditioning of a super-resolution UNet, upsampled to x's size
// (guided-diffusion's SuperResModel: F.interpolate(low_res, (H, W), mode="bilinear")).
torch::Tensor upsampled_low_res(const torch::Tensor& low_res, const torch::Tensor& x) {
  if (!low_res.defined() || low_res.dim() != 4 || low_res.size(0) != x.size(0) || low_res.size(1) != x.size(1)) {
    throw InputError("low_res must be [" + std::to_string(x.size(0)) + ", " + std::to_string(x.size(1)) +
                     ", h, w] for this super-resolution model, got " +
                     (low_res.defined() ? c10::str(low_res.sizes()) : std::string("nothing")));
  }
  return F::interpolate(low_res.to(x.scalar_type()), F::InterpolateFuncOptions()
                                                         .size(std::vector<int64_t>{x.size(2), x.size(3)})
                                                         .mode(torch::kBilinear)
                                                         .align_corners(false));
}

// The spatial pools' input: the spatial mean of every input block's output and of the middle
// block's, concatenated ([N, sum of their channels]).
torch::Tensor spatial_means(DownPath& down, const torch::Tensor& x, const torch::Tensor& emb) {
  std::vector<torch::Tensor> outputs;
  const auto bottom = down.forward(x, emb, &outputs);
  outputs.push_back(bottom);
  std::vector<torch::Tensor> means;
  for (const auto& h : outputs) means.push_back(h.mean({2, 3}));
  return torch::cat(means, 1);
}

}  // namespace

UNetModelImpl::UNetModelImpl(const UNetConfig& config) : config_(config) {
  config_.validate();
  with_context("unet config", [&] {
    time_embed_ = register_module("time_embed", make_time_embed(config_));
    if (config_.num_classes > 0) {
      label_emb_ = register_module(
          "label_emb", torch::nn::Embedding(config_.label_rows(), config_.time_embed_dim()));
    }
    down_ = build_down_path(config_, config_.network_in_channels());
    register_module("input_blocks", down_.input_blocks);
    register_module("middle_block", down_.middle_block);

    // Up path: per level (deepest first) num_res_blocks + 1 residual blocks, each taking the
    // concatenation with one skip; attention where the down path had it; upsample at the
    // end of every level but the top.
    const auto attention_rates = config_.attention_downsample_rates();
    auto output_blocks = torch::nn::ModuleList();
    std::vector<int64_t> skip_channels = down_.block_channels;
    int64_t ch = down_.channels;
    int64_t rate = down_.downsample_rate;
    for (int64_t level = config_.num_levels() - 1; level >= 0; --level) {
      const int64_t width = config_.level_channels(level);
      for (int64_t i = 0; i <= config_.num_res_blocks; ++i) {
        const int64_t skip = skip_channels.back();
        skip_channels.pop_back();
        TimestepSequential block;
        block->append(ResBlock(res_block_options(config_, ch + skip, width)));
        ch = width;
        if (std::find(attention_rates.begin(), attention_rates.end(), rate) !=
            attention_rates.end()) {
          block->append(make_attention_block(config_, ch, config_.upsample_heads_setting()));
        }
        if (level > 0 && i == config_.num_res_blocks) {
          if (config_.resblock_updown) {
            block->append(ResBlock(res_block_options(config_, ch, ch, Resample::up)));
          } else {
            block->append(Upsample(ch, config_.conv_resample));
          }
          rate /= 2;
        }
        output_blocks->push_back(block);
        output_blocks_.push_back(block);
      }
    }
    register_module("output_blocks", output_blocks);

    out_conv_ =
        torch::nn::Conv2d(torch::nn::Conv2dOptions(ch, config_.out_channels(), 3).padding(1));
    zero_parameters(*out_conv_);  // the model starts by predicting eps = 0
    out_norm_ = make_group_norm(config_.norm_groups, ch);
    out_ = register_module("out", torch::nn::Sequential(out_norm_, torch::nn::SiLU(), out_conv_));
  });
}

torch::Tensor UNetModelImpl::forward(const torch::Tensor& x, const torch::Tensor& time,
                                     const torch::Tensor& y, const torch::Tensor& low_res) {
  check_image_input(x, config_);
  auto emb = embed_time(time_embed_, config_, time, x);
  if (label_emb_) {
    emb = emb + label_emb_(class_labels_or_null(y, config_.num_classes, x.size(0), x.device(), config_.null_class));
  }
  const auto input = config_.is_super_resolution() ? torch::cat({x, upsampled_low_res(low_res, x)}, 1) : x;
  std::vector<torch::Tensor> skips;
  auto h = down_.forward(input, emb, &skips);
  for (auto& block : output_blocks_) {
    h = torch::cat({h, skips.back()}, 1);
    skips.pop_back();
    h = block->forward(h, emb);
  }
  // Contiguous whatever layout the convolutions chose (channels-last under bf16 sampling).
  return out_conv_(out_norm_->forward_silu(h)).contiguous();
}

EncoderUNetModelImpl::EncoderUNetModelImpl(const ClassifierConfig& config) : config_(config) {
  config_.validate();
  with_context("classifier config", [&] {
    time_embed_ = register_module("time_embed", make_time_embed(config_));
    down_ = build_down_path(config_, config_.in_channels);
    register_module("input_blocks", down_.input_blocks);
    register_module("middle_block", down_.middle_block);
    const int64_t ch = down_.channels;
    // guided-diffusion's spatial pools: an MLP with a 2048-wide hidden layer.
    constexpr int64_t kSpatialHidden = 2048;
    int64_t features = ch;  // the spatial means' width: every input block, then the middle
    for (const int64_t block_channels : down_.block_channels) features += block_channels;
    if (config_.pool == "spatial") {
      out_ = torch::nn::Sequential(torch::nn::Linear(features, kSpatialHidden), torch::nn::ReLU(),
                                   torch::nn::Linear(kSpatialHidden, config_.num_classes));
    } else if (config_.pool == "spatial_v2") {
      out_ = torch::nn::Sequential(torch::nn::Linear(features, kSpatialHidden),
                                   make_group_norm(config_.norm_groups, kSpatialHidden), torch::nn::SiLU(),
                                   torch::nn::Linear(kSpatialHidden, config_.num_classes));
    } else if (config_.pool == "adaptive") {
      auto head = torch::nn::Conv2d(torch::nn::Conv2dOptions(ch, config_.num_classes, 1));
      zero_parameters(*head);
      out_ = torch::nn::Sequential(
          make_group_norm(config_.norm_groups, ch), torch::nn::SiLU(),
          torch::nn::AdaptiveAvgPool2d(torch::nn::AdaptiveAvgPool2dOptions({1, 1})), head,
          torch::nn::Flatten());
    } else {
      const int64_t heads = attention_heads(ch, config_.num_heads, config_.num_head_channels);
      out_ = torch::nn::Sequential(make_group_norm(config_.norm_groups, ch), torch::nn::SiLU(),
                                   AttentionPool2d(config_.image_size / down_.downsample_rate, ch,
                                                   heads, config_.num_classes));
    }
    register_module("out", out_);
  });
}

torch::Tensor EncoderUNetModelImpl::forward(const torch::Tensor& x, const torch::Tensor& time) {
  check_image_input(x, config_);
  if (config_.pool == "attention" &&
      (x.size(2) != config_.image_size || x.size(3) != config_.image_size)) {
    throw InputError("x must be " + std::to_string(config_.image_size) + "x" +
                     std::to_string(config_.image_size) +
                     " for this classifier (attention pooling has a fixed size), got " +
                     c10::str(x.sizes()));
  }
  const auto emb = embed_time(time_embed_, config_, time, x);
  if (config_.pool == "spatial" || config_.pool == "spatial_v2") return out_->forward(spatial_means(down_, x, emb));
  return out_->forward(down_.forward(x, emb, nullptr));
}

}  // namespace guidiff
