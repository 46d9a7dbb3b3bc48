#include "guidiff/cli/common.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "guidiff/cli/commands.hpp"
#include "guidiff/core/bf16_kernels.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff::cli {
namespace {

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> fields;
  std::stringstream stream(text);
  std::string field;
  while (std::getline(stream, field, ',')) fields.push_back(field);
  if (!text.empty() && text.back() == ',') fields.push_back("");
  return fields;
}

// The GPU of local process `local_rank` of `local_processes` on this machine: one GPU each, as
// NCCL requires (two ranks on one GPU fail inside NCCL with "invalid usage").
torch::Device gpu_of_local_process(int64_t local_rank, int64_t local_processes) {
  if (!torch::cuda::is_available()) {
    throw InputError("--device cuda: no CUDA device is available to this libtorch build");
  }
  const auto count = static_cast<int64_t>(torch::cuda::device_count());
  if (local_processes > count) {
    throw InputError("--device cuda: " + std::to_string(local_processes) +
                     " processes on this machine need " + std::to_string(local_processes) +
                     " GPUs, one each, but this machine shows " + std::to_string(count));
  }
  // float32 stays float32: libtorch lets cuDNN's convolutions round their operands to TF32
  // (10-bit mantissas) by default, which moved 25-step samples by up to 0.04 from the CPU's
  // (7e-5 without it, on an H200). --bf16 is the way to trade precision for speed.
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
}

}  // namespace

torch::Device GlobalOptions::torch_device() const {
  if (resolved_device_) return *resolved_device_;
  if (device == "cpu") {
    resolved_device_ = torch::kCPU;
  } else if (device == "cuda") {
    const LaunchEnvironment launch = read_launch_environment();
    resolved_device_ = launch.distributed()
                           ? gpu_of_local_process(launch.local_rank, launch.local_world_size)
                           : gpu_of_local_process(0, 1);
  } else {
    throw InputError("unknown --device '" + device + "' (expected cpu or cuda)");
  }
  return *resolved_device_;
}

void GlobalOptions::join_processes(const LaunchEnvironment& launch) {
  if (!launch.distributed()) return;
  CommunicatorOptions options;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(dist_timeout * 1000.0));
  if (device == "cuda") options.device = torch_device();
  communicator = std::make_shared<Communicator>(launch, options);
}

std::vector<int64_t> parse_positive_list(const std::string& flag, const std::string& text) {
  std::vector<int64_t> values;
  for (const std::string& field : split_commas(text)) {
    char* end = nullptr;
    errno = 0;
    const long long value = std::strtoll(field.c_str(), &end, 10);
    if (field.empty() || *end != '\0' || errno != 0 || value < 1) {
      throw InputError(flag + " '" + text + "': expected positive whole numbers separated by commas");
    }
    values.push_back(value);
  }
  if (values.empty()) throw InputError(flag + " is empty");
  return values;
}

std::pair<double, double> parse_number_pair(const std::string& flag, const std::string& text) {
  const std::vector<std::string> fields = split_commas(text);
  double numbers[2] = {0, 0};
  bool ok = fields.size() == 2;
  for (size_t i = 0; ok && i < 2; ++i) {
    char* end = nullptr;
    numbers[i] = std::strtod(fields[i].c_str(), &end);
    ok = !fields[i].empty() && *end == '\0' && !std::isnan(numbers[i]);
  }
  if (!ok) throw InputError(flag + " '" + text + "': expected two numbers 'low,high'");
  return {numbers[0], numbers[1]};
}

nlohmann::json read_json_file(const std::string& flag, const std::string& path) {
  std::string text;
  try {
    text = read_file_bytes(path);
  } catch (const FileError& error) {
    throw FileError(flag + ": " + error.what());
  }
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    throw FileError(flag + " '" + path + "': not valid JSON (" + json_error_text(error) + ")");
  }
}

bool given(const CLI::Option* option) { return option != nullptr && option->count() > 0; }

void check_output_path(const std::string& flag, const std::string& path) {
  if (path.empty()) return;
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ignored;
  if (!std::filesystem::is_directory(dir, ignored)) {
    throw FileError(flag + " '" + path + "': directory '" + dir.string() + "' does not exist");
  }
  if (std::filesystem::is_directory(path, ignored)) {
    throw FileError(flag + " '" + path + "' is a directory, not a file name");
  }
  // The file is written beside itself and renamed, so its directory must take new files.
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    throw FileError(flag + " '" + path + "': directory '" + dir.string() + "' is not writable (" +
                    std::strerror(errno) + ")");
  }
}

namespace {

std::filesystem::path resolved_path(const std::string& path) {
  std::error_code error;
  std::filesystem::path resolved =
      std::filesystem::weakly_canonical(std::filesystem::absolute(path), error);
  return error ? std::filesystem::absolute(path).lexically_normal() : resolved;
}

}  // namespace

void check_distinct_outputs(const NamedPaths& outputs, const NamedPaths& inputs) {
  std::vector<std::pair<std::string, std::filesystem::path>> resolved_inputs;
  for (const auto& [name, path] : inputs) {
    if (!path.empty()) resolved_inputs.emplace_back(name, resolved_path(path));
  }
  std::vector<std::pair<std::string, std::filesystem::path>> seen;
  for (const auto& [name, path] : outputs) {
    if (path.empty()) continue;
    std::filesystem::path resolved = resolved_path(path);
    for (const auto& [input_name, input] : resolved_inputs) {
      if (input == resolved)
        throw InputError(name + " '" + path + "' would overwrite " + input_name + ", an input");
    }
    for (const auto& [other_name, other] : seen) {
      if (other == resolved) {
        throw InputError(other_name + " and " + name + " both write '" + path +
                         "'; give each output its own file");
      }
    }
    seen.emplace_back(name, std::move(resolved));
  }
}

void warn_if_bf16_is_emulated(const torch::Device& device) {
  static bool warned = false;
  const auto reason = bf16_slowdown_reason(device);
  if (warned || !reason) return;
  warned = true;
  std::fprintf(stderr, "guidiff: warning: --bf16: %s\n", reason->c_str());
}

}  // namespace guidiff::cli
