// Small residual MLPs for low-dimensional data (the 2-D toy mixtures): a denoiser
// (x, t [, y]) -> eps and a noise-aware classifier (x, t) -> logits. Time enters through the
// same sinusoidal embedding as the UNet's; the class (denoiser) through an embedding with a
// null row. Architecture:
//   emb = time_embed(sinusoidal(t', time_channels)) [+ label_emb(y)]      [N, hidden]
//   h = input(x);  h = h + blocks[i](h + emb) for each block (SiLU, Linear, SiLU, Linear)
//   denoiser: out = SiLU, zero-init Linear(hidden, data_dim);  classifier: SiLU, Linear(hidden, C)
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/models/conditioning.hpp"

namespace guidiff {

struct MlpConfig {
  int64_t data_dim = 2;
  int64_t hidden_channels = 128;
  int64_t num_blocks = 3;
  int64_t time_channels = 64;  // width of the sinusoidal time features
  // Denoiser: 0 = unconditional, else classes 0..C-1 plus the null class C.
  // Classifier: the number of logits (> 0).
  int64_t num_classes = 0;
  TimeInputConfig time;

  // Throws InputError "<context>: field "<name>" ..." for the first invalid field; a
  // classifier needs num_classes > 0.
  void validate(const std::string& context, bool classifier) const;
};

// to_json writes every field; from_json reads the given ones over the defaults and throws
// InputError naming an unknown or mistyped field (validation happens when a net is built).
void to_json(nlohmann::json& object, const MlpConfig& config);
void from_json(const nlohmann::json& object, MlpConfig& config);

// time_embed, input and blocks, shared by the two nets (registered by them, so the
// parameter names are time_embed.*, input.*, blocks.<i>.*).
struct MlpBody {
  torch::nn::Sequential time_embed{nullptr};
  torch::nn::Linear input{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  std::vector<torch::nn::Sequential> typed_blocks;

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& emb);
};

class MlpDenoiserNetImpl : public torch::nn::Module {
 public:
  explicit MlpDenoiserNetImpl(const MlpConfig& config);  // InputError naming the field
  // x: float [N, data_dim]; time per config.time; y: int64 [N] in [0, num_classes] or
  // undefined (null class); ignored when unconditional. -> eps [N, data_dim].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& time,
                        const torch::Tensor& y = {});
  const MlpConfig& config() const { return config_; }

 private:
  MlpConfig config_;
  MlpBody body_;
  torch::nn::Embedding label_emb_{nullptr};
  torch::nn::Sequential out_{nullptr};
};
TORCH_MODULE(MlpDenoiserNet);

class MlpClassifierNetImpl : public torch::nn::Module {
 public:
  explicit MlpClassifierNetImpl(const MlpConfig& config);  // InputError naming the field
  // x: float [N, data_dim] -> logits [N, num_classes], differentiable in x.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& time);
  const MlpConfig& config() const { return config_; }

 private:
  MlpConfig config_;
  MlpBody body_;
  torch::nn::Sequential out_{nullptr};
};
TORCH_MODULE(MlpClassifierNet);

}  // namespace guidiff
