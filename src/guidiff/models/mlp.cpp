// Residual MLP denoiser and classifier for low-dimensional data (see mlp.hpp).
#include "guidiff/models/mlp.hpp"

#include "guidiff/core/errors.hpp"
#include "guidiff/models/config_fields.hpp"
#include "guidiff/models/unet_blocks.hpp"

namespace guidiff {
namespace {

MlpBody build_body(torch::nn::Module& owner, const MlpConfig& config) {
  const int64_t hidden = config.hidden_channels;
  MlpBody body;
  body.time_embed = owner.register_module(
      "time_embed", torch::nn::Sequential(torch::nn::Linear(config.time_channels, hidden),
                                          torch::nn::SiLU(), torch::nn::Linear(hidden, hidden)));
  body.input = owner.register_module("input", torch::nn::Linear(config.data_dim, hidden));
  body.blocks = torch::nn::ModuleList();
  for (int64_t i = 0; i < config.num_blocks; ++i) {
    torch::nn::Sequential block(torch::nn::SiLU(), torch::nn::Linear(hidden, hidden),
                                torch::nn::SiLU(), torch::nn::Linear(hidden, hidden));
    body.blocks->push_back(block);
    body.typed_blocks.push_back(block);
  }
  owner.register_module("blocks", body.blocks);
  return body;
}

void check_points(const torch::Tensor& x, const MlpConfig& config) {
  if (!x.defined() || x.dim() != 2 || x.size(1) != config.data_dim) {
    throw InputError("x must be [N, " + std::to_string(config.data_dim) + "], got " +
                     (x.defined() ? c10::str(x.sizes()) : std::string("nothing")));
  }
}

torch::Tensor time_features(const MlpConfig& config, const torch::Tensor& time,
                            const torch::Tensor& x) {
  const auto t = config.time.embedding_time(time, x.size(0)).to(x.device());
  return sinusoidal_embedding(t, config.time_channels).to(x.scalar_type());
}

}  // namespace

void MlpConfig::validate(const std::string& context, bool classifier) const {
  const auto positive = [&](const char* field, int64_t value) {
    if (value <= 0)
      throw InputError(context + ": field \"" + field + "\" must be > 0, got " +
                       std::to_string(value));
  };
  positive("data_dim", data_dim);
  positive("hidden_channels", hidden_channels);
  positive("time_channels", time_channels);
  if (num_blocks < 0)
    throw InputError(context + ": field \"num_blocks\" must be >= 0, got " +
                     std::to_string(num_blocks));
  if (classifier) {
    positive("num_classes", num_classes);
  } else if (num_classes < 0) {
    throw InputError(context + ": field \"num_classes\" must be >= 0 (0: unconditional), got " +
                     std::to_string(num_classes));
  }
  try {
    time.validate();
  } catch (const InputError& error) {
    throw InputError(context + ": fields \"lambda_min\"/\"lambda_max\": " + error.what());
  }
}

void to_json(nlohmann::json& object, const MlpConfig& config) {
  object = {{"data_dim", config.data_dim},
            {"hidden_channels", config.hidden_channels},
            {"num_blocks", config.num_blocks},
            {"time_channels", config.time_channels},
            {"num_classes", config.num_classes}};
  config.time.write(object);
}

void from_json(const nlohmann::json& object, MlpConfig& config) {
  ConfigFields fields(object, "mlp config");
  MlpConfig result;
  fields.read("data_dim", result.data_dim);
  fields.read("hidden_channels", result.hidden_channels);
  fields.read("num_blocks", result.num_blocks);
  fields.read("time_channels", result.time_channels);
  fields.read("num_classes", result.num_classes);
  result.time.read(fields);
  fields.reject_unknown();
  config = std::move(result);
}

torch::Tensor MlpBody::forward(const torch::Tensor& x, const torch::Tensor& emb) {
  auto h = input(x);
  for (auto& block : typed_blocks) h = h + block->forward(h + emb);
  return h;
}

MlpDenoiserNetImpl::MlpDenoiserNetImpl(const MlpConfig& config) : config_(config) {
  config_.validate("mlp_denoiser config", /*classifier=*/false);
  body_ = build_body(*this, config_);
  if (config_.num_classes > 0) {
    label_emb_ = register_module(
        "label_emb", torch::nn::Embedding(config_.num_classes + 1, config_.hidden_channels));
  }
  auto head = torch::nn::Linear(config_.hidden_channels, config_.data_dim);
  zero_parameters(*head);  // starts by predicting eps = 0, like the UNet
  out_ = register_module("out", torch::nn::Sequential(torch::nn::SiLU(), head));
}

torch::Tensor MlpDenoiserNetImpl::forward(const torch::Tensor& x, const torch::Tensor& time,
                                          const torch::Tensor& y) {
  check_points(x, config_);
  auto emb = body_.time_embed->forward(time_features(config_, time, x));
  if (label_emb_)
    emb = emb + label_emb_(class_labels_or_null(y, config_.num_classes, x.size(0), x.device()));
  return out_->forward(body_.forward(x, emb));
}

MlpClassifierNetImpl::MlpClassifierNetImpl(const MlpConfig& config) : config_(config) {
  config_.validate("mlp_classifier config", /*classifier=*/true);
  body_ = build_body(*this, config_);
  out_ = register_module(
      "out", torch::nn::Sequential(torch::nn::SiLU(), torch::nn::Linear(config_.hidden_channels,
                                                                        config_.num_classes)));
}

torch::Tensor MlpClassifierNetImpl::forward(const torch::Tensor& x, const torch::Tensor& time) {
  check_points(x, config_);
  const auto emb = body_.time_embed->forward(time_features(config_, time, x));
  return out_->forward(body_.forward(x, emb));
}

}  // namespace guidiff
