#include "guidiff/models/bf16_models.hpp"

#include <string>

#include "guidiff/core/autocast.hpp"
#include "guidiff/core/errors.hpp"

namespace guidiff {

void store_lowered_weights_in_bf16(torch::nn::Module& network) {
  torch::NoGradGuard no_grad;
  for (const auto& module : network.modules()) {
    // Conv3x3 is a Conv2d.
    if (!module->as<torch::nn::Conv1dImpl>() && !module->as<torch::nn::Conv2dImpl>() &&
        !module->as<torch::nn::LinearImpl>())
      continue;
    for (auto& parameter : module->parameters(/*recurse=*/false)) {
      // 2-D convolution weights channels-last on the CPU: libtorch then runs oneDNN's
      // convolution on channels-last activations and returns them channels-last, so the
      // activations stay in that layout from layer to layer, where NCHW ones are reordered to
      // oneDNN's blocked layout and back at every convolution (docs/performance.md, stop 39).
      const bool channels_last = parameter.dim() == 4 && parameter.device().is_cpu();
      const auto format =
          channels_last ? torch::MemoryFormat::ChannelsLast : torch::MemoryFormat::Contiguous;
      if (parameter.scalar_type() != torch::kBFloat16 || !parameter.is_contiguous(format))
        parameter.set_data(parameter.to(torch::kBFloat16).contiguous(format));
    }
  }
}

namespace {

// The device the given one names, else that of the network's first parameter, else none
// (then x_t's at each call).
template <typename Model>
std::optional<torch::Device> network_device(Model& model, std::optional<torch::Device> given) {
  if (given) return given;
  torch::nn::Module* network = model.network_module();
  if (!network) return std::nullopt;
  const auto parameters = network->parameters();
  if (parameters.empty()) return std::nullopt;
  return parameters.front().device();
}

template <typename Model>
void store_weights(Model& model, Bf16Weights weights, const char* what) {
  if (weights != Bf16Weights::stored) return;
  torch::nn::Module* network = model.network_module();
  if (!network)
    throw InputError(std::string(what) + " has no libtorch network to keep bf16 weights in");
  store_lowered_weights_in_bf16(*network);
}

}  // namespace

Bf16Denoiser::Bf16Denoiser(std::shared_ptr<Denoiser> base, Bf16Weights weights,
                           std::optional<torch::Device> device)
    : base_(std::move(base)) {
  if (!base_) throw InputError("Bf16Denoiser needs a denoiser");
  device_ = network_device(*base_, device);
  store_weights(*base_, weights, "this denoiser");
}

DenoiserOutput Bf16Denoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time, const torch::Tensor& y) {
  DenoiserOutput output;
  {
    AutocastScope autocast(true, device_.value_or(x_t.device()));
    output = base_->predict(x_t, time, y);
  }
  output.eps = output.eps.to(x_t.scalar_type());
  if (output.variance_output.defined()) output.variance_output = output.variance_output.to(x_t.scalar_type());
  return output;
}

Bf16Classifier::Bf16Classifier(std::shared_ptr<Classifier> base, Bf16Weights weights,
                               std::optional<torch::Device> device)
    : base_(std::move(base)) {
  if (!base_) throw InputError("Bf16Classifier needs a classifier");
  device_ = network_device(*base_, device);
  store_weights(*base_, weights, "this classifier");
}

torch::Tensor Bf16Classifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  AutocastScope autocast(true, device_.value_or(x_t.device()));
  return base_->logits(x_t, time).to(x_t.scalar_type());
}

}  // namespace guidiff
