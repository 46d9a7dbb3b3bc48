// ADM UNet building blocks (see unet_blocks.hpp).
#include "guidiff/models/unet_blocks.hpp"

#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>

#include "guidiff/core/errors.hpp"
#include "guidiff/models/attention.hpp"
#include "guidiff/models/norm_kernels.hpp"

namespace guidiff {
namespace {

namespace F = torch::nn::functional;

// Broadcasts an [N, C] embedding over the spatial dimensions of h.
torch::Tensor broadcast_like(torch::Tensor emb, const torch::Tensor& h) {
  while (emb.dim() < h.dim()) emb = emb.unsqueeze(-1);
  return emb;
}

void check_qkv(const torch::Tensor& qkv, int64_t heads) {
  if (qkv.dim() != 3 || qkv.size(1) % (3 * heads) != 0) {
    throw ModelError("qkv attention: expected [N, 3 * " + std::to_string(heads) + " * C, T], got " +
                     c10::str(qkv.sizes()));
  }
}

}  // namespace

torch::Tensor Float32GroupNormImpl::forward(const torch::Tensor& input) {
  // float32 and float64 (the gradient checks) as they are, and a network converted to 16 bits
  // as a whole; only 16-bit activations next to wider weights (autocast) are widened.
  if (input.element_size() >= 4 || !weight.defined() || weight.scalar_type() == input.scalar_type()) {
    return torch::nn::GroupNormImpl::forward(input);
  }
  return torch::nn::GroupNormImpl::forward(input.to(torch::kFloat32)).to(input.scalar_type());
}

namespace {

// Groups are handled in blocks of about this many elements: large enough that each libtorch
// call's fixed cost is small against its work, small enough (1 MiB in float32) to stay in cache
// between the passes over a block.
constexpr int64_t kOnePassBlockElements = int64_t{1} << 18;

// silu((x - mean) * rstd * gain + offset) by blocks of whole groups: x in [N, C, ...] order
// (contiguous), gain and offset [N, C] in float32. Each block's statistics take two passes
// while it sits in cache.
torch::Tensor norm_silu_channels_first(const torch::Tensor& input, const torch::Tensor& gain,
                                       const torch::Tensor& offset, int64_t groups, double eps) {
  const auto x = input.contiguous();
  const int64_t batch = x.size(0), channels = x.size(1), per_group = channels / groups;
  const int64_t spatial = x.numel() / (batch * channels);
  const auto compute_options = x.options().dtype(torch::kFloat32);
  const auto gains = gain.reshape({batch * groups, per_group, 1});
  const auto offsets = offset.reshape({batch * groups, per_group, 1});

  auto out = torch::empty_like(x, torch::MemoryFormat::Contiguous);
  const int64_t all_groups = batch * groups, group_elements = per_group * spatial;
  const auto x_groups = x.view({all_groups, per_group, spatial});
  const auto out_groups = out.view({all_groups, per_group, spatial});
  const int64_t block = std::max<int64_t>(1, kOnePassBlockElements / group_elements);
  // One block after another; each libtorch operation on a block spreads over the threads
  // itself. (at::parallel_for would run the blocks serially anyway: this file is compiled
  // without OpenMP.)
  torch::NoGradGuard no_grad;
  auto widened = torch::empty({block, per_group, spatial}, compute_options);
  for (int64_t first = 0; first < all_groups; first += block) {
    const int64_t count = std::min(block, all_groups - first);
    auto centred = widened.narrow(0, 0, count).copy_(x_groups.narrow(0, first, count));
    const auto rows = centred.view({count, group_elements});
    rows.sub_(rows.mean(1, true));
    const auto rstd = (rows.square().mean(1, true) + eps).rsqrt().view({count, 1, 1});
    centred.mul_(gains.narrow(0, first, count) * rstd).add_(offsets.narrow(0, first, count));
    torch::silu_(centred);
    out_groups.narrow(0, first, count).copy_(centred);
  }
  return out;
}

// The same for a channels-last bf16 [N, C, H, W] input on the CPU (the layout of bf16 sampling:
// store_lowered_weights_in_bf16), by the kernels of norm_kernels.hpp; the result is
// channels-last too. Recorded, it is its own autograd node (the classifier's guidance gradient
// under --bf16): its backward is norm_kernels::normalize_silu_backward, where libtorch's
// operations would record a float32 copy, the norm, the scale, the shift and the SiLU, and
// GroupNorm's backward would copy channels-last tensors to NCHW. (Its backward is not itself
// recorded: no second derivatives.)
class ChannelsLastNormSilu : public torch::autograd::Function<ChannelsLastNormSilu> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& x,
                               const torch::Tensor& gain, const torch::Tensor& offset,
                               int64_t groups, double eps) {
    const auto shape = shape_of(x, groups);
    // Row 0 the means, row 1 the rstds.
    const auto statistics =
        torch::empty({2, shape.batch * groups}, x.options().dtype(torch::kFloat32));
    float* mean = statistics.data_ptr<float>();
    norm_kernels::group_statistics(bits(x), shape, eps, mean, mean + shape.batch * groups);
    auto out = channels_last_like(x);
    norm_kernels::normalize_silu(bits(x), shape, mean, mean + shape.batch * groups,
                                 gain.data_ptr<float>(), offset.data_ptr<float>(), bits(out));
    if (context) {
      context->save_for_backward({x, gain, offset, statistics});
      context->saved_data["groups"] = groups;
    }
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list gradients) {
    const auto saved = context->get_saved_variables();  // x, gain, offset, statistics
    const auto& x = saved[0];
    const auto shape = shape_of(x, context->saved_data["groups"].toInt());
    const auto dy = as_channels_last(gradients[0].to(torch::kBFloat16));
    auto dx = channels_last_like(x);
    auto gain_gradient = torch::empty_like(saved[1]), offset_gradient = torch::empty_like(saved[2]);
    const float* mean = saved[3].data_ptr<float>();
    norm_kernels::normalize_silu_backward(
        bits(x), bits(dy), shape, mean, mean + shape.batch * shape.groups,
        saved[1].data_ptr<float>(), saved[2].data_ptr<float>(), bits(dx),
        gain_gradient.data_ptr<float>(), offset_gradient.data_ptr<float>());
    return {dx, gain_gradient, offset_gradient, torch::Tensor(), torch::Tensor()};
  }

 private:
  static norm_kernels::ChannelsLastShape shape_of(const torch::Tensor& x, int64_t groups) {
    return {x.size(0), x.size(2) * x.size(3), x.size(1), groups};
  }
  template <typename Bits>
  static Bits* raw(const torch::Tensor& t) {
    return reinterpret_cast<Bits*>(t.data_ptr<at::BFloat16>());
  }
  static const uint16_t* bits(const torch::Tensor& t) { return raw<const uint16_t>(t); }
  static uint16_t* bits(torch::Tensor& t) { return raw<uint16_t>(t); }
  // Channels-last with the strides libtorch itself gives that layout (empty_like would copy
  // x's, whose first stride may be anything at a batch of one: see AttentionBlock).
  static torch::Tensor channels_last_like(const torch::Tensor& x) {
    return torch::empty(x.sizes(), x.options().memory_format(torch::MemoryFormat::ChannelsLast));
  }
  // The kernels read [N, H, W, C] in order: an incoming gradient in another layout is copied.
  static torch::Tensor as_channels_last(const torch::Tensor& t) {
    return t.is_contiguous(torch::MemoryFormat::ChannelsLast)
               ? t
               : t.contiguous(torch::MemoryFormat::ChannelsLast);
  }
};

}  // namespace

torch::Tensor Float32GroupNormImpl::forward_silu(const torch::Tensor& input,
                                                 const torch::Tensor& scale,
                                                 const torch::Tensor& shift) {
  const int64_t groups = options.num_groups();
  if (scale.defined() != shift.defined()) {
    throw InputError("GroupNorm's scale-shift needs both a scale and a shift, got only the " +
                     std::string(scale.defined() ? "scale" : "shift"));
  }
  const bool has_film = scale.defined();
  const auto per_sample_channel = [&](const torch::Tensor& t) {
    return !t.defined() || t.numel() == input.size(0) * input.size(1);
  };
  // float32 keeps libtorch's GroupNorm: a trial of this form in float32 ran 0.72-1.08x as fast
  // (docs/performance.md), while for bf16 it replaces casts and libtorch's slow bf16 SiLU.
  // A wrong channel count takes the separate operations, whose GroupNorm names it.
  const bool fits = input.dim() >= 2 && input.is_floating_point() && input.element_size() < 4 &&
                    input.size(1) == options.num_channels() && per_sample_channel(scale) &&
                    per_sample_channel(shift);
  const bool channels_last = fits && input.dim() == 4 &&
                             input.scalar_type() == torch::kBFloat16 && input.device().is_cpu() &&
                             input.size(1) % norm_kernels::kLanes == 0 && !input.is_contiguous() &&
                             input.is_contiguous(torch::MemoryFormat::ChannelsLast);
  // The channels-first form does not record gradients; the channels-last one does.
  const bool records = torch::autograd::compute_requires_grad(input, weight, bias, scale, shift);
  if (!channels_last && !(fits && !records)) {
    auto normalised = forward(input);
    if (has_film) normalised = normalised * (1 + scale) + shift;
    return torch::silu(normalised);
  }

  // GroupNorm (Wu & He 2018, Eq. 1) with its per-channel affine and the FiLM folded into one
  // gain and offset per channel: silu(((x - mean) * rstd * w + b) * (1 + s) + t)
  //   = silu((x - mean) * rstd * gain + offset), gain = w (1 + s), offset = b (1 + s) + t.
  // The mean and variance are centred (two passes over data in cache), as accurate as
  // libtorch's GroupNorm. The input is widened to float32 once and the result rounded once,
  // where the separate operations round after the norm, the scale, the shift and the SiLU.
  const int64_t batch = input.size(0), channels = input.size(1);
  const auto compute_options = input.options().dtype(torch::kFloat32);
  // (Recorded where the channels-last node records: the gradients reach weight, bias, scale
  // and shift through these operations.)
  const auto per_channel = [&](const torch::Tensor& t, double fill) {
    return t.defined() ? t.to(torch::kFloat32).reshape({1, channels})
                       : torch::full({1, channels}, fill, compute_options);
  };
  auto gain = per_channel(weight, 1.0).expand({batch, channels});
  auto offset = per_channel(bias, 0.0).expand({batch, channels});
  if (has_film) {
    const auto factor = 1 + scale.to(torch::kFloat32).reshape({batch, channels});
    gain = gain * factor;
    offset = offset * factor + shift.to(torch::kFloat32).reshape({batch, channels});
  }
  if (!channels_last) return norm_silu_channels_first(input, gain, offset, groups, options.eps());
  gain = gain.contiguous();
  offset = offset.contiguous();
  if (records) return ChannelsLastNormSilu::apply(input, gain, offset, groups, options.eps());
  return ChannelsLastNormSilu::forward(nullptr, input, gain, offset, groups, options.eps());
}

Float32GroupNorm make_group_norm(int64_t groups, int64_t channels) {
  if (groups <= 0 || channels % groups != 0) {
    throw InputError("norm_groups = " + std::to_string(groups) + " does not divide the " +
                     std::to_string(channels) + " channels of a normalisation layer");
  }
  return Float32GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(1e-5));
}

void zero_parameters(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& parameter : module.parameters()) parameter.zero_();
}

torch::Tensor upsample_nearest(const torch::Tensor& x) {
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .scale_factor(std::vector<double>{2.0, 2.0})
                               .mode(torch::kNearest));
}

torch::Tensor downsample_average(const torch::Tensor& x) {
  return torch::avg_pool2d(x, {2, 2}, {2, 2});
}

// ---- ResBlock ----

ResBlockImpl::ResBlockImpl(const ResBlockOptions& options) : options_(options) {
  const int64_t out = options.out_channels;
  in_norm_ = make_group_norm(options.norm_groups, options.channels);
  in_conv_ = Conv3x3(options.channels, out);
  register_module("in_layers", torch::nn::Sequential(in_norm_, torch::nn::SiLU(), in_conv_));
  emb_linear_ =
      torch::nn::Linear(options.emb_channels, options.use_scale_shift_norm ? 2 * out : out);
  register_module("emb_layers", torch::nn::Sequential(torch::nn::SiLU(), emb_linear_));
  out_norm_ = make_group_norm(options.norm_groups, out);
  dropout_ = torch::nn::Dropout(torch::nn::DropoutOptions(options.dropout));
  out_conv_ = Conv3x3(out, out);
  zero_parameters(*out_conv_);
  register_module("out_layers",
                  torch::nn::Sequential(out_norm_, torch::nn::SiLU(), dropout_, out_conv_));
  if (out != options.channels) {
    skip_conv_ = register_module(
        "skip_connection", torch::nn::Conv2d(torch::nn::Conv2dOptions(options.channels, out, 1)));
  }
}

torch::Tensor ResBlockImpl::forward(const torch::Tensor& x_in, const torch::Tensor& emb) {
  torch::Tensor x = x_in;
  torch::Tensor h = in_norm_->forward_silu(x);
  // A resampling block resamples both branches after the first norm (guided-diffusion order).
  if (options_.resample == Resample::up) {
    h = upsample_nearest(h);
    x = upsample_nearest(x);
  } else if (options_.resample == Resample::down) {
    h = downsample_average(h);
    x = downsample_average(x);
  }
  h = in_conv_(h);
  const auto emb_out = broadcast_like(emb_linear_(torch::silu(emb)).to(h.scalar_type()), h);
  if (options_.use_scale_shift_norm) {
    const auto scale_shift = emb_out.chunk(2, 1);
    h = out_norm_->forward_silu(h, scale_shift[0], scale_shift[1]);
  } else {
    h = out_norm_->forward_silu(h + emb_out);
  }
  h = out_conv_(dropout_(h));
  // h first: where the two layouts differ, the sum takes the first operand's, and h is the
  // convolution's (channels-last under bf16 sampling). The sum itself is the same either way.
  return h + (skip_conv_ ? skip_conv_(x) : x);
}

// ---- attention ----

torch::Tensor qkv_attention_legacy(const torch::Tensor& qkv, int64_t heads) {
  check_qkv(qkv, heads);
  const int64_t batch = qkv.size(0), length = qkv.size(2);
  const int64_t ch = qkv.size(1) / (3 * heads);
  const auto parts = qkv.reshape({batch * heads, 3 * ch, length}).split(ch, 1);
  return attention(parts[0], parts[1], parts[2]).reshape({batch, heads * ch, length});
}

torch::Tensor qkv_attention(const torch::Tensor& qkv, int64_t heads) {
  check_qkv(qkv, heads);
  const int64_t batch = qkv.size(0), length = qkv.size(2);
  const int64_t ch = qkv.size(1) / (3 * heads);
  const auto parts = qkv.chunk(3, 1);
  const auto per_head = [&](const torch::Tensor& t) {
    return t.reshape({batch * heads, ch, length});
  };
  return attention(per_head(parts[0]), per_head(parts[1]), per_head(parts[2]))
      .reshape({batch, heads * ch, length});
}

int64_t attention_heads(int64_t channels, int64_t num_heads, int64_t num_head_channels) {
  if (num_head_channels > 0) {
    if (channels % num_head_channels != 0) {
      throw InputError("num_head_channels = " + std::to_string(num_head_channels) +
                       " does not divide the " + std::to_string(channels) +
                       " channels of an attention layer");
    }
    return channels / num_head_channels;
  }
  if (num_heads <= 0 || channels % num_heads != 0) {
    throw InputError("num_heads = " + std::to_string(num_heads) + " does not divide the " +
                     std::to_string(channels) + " channels of an attention layer");
  }
  return num_heads;
}

AttentionBlockImpl::AttentionBlockImpl(int64_t channels, int64_t heads, bool new_attention_order,
                                       int64_t norm_groups)
    : heads_(heads), new_attention_order_(new_attention_order) {
  norm_ = register_module("norm", make_group_norm(norm_groups, channels));
  qkv_ = register_module("qkv",
                         torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, 3 * channels, 1)));
  proj_out_ = register_module("proj_out",
                              torch::nn::Conv1d(torch::nn::Conv1dOptions(channels, channels, 1)));
  zero_parameters(*proj_out_);
}

torch::Tensor AttentionBlockImpl::forward(const torch::Tensor& x) {
  const auto sizes = x.sizes().vec();
  const auto flat = x.reshape({sizes[0], sizes[1], -1});
  const auto qkv = qkv_(norm_(flat));
  const auto h =
      new_attention_order_ ? qkv_attention(qkv, heads_) : qkv_attention_legacy(qkv, heads_);
  const auto out = (flat + proj_out_(h)).reshape(sizes);
  if (out.is_contiguous() == x.is_contiguous()) return out;
  // Back in x's layout (channels-last under bf16 sampling), so that the next block's
  // convolution and residual sum see one layout. Allocated as such rather than by
  // contiguous(ChannelsLast), which can give a batch of one a first stride that libtorch's
  // layout guess (suggest_memory_format) no longer reads as channels-last: the pooling and
  // upsampling after it would then return NCHW, and every convolution would copy its input.
  return torch::empty(sizes, out.options().memory_format(torch::MemoryFormat::ChannelsLast))
      .copy_(out);
}

AttentionPool2dImpl::AttentionPool2dImpl(int64_t spatial_dim, int64_t embed_dim, int64_t heads,
                                         int64_t output_dim)
    : heads_(heads) {
  positional_embedding_ = register_parameter(
      "positional_embedding", torch::randn({embed_dim, spatial_dim * spatial_dim + 1}) /
                                  std::sqrt(static_cast<double>(embed_dim)));
  qkv_proj_ = register_module(
      "qkv_proj", torch::nn::Conv1d(torch::nn::Conv1dOptions(embed_dim, 3 * embed_dim, 1)));
  c_proj_ = register_module("c_proj",
                            torch::nn::Conv1d(torch::nn::Conv1dOptions(embed_dim, output_dim, 1)));
}

torch::Tensor AttentionPool2dImpl::forward(const torch::Tensor& x) {
  auto h = x.reshape({x.size(0), x.size(1), -1});         // [N, C, HW]
  h = torch::cat({h.mean(-1, /*keepdim=*/true), h}, -1);  // [N, C, HW + 1]
  if (h.size(2) != positional_embedding_.size(1)) {
    throw InputError("attention pooling was built for " +
                     std::to_string(positional_embedding_.size(1) - 1) + " positions, got a " +
                     c10::str(x.sizes()) + " feature map (wrong image size?)");
  }
  h = h + positional_embedding_.unsqueeze(0).to(h.scalar_type());
  h = c_proj_(qkv_attention(qkv_proj_(h), heads_));
  return h.select(2, 0);
}

// ---- resampling layers ----

DownsampleImpl::DownsampleImpl(int64_t channels, bool use_conv) {
  if (use_conv) {
    op_ = register_module(
        "op",
        torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).stride(2).padding(1)));
  }
}

torch::Tensor DownsampleImpl::forward(const torch::Tensor& x) {
  return op_ ? op_(x) : downsample_average(x);
}

UpsampleImpl::UpsampleImpl(int64_t channels, bool use_conv) {
  if (use_conv) {
    conv_ = register_module("conv", Conv3x3(channels, channels));
  }
}

torch::Tensor UpsampleImpl::forward(const torch::Tensor& x) {
  const auto h = upsample_nearest(x);
  return conv_ ? conv_(h) : h;
}

// ---- containers ----

void TimestepSequentialImpl::append(ResBlock block) {
  auto registered = register_module(std::to_string(steps_.size()), block);
  steps_.push_back([registered](const torch::Tensor& x, const torch::Tensor& emb) mutable {
    return registered->forward(x, emb);
  });
}

torch::Tensor TimestepSequentialImpl::forward(torch::Tensor x, const torch::Tensor& emb) {
  for (auto& step : steps_) x = step(x, emb);
  return x;
}

ResBlockOptions res_block_options(const UNetBackboneConfig& config, int64_t channels,
                                  int64_t out_channels, Resample resample) {
  ResBlockOptions options;
  options.channels = channels;
  options.out_channels = out_channels;
  options.emb_channels = config.time_embed_dim();
  options.dropout = config.dropout;
  options.use_scale_shift_norm = config.use_scale_shift_norm;
  options.norm_groups = config.norm_groups;
  options.resample = resample;
  return options;
}

AttentionBlock make_attention_block(const UNetBackboneConfig& config, int64_t channels, int64_t num_heads) {
  const int64_t heads_setting = num_heads == -1 ? config.num_heads : num_heads;
  return AttentionBlock(channels, attention_heads(channels, heads_setting, config.num_head_channels),
                        config.use_new_attention_order, config.norm_groups);
}

torch::nn::Sequential make_time_embed(const UNetBackboneConfig& config) {
  const int64_t width = config.time_embed_dim();
  return torch::nn::Sequential(torch::nn::Linear(config.model_channels, width), torch::nn::SiLU(),
                               torch::nn::Linear(width, width));
}

DownPath build_down_path(const UNetBackboneConfig& config, int64_t input_channels) {
  const auto attention_rates = config.attention_downsample_rates();
  const auto has_attention = [&](int64_t rate) {
    return std::find(attention_rates.begin(), attention_rates.end(), rate) != attention_rates.end();
  };
  DownPath path;
  path.input_blocks = torch::nn::ModuleList();
  const auto add_block = [&](TimestepSequential block, int64_t channels) {
    path.input_blocks->push_back(block);
    path.blocks.push_back(block);
    path.block_channels.push_back(channels);
  };

  int64_t ch = config.level_channels(0);
  TimestepSequential conv_in;
  conv_in->append(
      torch::nn::Conv2d(torch::nn::Conv2dOptions(input_channels, ch, 3).padding(1)));
  add_block(conv_in, ch);
  int64_t rate = 1;
  for (int64_t level = 0; level < config.num_levels(); ++level) {
    const int64_t width = config.level_channels(level);
    for (int64_t i = 0; i < config.num_res_blocks; ++i) {
      TimestepSequential block;
      block->append(ResBlock(res_block_options(config, ch, width)));
      ch = width;
      if (has_attention(rate)) block->append(make_attention_block(config, ch));
      add_block(block, ch);
    }
    if (level + 1 < config.num_levels()) {
      TimestepSequential down;
      if (config.resblock_updown) {
        down->append(ResBlock(res_block_options(config, ch, ch, Resample::down)));
      } else {
        down->append(Downsample(ch, config.conv_resample));
      }
      add_block(down, ch);
      rate *= 2;
    }
  }
  path.middle_block = TimestepSequential();
  path.middle_block->append(ResBlock(res_block_options(config, ch, ch)));
  path.middle_block->append(make_attention_block(config, ch));
  path.middle_block->append(ResBlock(res_block_options(config, ch, ch)));
  path.channels = ch;
  path.downsample_rate = rate;
  return path;
}

torch::Tensor DownPath::forward(torch::Tensor h, const torch::Tensor& emb,
                                std::vector<torch::Tensor>* skips) {
  for (auto& block : blocks) {
    h = block->forward(h, emb);
    if (skips != nullptr) skips->push_back(h);
  }
  return middle_block->forward(h, emb);
}

}  // namespace guidiff
