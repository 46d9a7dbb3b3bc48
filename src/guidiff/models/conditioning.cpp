// Time and class conditioning inputs (see conditioning.hpp).
#include "guidiff/models/conditioning.hpp"

#include <cmath>
#include <string>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

// The timestep range the sinusoidal embedding's frequencies were chosen for (T = 1000).
constexpr double kEmbeddingTimeScale = 1000.0;

}  // namespace

void TimeInputConfig::validate() const {
  if (kind == TimeKind::log_snr) log_snr.validate();
}

torch::Tensor TimeInputConfig::embedding_time(const torch::Tensor& time, int64_t batch) const {
  if (!time.defined() || time.dim() != 1 || time.size(0) != batch) {
    throw InputError("time must have shape [" + std::to_string(batch) + "] (one per sample), got " +
                     (time.defined() ? c10::str(time.sizes()) : std::string("nothing")));
  }
  const bool floating = at::isFloatingType(time.scalar_type());
  if (kind == TimeKind::discrete_timestep) {
    if (floating)
      throw InputError("time: this model takes discrete timesteps (int64), got " +
                       std::string(c10::toString(time.scalar_type())));
    return time.to(torch::kFloat32);
  }
  if (!floating)
    throw InputError("time: this model takes log-SNR lambda (float), got " +
                     std::string(c10::toString(time.scalar_type())));
  const double range = log_snr.lambda_max - log_snr.lambda_min;
  const auto lambda = time.to(torch::kFloat64);
  return (kEmbeddingTimeScale * (log_snr.lambda_max - lambda) / range).to(torch::kFloat32);
}

void TimeInputConfig::read(ConfigFields& fields) {
  std::string name = kind == TimeKind::log_snr ? "log_snr" : "discrete_timestep";
  fields.read("time_input", name);
  if (name == "discrete_timestep") {
    kind = TimeKind::discrete_timestep;
  } else if (name == "log_snr") {
    kind = TimeKind::log_snr;
  } else {
    throw InputError(fields.field_error(
        "time_input", "must be \"discrete_timestep\" or \"log_snr\", got \"" + name + "\""));
  }
  fields.read("lambda_min", log_snr.lambda_min);
  fields.read("lambda_max", log_snr.lambda_max);
  try {
    validate();
  } catch (const InputError& error) {
    throw InputError(fields.context() + ": fields \"lambda_min\"/\"lambda_max\": " + error.what());
  }
}

void TimeInputConfig::write(nlohmann::json& object) const {
  object["time_input"] = kind == TimeKind::log_snr ? "log_snr" : "discrete_timestep";
  if (kind == TimeKind::log_snr) {
    object["lambda_min"] = log_snr.lambda_min;
    object["lambda_max"] = log_snr.lambda_max;
  }
}

torch::Tensor sinusoidal_embedding(const torch::Tensor& t, int64_t dim, double max_period) {
  const int64_t half = dim / 2;
  const auto options = torch::TensorOptions().dtype(torch::kFloat32).device(t.device());
  const auto frequencies =
      torch::exp(-std::log(max_period) * torch::arange(half, options) / static_cast<double>(half));
  const auto arguments = t.to(torch::kFloat32).unsqueeze(1) * frequencies.unsqueeze(0);
  auto embedding = torch::cat({torch::cos(arguments), torch::sin(arguments)}, 1);
  if (dim % 2 == 1) embedding = torch::cat({embedding, torch::zeros({t.size(0), 1}, options)}, 1);
  return embedding;
}

torch::Tensor class_labels_or_null(const torch::Tensor& y, int64_t num_classes, int64_t batch,
                                   const torch::Device& device, bool has_null_class) {
  const auto options = torch::TensorOptions().dtype(torch::kInt64).device(device);
  if (!y.defined()) {
    if (!has_null_class) {
      throw InputError("y: this class-conditional model has no null class, so it needs class labels "
                       "(it cannot sample unconditionally or take classifier-free guidance)");
    }
    return torch::full({batch}, num_classes, options);
  }
  if (y.dim() != 1 || y.size(0) != batch || at::isFloatingType(y.scalar_type()) ||
      y.scalar_type() == torch::kBool) {
    throw InputError("y must be integer class labels of shape [" + std::to_string(batch) +
                     "], got " + std::string(c10::toString(y.scalar_type())) + " " +
                     c10::str(y.sizes()));
  }
  if (batch > 0) {
    const int64_t low = y.min().item<int64_t>(), high = y.max().item<int64_t>();
    if (low < 0 || high > num_classes || (!has_null_class && high == num_classes)) {
      throw InputError("y holds class " + std::to_string(low < 0 ? low : high) + ", outside [0, " +
                       std::to_string(num_classes) +
                       (has_null_class ? "] (" + std::to_string(num_classes) + " = null class)"
                                       : ") (this model has no null class)"));
    }
  }
  return y.to(options);
}

}  // namespace guidiff
