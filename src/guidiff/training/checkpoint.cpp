// Training checkpoints: weights, optimiser state, RNG and data position (see checkpoint.hpp).
#include "guidiff/training/checkpoint.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>
#include <type_traits>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/json_integer.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff {
namespace {

constexpr const char* kMetadataKey = "guidiff_resume";
constexpr int64_t kFormat = 1;
constexpr const char* kModelPrefix = "model.";
constexpr const char* kEmaPrefix = "ema.";
constexpr const char* kOptimizerPrefix = "optimizer.";
constexpr const char* kRngKey = "rng.cpu";
const char* const kAdamFields[] = {"exp_avg", "exp_avg_sq", "step"};

FileError resume_error(const std::string& file, const std::string& what) {
  return FileError("resume file '" + file + "': " + what);
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.compare(0, prefix.size(), prefix) == 0;
}

// The optimiser's state map is keyed by each parameter's TensorImpl: as a printed pointer
// (std::string) in libtorch 1.13, as the pointer itself (void*) in later versions.
template <typename StateMap>
typename StateMap::key_type state_key(const StateMap&, const torch::Tensor& parameter) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream text;
    text << parameter.unsafeGetTensorImpl();
    return text.str();
  } else {
    return static_cast<Key>(parameter.unsafeGetTensorImpl());
  }
}

// The tensors under `prefix`, with the prefix removed.
SafetensorsContents with_prefix(const SafetensorsContents& contents, const std::string& prefix) {
  SafetensorsContents part;
  for (const auto& [name, tensor] : contents.tensors) {
    if (starts_with(name, prefix)) part.tensors.emplace_back(name.substr(prefix.size()), tensor);
  }
  return part;
}

void add_prefixed(NamedTensors& out, const std::string& prefix, const NamedTensors& tensors) {
  for (const auto& [name, tensor] : tensors) out.emplace_back(prefix + name, tensor.detach());
}

// The first top-level field where two configs differ, for the message.
std::string first_difference(const nlohmann::json& saved, const nlohmann::json& current) {
  if (!saved.is_object() || !current.is_object()) return "the config";
  for (const auto& [key, value] : saved.items()) {
    if (!current.contains(key)) return "field \"" + key + "\" (" + value.dump() + " in the file, absent now)";
    if (current.at(key) != value) {
      return "field \"" + key + "\" (" + value.dump() + " in the file, " + current.at(key).dump() + " now)";
    }
  }
  for (const auto& [key, value] : current.items()) {
    if (!saved.contains(key)) return "field \"" + key + "\" (absent in the file, " + value.dump() + " now)";
  }
  return "the config";
}

ResumeState parse_metadata(const SafetensorsContents& contents, const std::string& file) {
  const auto found = contents.metadata.find(kMetadataKey);
  if (found == contents.metadata.end()) {
    throw resume_error(file, std::string("metadata key '") + kMetadataKey + "' is missing (not a guidiff resume file)");
  }
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(found->second);
  } catch (const nlohmann::json::exception& error) {
    throw resume_error(file, std::string("metadata '") + kMetadataKey + "' is not valid JSON (" + json_error_text(error) + ")");
  }
  const auto field = [&](const char* key) -> const nlohmann::json& {
    if (!meta.is_object() || !meta.contains(key)) throw resume_error(file, std::string("metadata key '") + key + "' is missing");
    return meta.at(key);
  };
  const auto integer = [&](const nlohmann::json& value, const std::string& key) {
    if (!json_integer_fits<int64_t>(value) || value.get<int64_t>() < 0) {
      throw resume_error(file, "metadata key '" + key + "' must be a non-negative integer, got " + value.dump());
    }
    return value.get<int64_t>();
  };
  if (integer(field("format"), "format") != kFormat) {
    throw resume_error(file, "metadata key 'format' is " + field("format").dump() + "; this guidiff reads format " +
                                 std::to_string(kFormat));
  }
  ResumeState state;
  state.step = integer(field("step"), "step");
  const auto& position = field("next_position");
  if (!position.is_object() || !position.contains("epoch") || !position.contains("offset")) {
    throw resume_error(file, "metadata key 'next_position' must be {\"epoch\", \"offset\"}, got " + position.dump());
  }
  state.next_position.epoch = integer(position.at("epoch"), "next_position.epoch");
  state.next_position.offset = integer(position.at("offset"), "next_position.offset");
  for (const char* key : {"options", "model_config", "dataset", "interval"}) {
    if (!field(key).is_object()) throw resume_error(file, std::string("metadata key '") + key + "' must be an object");
  }
  state.options = field("options");
  state.model_config = field("model_config");
  state.dataset = field("dataset");
  state.interval = field("interval");
  if (meta.contains("world_size")) {
    state.world_size = integer(meta.at("world_size"), "world_size");
    if (state.world_size < 1) throw resume_error(file, "metadata key 'world_size' must be >= 1");
  }
  return state;
}

// Checks every name belongs to one of the file's sections.
void check_sections(const SafetensorsContents& contents, const std::string& file) {
  for (const auto& [name, tensor] : contents.tensors) {
    if (starts_with(name, kModelPrefix) || starts_with(name, kEmaPrefix) || starts_with(name, kOptimizerPrefix) ||
        name == kRngKey || starts_with(name, std::string(kRngKey) + ".")) {
      continue;
    }
    throw resume_error(file, "unexpected key '" + name + "'");
  }
}

// A copy of `model`'s network with the `prefix` weights loaded: validates them without
// touching the real network.
Model checked_weights(const Model& model, const SafetensorsContents& contents, const std::string& prefix,
                      const std::string& file) {
  Model copy = build_model(model.config);
  load_model_state(*copy.module, with_prefix(contents, prefix), file + "' section '" + prefix + "*");
  return copy;
}

void copy_weights(const Model& from, Model& to) {
  torch::NoGradGuard no_grad;
  const auto source = model_state(*from.module);
  auto target = model_state(*to.module);
  for (size_t i = 0; i < target.size(); ++i) target[i].second.copy_(source[i].second);
}

}  // namespace

void check_run_directory(const std::string& out_dir, bool resume) {
  const std::string resume_file = run_files(out_dir).resume;
  const bool exists = std::filesystem::exists(resume_file);
  if (!resume && exists) {
    throw InputError("--out-dir '" + out_dir +
                     "' already holds a training run (resume.safetensors): pass --resume to continue it, or choose "
                     "another directory");
  }
  if (resume && !exists) {
    throw FileError("--resume: '" + resume_file + "' does not exist (no run to continue in --out-dir '" + out_dir + "')");
  }
}

RunFiles run_files(const std::string& out_dir) {
  const std::filesystem::path dir(out_dir);
  return {(dir / "model").string(), (dir / "raw").string(), (dir / "resume.safetensors").string(),
          (dir / "log.jsonl").string(), (dir / "samples").string()};
}

NamedTensors adamw_state(const torch::nn::Module& module, torch::optim::AdamW& optimizer) {
  NamedTensors tensors;
  auto& states = optimizer.state();
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto found = states.find(state_key(states, item.value()));
    if (found == states.end()) continue;
    const auto& adam = static_cast<const torch::optim::AdamWParamState&>(*found->second);
    const std::string base = kOptimizerPrefix + item.key() + ".";
    tensors.emplace_back(base + "exp_avg", adam.exp_avg());
    tensors.emplace_back(base + "exp_avg_sq", adam.exp_avg_sq());
    tensors.emplace_back(base + "step", torch::tensor({adam.step()}, torch::kInt64));
  }
  return tensors;
}

void load_adamw_state(const torch::nn::Module& module, torch::optim::AdamW& optimizer,
                      const SafetensorsContents& contents, const std::string& file) {
  std::map<std::string, torch::Tensor> parameters;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) parameters.emplace(item.key(), item.value());
  // Group the file's tensors by parameter, checking names, shapes and dtypes first.
  std::map<std::string, std::map<std::string, torch::Tensor>> groups;
  for (const auto& [name, tensor] : contents.tensors) {
    if (!starts_with(name, kOptimizerPrefix)) continue;
    const auto rest = name.substr(std::string(kOptimizerPrefix).size());
    const auto dot = rest.rfind('.');
    const auto parameter = dot == std::string::npos ? rest : rest.substr(0, dot);
    const auto field = dot == std::string::npos ? std::string() : rest.substr(dot + 1);
    const auto target = parameters.find(parameter);
    if (target == parameters.end() || (field != "exp_avg" && field != "exp_avg_sq" && field != "step")) {
      throw resume_error(file, "unexpected key '" + name + "' (the model has no such parameter or optimiser field)");
    }
    if (field == "step") {
      if (tensor.scalar_type() != torch::kInt64 || tensor.numel() != 1 || tensor.item<int64_t>() < 1) {
        throw resume_error(file, "key '" + name + "' must be one positive int64");
      }
    } else if (tensor.sizes() != target->second.sizes() || !tensor.is_floating_point()) {
      throw resume_error(file, "key '" + name + "' has shape " + c10::str(tensor.sizes()) + " and dtype " +
                                   c10::toString(tensor.scalar_type()) + "; parameter '" + parameter +
                                   "' needs a floating tensor of shape " + c10::str(target->second.sizes()));
    }
    groups[parameter][field] = tensor;
  }
  for (const auto& [parameter, fields] : groups) {
    for (const char* field : kAdamFields) {
      if (fields.count(field) == 0) {
        throw resume_error(file, std::string("missing key '") + kOptimizerPrefix + parameter + "." + field + "'");
      }
    }
  }
  auto& states = optimizer.state();
  states.clear();
  for (const auto& [parameter, fields] : groups) {
    const auto& target = parameters.at(parameter);
    auto adam = std::make_unique<torch::optim::AdamWParamState>();
    adam->step(fields.at("step").item<int64_t>());
    adam->exp_avg(fields.at("exp_avg").to(target.options()).clone());
    adam->exp_avg_sq(fields.at("exp_avg_sq").to(target.options()).clone());
    states[state_key(states, target)] = std::move(adam);
  }
}

StreamedFile resume_file_to_write(const std::string& path, const Model& model, const Model& ema,
                                  torch::optim::AdamW& optimizer, const ResumeState& state) {
  NamedTensors tensors;
  add_prefixed(tensors, kModelPrefix, model_state(*model.module));
  add_prefixed(tensors, kEmaPrefix, model_state(*ema.module));
  const auto optimizer_tensors = adamw_state(*model.module, optimizer);
  tensors.insert(tensors.end(), optimizer_tensors.begin(), optimizer_tensors.end());
  tensors.emplace_back(kRngKey, state.cpu_rng_state);
  for (size_t r = 0; r < state.other_rank_rng_states.size(); ++r) {
    tensors.emplace_back(std::string(kRngKey) + "." + std::to_string(r + 1), state.other_rank_rng_states[r]);
  }
  const nlohmann::json meta = {
      {"world_size", state.world_size},
      {"format", kFormat},
      {"step", state.step},
      {"next_position", {{"epoch", state.next_position.epoch}, {"offset", state.next_position.offset}}},
      {"options", state.options},
      {"model_config", state.model_config},
      {"dataset", state.dataset},
      {"interval", state.interval}};
  return safetensors_file(path, tensors, {{"format", "pt"}, {kMetadataKey, meta.dump()}});
}

void save_resume_file(const std::string& path, const Model& model, const Model& ema, torch::optim::AdamW& optimizer,
                      const ResumeState& state) {
  write_files_atomically({resume_file_to_write(path, model, ema, optimizer, state)});
}

ResumeState load_resume_file(const std::string& path, Model& model, Model& ema, torch::optim::AdamW& optimizer) {
  if (!std::filesystem::exists(path)) throw resume_error(path, "not found (nothing to resume)");
  const SafetensorsContents contents = load_safetensors(path);
  ResumeState state = parse_metadata(contents, path);
  if (state.model_config != model.config) {
    throw resume_error(path, "the model config differs from the checkpoint's: " +
                                 first_difference(state.model_config, model.config));
  }
  check_sections(contents, path);
  const torch::Tensor* rng = contents.find(kRngKey);
  const auto current_rng = cpu_rng_state();
  if (rng == nullptr) throw resume_error(path, std::string("missing key '") + kRngKey + "'");
  if (rng->scalar_type() != torch::kUInt8 || rng->sizes() != current_rng.sizes()) {
    throw resume_error(path, std::string("key '") + kRngKey + "' must be uint8 " + c10::str(current_rng.sizes()) +
                                 ", got " + c10::toString(rng->scalar_type()) + " " + c10::str(rng->sizes()));
  }
  state.cpu_rng_state = rng->clone();
  for (int64_t r = 1; r < state.world_size; ++r) {
    const std::string name = std::string(kRngKey) + "." + std::to_string(r);
    const torch::Tensor* other = contents.find(name);
    if (other == nullptr) throw resume_error(path, "missing key '" + name + "' (world_size is " + std::to_string(state.world_size) + ")");
    if (other->scalar_type() != torch::kUInt8 || other->sizes() != current_rng.sizes()) {
      throw resume_error(path, "key '" + name + "' must be uint8 " + c10::str(current_rng.sizes()));
    }
    state.other_rank_rng_states.push_back(other->clone());
  }
  // Validate both weight sets on copies, then the optimiser (all or nothing), then commit.
  const Model loaded_model = checked_weights(model, contents, kModelPrefix, path);
  const Model loaded_ema = checked_weights(ema, contents, kEmaPrefix, path);
  load_adamw_state(*model.module, optimizer, contents, path);
  copy_weights(loaded_model, model);
  copy_weights(loaded_ema, ema);
  return state;
}

void save_checkpoint(const RunFiles& files, const Model& model, const Model& ema, torch::optim::AdamW& optimizer,
                     const ResumeState& state) {
  // A checkpoint of diverged weights would replace the last good one: refuse it.
  for (const auto* network : {&model, &ema}) {
    for (const auto& [name, tensor] : model_state(*network->module)) {
      if (tensor.is_floating_point() && !torch::isfinite(tensor).all().item<bool>()) {
        throw NumericError("not saving the checkpoint of step " + std::to_string(state.step) + ": " +
                           (network == &model ? "weight" : "EMA weight") + " '" + name +
                           "' holds NaN or infinity; the previous checkpoint in '" +
                           std::filesystem::path(files.resume).parent_path().string() + "' is kept");
      }
    }
  }
  // All files or none: a full disk leaves the previous checkpoint whole. The resume file goes
  // last, so a crash between the renames leaves it at the previous step, which is what a
  // resumed run reads.
  auto outputs = model_files_to_write(ema, files.ema_prefix);
  for (auto& output : model_files_to_write(model, files.raw_prefix)) outputs.push_back(std::move(output));
  outputs.push_back(resume_file_to_write(files.resume, model, ema, optimizer, state));
  write_files_atomically(outputs);
}

torch::Tensor cpu_rng_state() {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_cpu_rng_state(const torch::Tensor& state) {
  auto generator = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

}  // namespace guidiff
