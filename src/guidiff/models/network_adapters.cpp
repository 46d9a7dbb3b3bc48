// Denoiser / Classifier adapters over the trainable networks (see network_adapters.hpp).
#include "guidiff/models/network_adapters.hpp"

namespace guidiff {
namespace {

// The device and floating dtype of a network's first parameter (every network has one).
torch::TensorOptions network_options(const torch::nn::Module& network) {
  const auto parameters = network.parameters();
  return parameters.front().options();
}

// Undefined inputs pass through for the network to report.
torch::Tensor to_network(const torch::Tensor& x, const torch::TensorOptions& options) {
  return x.defined() ? x.to(options.device(), options.dtype().toScalarType()) : x;
}

torch::Tensor optional_to(const torch::Tensor& t, const torch::Device& device) {
  return t.defined() ? t.to(device) : t;
}

torch::Tensor back_to(const torch::Tensor& result, const torch::Tensor& x_t) {
  return result.to(x_t.device(), x_t.scalar_type());
}

}  // namespace

DenoiserOutput UNetDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                     const torch::Tensor& y) {
  const auto options = network_options(*network_);
  const auto y_in = num_classes() > 0 ? optional_to(y, options.device()) : torch::Tensor();
  const auto out =
      network_->forward(to_network(x_t, options), optional_to(time, options.device()), y_in);
  const int64_t channels = network_->config().in_channels;
  DenoiserOutput result;
  result.eps = back_to(out.narrow(1, 0, channels), x_t);
  if (learns_variance()) result.variance_output = back_to(out.narrow(1, channels, channels), x_t);
  return result;
}

torch::Tensor UNetClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  const auto options = network_options(*network_);
  return back_to(network_->forward(to_network(x_t, options), optional_to(time, options.device())),
                 x_t);
}

DenoiserOutput MlpDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                    const torch::Tensor& y) {
  const auto options = network_options(*network_);
  const auto y_in = num_classes() > 0 ? optional_to(y, options.device()) : torch::Tensor();
  DenoiserOutput result;
  result.eps = back_to(
      network_->forward(to_network(x_t, options), optional_to(time, options.device()), y_in), x_t);
  return result;
}

torch::Tensor MlpClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  const auto options = network_options(*network_);
  return back_to(network_->forward(to_network(x_t, options), optional_to(time, options.device())),
                 x_t);
}

torch::Tensor CnnClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& /*time*/) {
  return back_to(network_->forward(to_network(x_t, network_options(*network_))), x_t);
}

}  // namespace guidiff
