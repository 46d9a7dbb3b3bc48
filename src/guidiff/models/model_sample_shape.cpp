// The per-sample shape of a network (see model_sample_shape.hpp).
#include "guidiff/models/model_sample_shape.hpp"

#include "guidiff/core/errors.hpp"

namespace guidiff {

std::vector<int64_t> model_sample_shape(const Model& model) {
  const auto field = [&](const char* key) {
    if (!model.config.contains(key) || !model.config.at(key).is_number_integer()) {
      throw InputError(std::string("model config: field \"") + key + "\" is missing");
    }
    return model.config.at(key).get<int64_t>();
  };
  switch (model.kind) {
    case ModelKind::unet:
    case ModelKind::encoder_unet:
    case ModelKind::cnn_classifier: {
      const int64_t side = field("image_size");
      return {field("in_channels"), side, side};
    }
    case ModelKind::mlp_denoiser:
    case ModelKind::mlp_classifier: return {field("data_dim")};
  }
  return {};
}

}  // namespace guidiff
