// The trainable networks behind the two model interfaces: UNet / MLP denoisers as Denoiser,
// encoder-UNet / MLP classifiers as Classifier. Inputs are moved to the network's device and
// dtype, results returned on x_t's device and dtype. The networks run in whatever mode they
// are in (train() enables dropout) and gradients flow as the caller's grad mode allows.
#pragma once
#include <torch/torch.h>

#include "guidiff/models/cnn_classifier.hpp"
#include "guidiff/models/denoiser.hpp"
#include "guidiff/models/mlp.hpp"
#include "guidiff/models/unet.hpp"

namespace guidiff {

// eps = the first in_channels output channels; with learn_sigma, variance_output = the
// rest (the learned-range interpolation value of Nichol & Dhariwal 2021 Eq. 15).
// A conditional UNet given an undefined y predicts for the null class.
// A super-resolution UNet predicts only through conditioned_on(low_res).
class UNetDenoiser : public Denoiser {
 public:
  explicit UNetDenoiser(UNetModel network) : network_(std::move(network)) {}
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                         const torch::Tensor& y) override;
  TimeKind time_kind() const override { return network_->config().time.kind; }
  int64_t num_classes() const override { return network_->config().num_classes; }
  bool has_null_class() const override { return num_classes() > 0 && network_->config().null_class; }
  bool learns_variance() const override { return network_->config().learn_sigma; }
  UNetModel& network() { return network_; }
  torch::nn::Module* network_module() override { return network_.ptr().get(); }

  // The same network conditioned on low-resolution images [N, C, h, w] (a super-resolution
  // UNet): a batch of N rows is conditioned row by row, a batch of k N rows (classifier-free
  // guidance doubles it) on the images repeated k times. Throws ModelError for a UNet that is
  // not a super-resolution one.
  std::shared_ptr<UNetDenoiser> conditioned_on(const torch::Tensor& low_res) const;

 private:
  UNetModel network_;
  torch::Tensor low_res_;
};

class UNetClassifier : public Classifier {
 public:
  explicit UNetClassifier(EncoderUNetModel network) : network_(std::move(network)) {}
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return network_->config().time.kind; }
  int64_t num_classes() const override { return network_->config().num_classes; }
  EncoderUNetModel& network() { return network_; }
  torch::nn::Module* network_module() override { return network_.ptr().get(); }

 private:
  EncoderUNetModel network_;
};

class MlpDenoiser : public Denoiser {
 public:
  explicit MlpDenoiser(MlpDenoiserNet network) : network_(std::move(network)) {}
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                         const torch::Tensor& y) override;
  TimeKind time_kind() const override { return network_->config().time.kind; }
  int64_t num_classes() const override { return network_->config().num_classes; }
  MlpDenoiserNet& network() { return network_; }
  torch::nn::Module* network_module() override { return network_.ptr().get(); }

 private:
  MlpDenoiserNet network_;
};

class MlpClassifier : public Classifier {
 public:
  explicit MlpClassifier(MlpClassifierNet network) : network_(std::move(network)) {}
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return network_->config().time.kind; }
  int64_t num_classes() const override { return network_->config().num_classes; }
  MlpClassifierNet& network() { return network_; }
  torch::nn::Module* network_module() override { return network_.ptr().get(); }

 private:
  MlpClassifierNet network_;
};

// A clean-image classifier as a Classifier: the time is ignored (it was trained at t = 0),
// so it is the evaluator, not a guide; time_kind says discrete only to fit the interface.
class CnnClassifier : public Classifier {
 public:
  explicit CnnClassifier(CnnClassifierNet network) : network_(std::move(network)) {}
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return TimeKind::discrete_timestep; }
  int64_t num_classes() const override { return network_->config().num_classes; }
  CnnClassifierNet& network() { return network_; }
  torch::nn::Module* network_module() override { return network_.ptr().get(); }

 private:
  CnnClassifierNet network_;
};

}  // namespace guidiff
