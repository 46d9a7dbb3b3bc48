// Building networks from configs, saving and loading them (see model_files.hpp).
#include "guidiff/models/model_files.hpp"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <type_traits>

#include "guidiff/core/allocation_budget.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/core/process_memory.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/models/network_adapters.hpp"

namespace guidiff {
namespace {

constexpr ModelKind kKinds[] = {ModelKind::unet, ModelKind::encoder_unet, ModelKind::mlp_denoiser,
                                ModelKind::mlp_classifier, ModelKind::cnn_classifier};
constexpr const char* kDefaultName = "model";
// Keys of the config file beside the network's fields.
constexpr const char* kDiffusionKey = "diffusion";
constexpr const char* kSourceKey = "source";
constexpr const char* kClassNamesKey = "class_names";

ModelKind parse_kind(const nlohmann::json& config) {
  if (!config.is_object())
    throw InputError("model config: expected a JSON object, got " + config.dump());
  const auto it = config.find("kind");
  if (it == config.end() || !it->is_string()) {
    throw InputError(
        "model config: field \"kind\" must be one of unet, encoder_unet, mlp_denoiser, "
        "mlp_classifier, cnn_classifier");
  }
  const auto name = it->get<std::string>();
  for (const ModelKind kind : kKinds) {
    if (name == model_kind_name(kind)) return kind;
  }
  throw InputError("model config: field \"kind\" is \"" + name +
                   "\"; expected unet, encoder_unet, mlp_denoiser, mlp_classifier or cnn_classifier");
}

// Wraps a typed network: the module, its adapter and its complete config.
template <typename Config, typename Network, typename Adapter>
void wrap(Model& model, const nlohmann::json& fields) {
  const Config config = fields.get<Config>();
  Network network(config);
  model.module = network.ptr();
  auto adapter = std::make_shared<Adapter>(network);
  if constexpr (std::is_base_of_v<Denoiser, Adapter>) {
    model.denoiser = adapter;
  } else {
    model.classifier = adapter;
  }
  model.config = config;
  model.config["kind"] = model_kind_name(model.kind);
}

// "class_names": one string per class of the network (a denoiser's classes without its null
// class, or a classifier's outputs).
std::vector<std::string> parse_class_names(const nlohmann::json& names, const Model& model) {
  const int64_t classes = model_class_count(model);
  if (!names.is_array() || !std::all_of(names.begin(), names.end(), [](const auto& name) { return name.is_string(); })) {
    throw InputError("field \"class_names\" must be an array of strings");
  }
  if (static_cast<int64_t>(names.size()) != classes) {
    throw InputError("field \"class_names\" has " + std::to_string(names.size()) + " names for the network's " +
                     std::to_string(classes) + " classes");
  }
  return names.get<std::vector<std::string>>();
}

}  // namespace

const char* model_kind_name(ModelKind kind) {
  switch (kind) {
    case ModelKind::unet:
      return "unet";
    case ModelKind::encoder_unet:
      return "encoder_unet";
    case ModelKind::mlp_denoiser:
      return "mlp_denoiser";
    case ModelKind::mlp_classifier:
      return "mlp_classifier";
    case ModelKind::cnn_classifier:
      return "cnn_classifier";
  }
  return "unknown";
}

void check_guidance_classifier(const Model& model, const std::string& what) {
  if (!model.classifier)
    throw InputError(what + " holds a " + std::string(model_kind_name(model.kind)) +
                     ", not a classifier");
  if (model.kind == ModelKind::cnn_classifier) {
    throw InputError(
        what +
        " is a cnn_classifier of clean images (no noise-level input, e.g. an evaluator); "
        "guidance needs a noise-aware classifier (guidiff train classifier)");
  }
}

namespace {

// The network of `model.kind` from its config fields (without "kind").
void build_network(Model& model, const nlohmann::json& fields) {
  switch (model.kind) {
    case ModelKind::unet:
      wrap<UNetConfig, UNetModel, UNetDenoiser>(model, fields);
      break;
    case ModelKind::encoder_unet:
      wrap<ClassifierConfig, EncoderUNetModel, UNetClassifier>(model, fields);
      break;
    case ModelKind::mlp_denoiser:
      wrap<MlpConfig, MlpDenoiserNet, MlpDenoiser>(model, fields);
      break;
    case ModelKind::mlp_classifier:
      wrap<MlpConfig, MlpClassifierNet, MlpClassifier>(model, fields);
      break;
    case ModelKind::cnn_classifier:
      wrap<CnnClassifierConfig, CnnClassifierNet, CnnClassifier>(model, fields);
      break;
  }
}

}  // namespace

Model build_model(const nlohmann::json& config, std::optional<int64_t> memory_budget) {
  Model model;
  model.kind = parse_kind(config);
  nlohmann::json fields = config;
  fields.erase("kind");
  const std::string check_sizes = "; check its sizes (widths, channel_mult, image_size)";
  if (!memory_budget) memory_budget = available_memory_bytes();
  try {
    // A size typo (hidden_channels 70000) is refused before its weights are filled: Linux would
    // grant them and then kill the process as the initialisation touched them.
    std::optional<CpuAllocationBudget> budget;
    if (memory_budget) budget.emplace(*memory_budget);
    build_network(model, fields);
  } catch (const AllocationBudgetExceeded& exceeded) {
    throw InputError(std::string(model_kind_name(model.kind)) +
                     " config: its weights need more than the " + memory_text(exceeded.budget) +
                     " of memory available" + check_sizes);
  } catch (const c10::Error& error) {
    // Sizes past the address space end in the allocator's or an overflow message, which names no
    // field: say which config it was and what to look at.
    const std::string what = error.what_without_backtrace();
    if (what.find("allocate") == std::string::npos &&
        what.find("size calculation overflowed") == std::string::npos) {
      throw;
    }
    throw InputError(
        std::string(model_kind_name(model.kind)) + " config: its weights do not fit in memory (" +
        (what.find("you tried") == std::string::npos ? what : what.substr(what.find("you tried"))) +
        ")" + check_sizes);
  }
  return model;
}

ModelFiles model_files(const std::string& dir_or_prefix) {
  namespace fs = std::filesystem;
  fs::path prefix(dir_or_prefix);
  if (fs::is_directory(prefix)) {
    prefix /= kDefaultName;
  } else if (prefix.extension() == ".safetensors" || prefix.extension() == ".json") {
    prefix.replace_extension();
  }
  return {prefix.string() + ".safetensors", prefix.string() + ".json"};
}

NamedTensors model_state(const torch::nn::Module& module) {
  NamedTensors state;
  for (const auto& item : module.named_parameters(/*recurse=*/true))
    state.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers(/*recurse=*/true))
    state.emplace_back(item.key(), item.value());
  return state;
}

void load_model_state(torch::nn::Module& module, const StoredTensors& stored, const std::string& file,
                      const std::string& mismatch_hint) {
  const auto fail = [&](const std::string& what) {
    return FileError("weights '" + file + "': " + what + mismatch_hint);
  };
  std::map<std::string, torch::Tensor> targets;
  for (auto& [name, tensor] : model_state(module)) targets.emplace(name, tensor);
  // Check everything first, so a bad file leaves the module untouched.
  std::set<std::string> present;
  for (const auto& entry : stored.entries) {
    const auto target = targets.find(entry.name);
    if (target == targets.end())
      throw fail("unexpected key '" + entry.name +
                 "' (the model built from its config has no such tensor)");
    if (torch::IntArrayRef(entry.sizes) != target->second.sizes()) {
      throw fail("key '" + entry.name + "' has shape " + shape_string(entry.sizes) +
                 " but the model built from its config expects " +
                 shape_string(target->second.sizes()));
    }
    if (at::isFloatingType(target->second.scalar_type()) != at::isFloatingType(entry.dtype)) {
      throw fail("key '" + entry.name + "' has dtype " + std::string(c10::toString(entry.dtype)) +
                 " but the model expects " + c10::toString(target->second.scalar_type()));
    }
    if (!present.insert(entry.name).second) throw fail("key '" + entry.name + "' appears twice");
  }
  for (const auto& [name, target] : model_state(module)) {
    if (present.count(name) == 0)
      throw fail("missing key '" + name + "' (shape " + shape_string(target.sizes()) + ")");
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < stored.entries.size(); ++i) {
    const torch::Tensor values = stored.read(i);
    if (values.sizes() != torch::IntArrayRef(stored.entries[i].sizes)) {
      throw fail("key '" + stored.entries[i].name + "' read back with shape " + shape_string(values.sizes()));
    }
    // A NaN weight makes every output NaN; found here it names the tensor. (Checked as each is
    // read, so as not to hold the file twice: on this error the module is partly loaded, and
    // the callers discard it.)
    if (values.is_floating_point() && !values.isfinite().all().item<bool>()) {
      throw fail("key '" + stored.entries[i].name + "' holds NaN or infinity");
    }
    targets.at(stored.entries[i].name).copy_(values);
  }
}

void load_model_state(torch::nn::Module& module, const SafetensorsContents& state,
                      const std::string& file) {
  StoredTensors stored;
  for (const auto& [name, tensor] : state.tensors) {
    stored.entries.push_back({name, tensor.sizes().vec(), tensor.scalar_type()});
  }
  stored.read = [&state](size_t index) { return state.tensors[index].second; };
  load_model_state(module, stored, file);
}

nlohmann::json model_file_json(const Model& model) {
  nlohmann::json json = model.config;
  if (model.diffusion) json[kDiffusionKey] = model.diffusion->to_json();
  if (!model.source.is_null()) json[kSourceKey] = model.source;
  if (!model.class_names.empty()) json[kClassNamesKey] = model.class_names;
  return json;
}

std::vector<StreamedFile> model_files_to_write(const Model& model, const std::string& dir_or_prefix) {
  if (!model.module) throw InputError("save_model: the model has no network");
  const auto files = model_files(dir_or_prefix);
  const std::string config = model_file_json(model).dump(2) + "\n";
  return {safetensors_file(files.weights, model_state(*model.module),
                           {{"format", "pt"}, {"guidiff_kind", model_kind_name(model.kind)}}),
          {files.config, [config](const AppendBytes& append) { append(config.data(), config.size()); }}};
}

void save_model(const Model& model, const std::string& dir_or_prefix) {
  write_files_atomically(model_files_to_write(model, dir_or_prefix));
}

Model load_model(const std::string& dir_or_prefix, const torch::Device& device) {
  const auto files = model_files(dir_or_prefix);
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_file_bytes(files.config));
  } catch (const nlohmann::json::exception& error) {
    throw FileError("model config '" + files.config + "': not valid JSON (" + json_error_text(error) + ")");
  }
  Model model;
  try {
    // The network's fields, and beside them what the file records about the model.
    nlohmann::json diffusion, source, class_names;
    if (config.is_object()) {
      if (config.contains(kDiffusionKey)) diffusion = config.at(kDiffusionKey);
      if (config.contains(kSourceKey)) source = config.at(kSourceKey);
      if (config.contains(kClassNamesKey)) class_names = config.at(kClassNamesKey);
      config.erase(kDiffusionKey);
      config.erase(kSourceKey);
      config.erase(kClassNamesKey);
    }
    model = build_model(config);
    if (!diffusion.is_null()) model.diffusion = DiffusionSettings::from_json(diffusion, "model config");
    model.source = source;
    if (!class_names.is_null()) model.class_names = parse_class_names(class_names, model);
  } catch (const InputError& error) {
    throw FileError("model config '" + files.config + "': " + error.what());
  }
  // Tensor by tensor from the file: a large model is never held twice.
  const SafetensorsFile weights(files.weights);
  StoredTensors stored;
  for (const auto& entry : weights.entries()) stored.entries.push_back({entry.name, entry.shape, entry.dtype});
  stored.read = [&weights](size_t index) { return weights.read(index); };
  load_model_state(*model.module, stored, files.weights);
  model.module->to(device);
  model.module->eval();
  return model;
}

int64_t model_class_count(const Model& model) {
  return model.denoiser ? model.denoiser->num_classes() : model.classifier->num_classes();
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t total = 0;
  for (const torch::Tensor& parameter : module.parameters()) total += parameter.numel();
  return total;
}

}  // namespace guidiff
