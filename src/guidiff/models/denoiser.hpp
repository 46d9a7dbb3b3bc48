// The two model interfaces every sampler and guidance rule is written against.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <utility>

#include "guidiff/schedule/noise_level.hpp"

namespace guidiff {

struct DenoiserOutput {
  DenoiserOutput() = default;
  DenoiserOutput(torch::Tensor eps_, torch::Tensor variance_output_ = {}, torch::Tensor renoise_eps_ = {})
      : eps(std::move(eps_)), variance_output(std::move(variance_output_)), renoise_eps(std::move(renoise_eps_)) {}

  torch::Tensor eps;              // predicted noise, same shape as x_t
  torch::Tensor variance_output;  // learned-range variance output in [-1, 1], or undefined
  // CFG++ (Chung et al. 2024): the eps a sampler re-noises with (the unconditional one),
  // while x0 comes from `eps`. Undefined: re-noise with `eps` itself (every other rule).
  torch::Tensor renoise_eps;
};

// (x_t, time, y?) -> eps [, variance]. Classes are 0..num_classes()-1; the null class
// (unconditional) is index num_classes(). An unconditional model has num_classes() == 0
// and ignores y.
class Denoiser {
 public:
  virtual ~Denoiser() = default;
  // x_t: float [N, ...]; time: per TimeKind; y: int64 [N] or an undefined tensor.
  virtual DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                 const torch::Tensor& y) = 0;
  virtual TimeKind time_kind() const = 0;
  virtual int64_t num_classes() const = 0;
  // Whether y = num_classes() (the null class, unconditional) is understood. guided-diffusion's
  // class-conditional models have no null class: no classifier-free guidance for them.
  virtual bool has_null_class() const { return num_classes() > 0; }
  virtual bool learns_variance() const { return false; }
  // The libtorch network behind the model, for wrappers that change how its weights are
  // stored (Bf16Weights::stored); null where there is none (TorchScript, the analytic mixture).
  virtual torch::nn::Module* network_module() { return nullptr; }
};

// (x_t, time) -> unnormalised class logits [N, num_classes()]; a noise-aware classifier
// p_phi(y | x_t). The logits must be differentiable in x_t.
class Classifier {
 public:
  virtual ~Classifier() = default;
  virtual torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) = 0;
  virtual TimeKind time_kind() const = 0;
  virtual int64_t num_classes() const = 0;
  // As Denoiser::network_module.
  virtual torch::nn::Module* network_module() { return nullptr; }
};

}  // namespace guidiff
