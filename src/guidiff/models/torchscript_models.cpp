#include "guidiff/models/torchscript_models.hpp"

#include <filesystem>
#include <sstream>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/zip_directory.hpp"

namespace guidiff {
namespace {

// c10::Error messages carry a C++ backtrace and TorchScript source excerpts over many
// lines; the user needs one. An error raised inside the TorchScript interpreter ends with
// the original exception ("RuntimeError: ..."), anything else starts with its message.
std::string summary_line(const std::string& text) {
  std::istringstream lines(text);
  std::string line, first, last;
  while (std::getline(lines, line)) {
    const auto start = line.find_first_not_of(" \t");
    if (start == std::string::npos) continue;
    const auto end = line.find_last_not_of(" \t\r");
    last = line.substr(start, end - start + 1);
    if (first.empty()) first = last;
  }
  if (first.empty()) return "unknown error";
  return text.find("TorchScript interpreter") != std::string::npos ? last : first;
}

}  // namespace

torch::jit::script::Module load_torchscript_module(const std::string& path, const torch::Device& device) {
  std::error_code ignored;
  if (!std::filesystem::exists(path, ignored)) throw FileError("model file '" + path + "' does not exist");
  if (std::filesystem::is_directory(path, ignored)) throw FileError("model file '" + path + "' is a directory");
  check_zip_members_fit({path, "TorchScript archive", "a TorchScript archive"});
  torch::jit::script::Module module;
  try {
    module = torch::jit::load(path, device);
  } catch (const c10::Error& error) {
    throw FileError("'" + path + "' is not a TorchScript archive (save it with torch.jit.save): " +
                    summary_line(error.what_without_backtrace()));
  }
  module.eval();
  return module;
}

namespace {

// Number of arguments of forward, not counting self.
size_t forward_arity(const torch::jit::script::Module& module, const std::string& path) {
  const auto method = module.find_method("forward");
  if (!method) throw ModelError("'" + path + "' has no forward method");
  const size_t arguments = method->function().getSchema().arguments().size();
  return arguments == 0 ? 0 : arguments - 1;
}

// Converts time to the dtype its kind prescribes (int64 timesteps, float32 lambda).
torch::Tensor time_input(const torch::Tensor& time, const TorchScriptOptions& options) {
  const auto dtype = options.time_kind == TimeKind::discrete_timestep ? torch::kLong : torch::kFloat32;
  return time.to(options.device, dtype);
}

}  // namespace

torch::jit::IValue call_torchscript_forward(torch::jit::script::Module& module, std::vector<torch::jit::IValue> inputs,
                                            const std::string& path) {
  try {
    return module.forward(std::move(inputs));
  } catch (const c10::Error& error) {
    throw ModelError("'" + path + "': forward failed: " + summary_line(error.what_without_backtrace()));
  } catch (const std::exception& error) {  // the TorchScript interpreter's own exceptions
    throw ModelError("'" + path + "': forward failed: " + summary_line(error.what()));
  }
}

namespace {

torch::jit::script::Module load_module(const std::string& path, const TorchScriptOptions& options) {
  return load_torchscript_module(path, options.device);
}

// Calls forward and requires a tensor result.
torch::Tensor call_forward(torch::jit::script::Module& module, std::vector<torch::jit::IValue> inputs,
                           const std::string& path) {
  const torch::jit::IValue output = call_torchscript_forward(module, std::move(inputs), path);
  if (!output.isTensor()) {
    throw ModelError("'" + path + "': forward must return one tensor, got " + output.tagKind());
  }
  return output.toTensor();
}

}  // namespace

TorchScriptDenoiser::TorchScriptDenoiser(const std::string& path, const TorchScriptOptions& options)
    : path_(path), options_(options), module_(load_module(path, options)) {
  const size_t arity = forward_arity(module_, path);
  if (arity != 2 && arity != 3) {
    throw ModelError("'" + path + "': forward takes " + std::to_string(arity) +
                     " arguments; a denoiser needs forward(x, t) or forward(x, t, y)");
  }
  conditional_ = arity == 3;
  if (conditional_ && options.num_classes <= 0) {
    throw ModelError("'" + path + "' is class-conditional (forward(x, t, y)): give its number of classes (--num-classes)");
  }
}

DenoiserOutput TorchScriptDenoiser::predict(const torch::Tensor& x_t, const torch::Tensor& time,
                                            const torch::Tensor& y) {
  std::vector<torch::jit::IValue> inputs{x_t.to(options_.device, torch::kFloat32), time_input(time, options_)};
  if (conditional_) {
    // An unconditional request to a conditional model uses the null class.
    const torch::Tensor labels =
        y.defined() ? y.to(options_.device, torch::kLong)
                    : torch::full({x_t.size(0)}, options_.num_classes,
                                  torch::TensorOptions().dtype(torch::kLong).device(options_.device));
    inputs.emplace_back(labels);
  }
  torch::Tensor output = call_forward(module_, std::move(inputs), path_).to(x_t.device(), x_t.scalar_type());

  std::vector<int64_t> expected = x_t.sizes().vec();
  if (options_.learn_sigma && expected.size() >= 2) expected[1] *= 2;
  if (output.sizes().vec() != expected) {
    throw ModelError("'" + path_ + "': forward returned shape " + shape_string(output.sizes()) + " for input " +
                     shape_string(x_t.sizes()) + "; expected " + shape_string(expected) +
                     (options_.learn_sigma ? " (eps and variance channels)" : " (eps, same shape as x)"));
  }
  if (!options_.learn_sigma) return {output, torch::Tensor()};
  const auto halves = output.chunk(2, 1);
  return {halves[0], halves[1]};
}

TorchScriptClassifier::TorchScriptClassifier(const std::string& path, const TorchScriptOptions& options)
    : path_(path), options_(options), module_(load_module(path, options)) {
  const size_t arity = forward_arity(module_, path);
  if (arity != 2) {
    throw ModelError("'" + path + "': forward takes " + std::to_string(arity) +
                     " arguments; a classifier needs forward(x, t)");
  }
  if (options.num_classes <= 0) {
    throw ModelError("classifier '" + path + "': give its number of classes (--num-classes)");
  }
}

torch::Tensor TorchScriptClassifier::logits(const torch::Tensor& x_t, const torch::Tensor& time) {
  // No dtype change on x when it already is float32: guidance differentiates through it.
  torch::Tensor output =
      call_forward(module_, {x_t.to(options_.device, torch::kFloat32), time_input(time, options_)}, path_);
  if (output.dim() != 2 || output.size(0) != x_t.size(0) || output.size(1) != options_.num_classes) {
    throw ModelError("classifier '" + path_ + "': forward returned shape " + shape_string(output.sizes()) +
                     " for input " + shape_string(x_t.sizes()) + "; expected [" + std::to_string(x_t.size(0)) +
                     ", " + std::to_string(options_.num_classes) + "] logits");
  }
  return output.to(x_t.device());
}

}  // namespace guidiff
