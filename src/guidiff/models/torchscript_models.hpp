// Adapters that make TorchScript archives (torch.jit.save of a scripted or traced module)
// usable as a Denoiser or a Classifier. Accepted signatures (see docs/formats.md):
//   denoiser:   forward(x, t) -> eps            unconditional
//               forward(x, t, y) -> eps         class-conditional; y = num_classes is null
//   classifier: forward(x, t) -> logits [N, num_classes]
// t is int64 original timesteps (TimeKind::discrete_timestep) or float32 log-SNR lambda
// (TimeKind::log_snr), as chosen by the caller. With learn_sigma, eps has 2C channels
// along dim 1: the first C are eps, the last C the learned-range variance output.
#pragma once
#include <torch/script.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "guidiff/models/denoiser.hpp"

namespace guidiff {

// Loads an archive in eval mode on `device`. Throws FileError naming the path if it is
// missing, a directory or not a TorchScript archive.
torch::jit::script::Module load_torchscript_module(const std::string& path, const torch::Device& device);
// module.forward(inputs), with every error turned into one ModelError line naming `path`.
torch::jit::IValue call_torchscript_forward(torch::jit::script::Module& module, std::vector<torch::jit::IValue> inputs,
                                            const std::string& path);

struct TorchScriptOptions {
  TimeKind time_kind = TimeKind::discrete_timestep;
  int64_t num_classes = 0;     // required (> 0) for conditional denoisers and classifiers
  bool learn_sigma = false;    // denoiser output carries variance channels (guided-diffusion)
  torch::Device device = torch::kCPU;  // where the module runs; results return to x's device
};

class TorchScriptDenoiser : public Denoiser {
 public:
  // Throws FileError naming the path if it is missing or not a TorchScript archive, and
  // ModelError if forward's signature is not (x, t) or (x, t, y), or a conditional model
  // comes without options.num_classes.
  TorchScriptDenoiser(const std::string& path, const TorchScriptOptions& options);
  // Throws ModelError naming the file if forward fails or returns anything but a tensor of
  // x_t's shape (2C channels with learn_sigma).
  DenoiserOutput predict(const torch::Tensor& x_t, const torch::Tensor& time,
                         const torch::Tensor& y) override;
  TimeKind time_kind() const override { return options_.time_kind; }
  int64_t num_classes() const override { return conditional_ ? options_.num_classes : 0; }
  bool learns_variance() const override { return options_.learn_sigma; }

 private:
  std::string path_;
  TorchScriptOptions options_;
  torch::jit::script::Module module_;
  bool conditional_ = false;
};

class TorchScriptClassifier : public Classifier {
 public:
  // Throws FileError / ModelError as TorchScriptDenoiser does; forward must take (x, t) and
  // options.num_classes must be > 0.
  TorchScriptClassifier(const std::string& path, const TorchScriptOptions& options);
  // Throws ModelError naming the file unless forward returns [N, num_classes].
  torch::Tensor logits(const torch::Tensor& x_t, const torch::Tensor& time) override;
  TimeKind time_kind() const override { return options_.time_kind; }
  int64_t num_classes() const override { return options_.num_classes; }

 private:
  std::string path_;
  TorchScriptOptions options_;
  torch::jit::script::Module module_;
};

}  // namespace guidiff
