#include "support/inception_formula_weights.hpp"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/export.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include <cmath>

namespace guidiff::testing {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

int64_t formula_name_key(const std::string& name) {
  int64_t key = 0;
  for (size_t i = 0; i < name.size(); ++i) key += static_cast<int64_t>(i + 1) * static_cast<unsigned char>(name[i]);
  return key;
}

torch::Tensor formula_uniform(const std::string& name, int64_t count) {
  // The same float64 operations, in the same order, as the Python fixture script.
  const torch::Tensor j = torch::arange(count, torch::kFloat64);
  const torch::Tensor phase = j * 0.7548776662466927 + static_cast<double>(formula_name_key(name)) * 0.5698402909980532;
  const torch::Tensor s = torch::sin(phase) * 43758.5453;
  return (s - torch::floor(s)) * 2.0 - 1.0;
}

torch::Tensor formula_value(const std::string& name, const std::vector<int64_t>& shape) {
  int64_t count = 1;
  for (const int64_t size : shape) count *= size;
  const torch::Tensor u = formula_uniform(name, count).reshape(shape);
  torch::Tensor value;
  if (ends_with(name, "conv.weight")) {
    const int64_t fan_in = count / shape.at(0);
    value = u * std::pow(6.0 / static_cast<double>(fan_in), 0.5);
  } else if (name == "fc.weight") {
    value = u * std::pow(3.0 / static_cast<double>(shape.at(1)), 0.5) * 16.0;
  } else if (ends_with(name, "bn.weight")) {
    value = 1.0 + 0.1 * u;
  } else if (ends_with(name, "bn.running_var")) {
    value = 1.1 + 0.1 * u;
  } else {
    value = 0.1 * u;
  }
  return value.to(torch::kFloat32);
}

void load_formula_weights(FidInception& network) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = fid_inception_tensor_shapes(network);
  load_fid_inception_tensors(
      network,
      [&shapes](const std::string& name) {
        for (const auto& [known, shape] : shapes) {
          if (known == name) return formula_value(name, shape);
        }
        return torch::Tensor();
      },
      "formula weights");
}

void write_torch_save_state_dict(const std::string& file, const c10::Dict<std::string, torch::Tensor>& state) {
  std::vector<char> pickle;
  torch::jit::Pickler pickler([&pickle](const char* bytes, size_t size) { pickle.insert(pickle.end(), bytes, bytes + size); },
                              nullptr, nullptr, nullptr, nullptr, /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(state);
  pickler.stop();
  caffe2::serialize::PyTorchStreamWriter writer(file);
  torch::jit::writeArchiveAndTensors("data", pickle.data(), pickle.size(), pickler.tensorData(), writer);
  writer.writeEndOfFile();
}

void write_formula_weights_file(const std::string& file) {
  FidInception network;
  c10::Dict<std::string, torch::Tensor> state;
  for (const auto& [name, shape] : fid_inception_tensor_shapes(network)) state.insert(name, formula_value(name, shape));
  write_torch_save_state_dict(file, state);
}

}  // namespace guidiff::testing
