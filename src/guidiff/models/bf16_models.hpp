// bfloat16 autocast around a network's forward pass, for faster sampling on CPUs with
// avx512_bf16 / AMX (and on CUDA): the convolutions and matrix products run in bf16 while
// the outputs handed to the sampler are float32 again, so every sampler and guidance rule
// still does its arithmetic in float32. GroupNorm stays float32 inside (Float32GroupNorm).
#pragma once
#include <memory>
#include <optional>

#include "guidiff/models/denoiser.hpp"

namespace guidiff {

// Where a bf16 wrapper's network keeps the weights autocast lowers (those of its convolutions
// and linear layers).
enum class Bf16Weights {
  // float32, as loaded: autocast casts them to bf16 at every forward, and the network stays
  // usable in float32 beside the wrapper.
  cast_per_call,
  // bf16, converted in place once when the wrapper is made (store_lowered_weights_in_bf16).
  // What `guidiff sample --bf16` does: a 296M-parameter model's forward no longer reads 1.2 GB
  // of float32 weights to write 0.6 GB of fresh bf16 copies, and the weights take half the
  // memory. On the CPU the 2-D convolutions' weights are also stored channels-last, which
  // makes the activations channels-last from layer to layer (no reorders around each oneDNN
  // convolution; GroupNorm by norm_kernels.hpp). The weights hold autocast's values, but the
  // results differ from cast_per_call's at bf16's precision: the convolutions and the
  // GroupNorm sum in another order. The network then runs only under bf16 autocast: a float32
  // forward of it fails on the mixed types.
  stored,
};

// Converts the weights and biases of `network`'s convolutions (Conv1d, Conv2d and Conv3x3) and
// linear layers to bf16 in place, the operands bf16 autocast would lower to bf16 at every call
// anyway, and makes the 4-D ones on the CPU channels-last; GroupNorm, embeddings and other
// parameters stay as they are. Parameters already so are left alone.
void store_lowered_weights_in_bf16(torch::nn::Module& network);

class Bf16Denoiser : public Denoiser {
 public:
  // Throws InputError for Bf16Weights::stored over a model with no libtorch network
  // (network_module() null: TorchScript models). `device` is where the network runs, whose
  // autocast is switched on: by default its first parameter's device, else x_t's. (The
  // samplers keep x_t on the CPU and the network adapters move it to a GPU network, so x_t's
  // device alone would switch on the CPU's autocast around a CUDA forward.)
  explicit Bf16Denoiser(std::shared_ptr<Denoiser> base,
                        Bf16Weights weights = Bf16Weights::cast_per_call,
                        std::optional<torch::Device> device = std::nullopt);
  // base->predict under bf16 autocast on the network's device; eps (and the variance output)
  // are returned in x_t's dtype.
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  bool has_null_class() const override { return base_->has_null_class(); }
  bool learns_variance() const override { return base_->learns_variance(); }
  torch::nn::Module* network_module() override { return base_->network_module(); }

 private:
  std::shared_ptr<Denoiser> base_;
  std::optional<torch::Device> device_;
};

// The classifier's forward under bf16 autocast; logits in x_t's dtype, still differentiable
// in x_t (the gradient flows back through the bf16 operations).
class Bf16Classifier : public Classifier {
 public:
  // `device` as for Bf16Denoiser.
  explicit Bf16Classifier(std::shared_ptr<Classifier> base,
                          Bf16Weights weights = Bf16Weights::cast_per_call,
                          std::optional<torch::Device> device = std::nullopt);
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return base_->time_kind(); }
  int64_t num_classes() const override { return base_->num_classes(); }
  torch::nn::Module* network_module() override { return base_->network_module(); }

 private:
  std::shared_ptr<Classifier> base_;
  std::optional<torch::Device> device_;
};

}  // namespace guidiff
