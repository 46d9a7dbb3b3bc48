// `.pt` state dicts through libtorch's archive reader and unpickler (see pt_file.hpp).
#include "guidiff/io/pt_file.hpp"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <cstring>
#include <fstream>
#include <set>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/state_dict_pickle.hpp"
#include "guidiff/io/zip_directory.hpp"

namespace guidiff {
namespace {

// libtorch's messages can span lines (and carry a backtrace); ours are one line.
std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.empty() ? "unknown error" : line;
}

// `what` can quote the file's own strings (tensor names, record keys): printable and short.
[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw FileError("'" + path + "': " + printable_excerpt(what, 240));
}

// Names the format when it is not a zip archive (checked before libtorch sees the file).
void check_zip_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open the file");
  char magic[4] = {0, 0, 0, 0};
  in.read(magic, 4);
  const auto bytes = in.gcount();
  if (bytes == 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0) return;
  if (bytes >= 2 && static_cast<unsigned char>(magic[0]) == 0x80 && static_cast<unsigned char>(magic[1]) <= 5) {
    fail(path, "written in torch.save's legacy format (torch < 1.6 or _use_new_zipfile_serialization=False), "
               "which guidiff does not read: re-save it with a current torch.save");
  }
  fail(path, bytes == 0 ? "the file is empty" : "not a torch.save zip archive (no zip signature)");
}

// The unpickler is handed one placeholder per storage, carrying the record key instead of
// data: nothing is read until PtStateDict::read asks for one tensor.
void delete_storage_key(void* key) { delete static_cast<std::string*>(key); }

at::DataPtr storage_placeholder(const std::string& key) {
  return at::DataPtr(nullptr, new std::string(key), &delete_storage_key, at::Device(at::kCPU));
}

std::string storage_key_of(const at::Tensor& tensor) {
  const at::DataPtr& data = tensor.storage().data_ptr();
  if (data.get_deleter() != &delete_storage_key || data.get_context() == nullptr) return "";
  return *static_cast<const std::string*>(data.get_context());
}

}  // namespace

int64_t PtTensorInfo::numel() const {
  int64_t count = 1;
  for (const int64_t size : sizes) count *= size;
  return count;
}

PtStateDict::PtStateDict(PtStateDict&&) noexcept = default;
PtStateDict& PtStateDict::operator=(PtStateDict&&) noexcept = default;
PtStateDict::~PtStateDict() = default;

PtStateDict::PtStateDict(const std::string& path) : path_(path) {
  check_zip_magic(path);
  check_zip_members_fit({path, "torch.save archive", "a torch.save archive"});
  std::string pickle;
  try {
    reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    if (!reader_->hasRecord("data.pkl")) fail(path, "the archive has no data.pkl (not written by torch.save?)");
    auto [data, size] = reader_->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const c10::Error& error) {
    fail(path, "not a readable torch.save archive (" + first_line(error.what_without_backtrace()) + ")");
  } catch (const std::exception& error) {  // e.g. a malformed version record, bad_alloc
    fail(path, "not a readable torch.save archive (" + first_line(error.what()) + ")");
  }

  const NormalisedStateDictPickle normalised = normalise_state_dict_pickle(pickle, "'" + path + "'");
  c10::IValue value;
  try {
    size_t position = 0;
    const std::string& bytes = normalised.bytes;
    const auto read_bytes = [&](char* buffer, size_t wanted) {
      const size_t count = std::min(wanted, bytes.size() - position);
      std::memcpy(buffer, bytes.data() + position, count);
      position += count;
      return count;
    };
    // Every storage on the CPU, whatever location the pickle names (map_location="cpu").
    torch::jit::Unpickler unpickler(read_bytes, /*type_resolver=*/nullptr, /*obj_loader=*/nullptr,
                                    storage_placeholder, at::Device(at::kCPU));
    value = unpickler.parse_ivalue();
  } catch (const c10::Error& error) {
    fail(path, "data.pkl could not be unpickled (" + first_line(error.what_without_backtrace()) + ")");
  }
  if (normalised.top_level_is_built_tuple) value = value.toTupleRef().elements().at(0);

  std::set<std::string> counted_storages;
  for (const auto& entry : value.toGenericDict()) {
    if (!entry.key().isString()) fail(path, "a state dict key is not a string");
    const std::string name = entry.key().toStringRef();
    if (!entry.value().isTensor()) {
      fail(path, "key '" + name + "' holds a " + entry.value().tagKind() + ", not a tensor (not a state dict?)");
    }
    const at::Tensor& tensor = entry.value().toTensor();
    PtTensorInfo info;
    info.name = name;
    info.dtype = tensor.scalar_type();
    info.sizes = tensor.sizes().vec();
    info.strides = tensor.strides().vec();
    info.storage_offset = tensor.storage_offset();
    info.storage_bytes = static_cast<int64_t>(tensor.storage().nbytes());
    info.storage_key = storage_key_of(tensor);
    if (info.storage_bytes > 0) {
      if (info.storage_key.empty()) fail(path, "tensor '" + name + "' has no storage record");
      if (!reader_->hasRecord("data/" + info.storage_key)) {
        fail(path, "tensor '" + name + "': storage record data/" + info.storage_key + " is missing");
      }
      if (counted_storages.insert(info.storage_key).second) storage_bytes_ += info.storage_bytes;
    }
    tensors_.push_back(std::move(info));
  }
}

const PtTensorInfo* PtStateDict::find(const std::string& name) const {
  for (const auto& info : tensors_) {
    if (info.name == name) return &info;
  }
  return nullptr;
}

torch::Tensor PtStateDict::read(const PtTensorInfo& info) const {
  const auto options = torch::TensorOptions().dtype(info.dtype);
  if (info.numel() == 0) return torch::empty(info.sizes, options);
  const std::string record = "data/" + info.storage_key;
  std::shared_ptr<at::DataPtr> data;
  size_t bytes = 0;
  try {
    auto [pointer, size] = reader_->getRecord(record);
    data = std::make_shared<at::DataPtr>(std::move(pointer));
    bytes = size;
  } catch (const c10::Error& error) {
    fail(path_, "tensor '" + info.name + "': record " + record + " cannot be read (" +
                    first_line(error.what_without_backtrace()) + ")");
  } catch (const std::exception& error) {
    fail(path_, "tensor '" + info.name + "': record " + record + " cannot be read (" + first_line(error.what()) + ")");
  }
  if (static_cast<int64_t>(bytes) != info.storage_bytes) {
    fail(path_, "tensor '" + info.name + "': record " + record + " has " + std::to_string(bytes) +
                    " bytes but the pickle says " + std::to_string(info.storage_bytes));
  }
  const int64_t element = static_cast<int64_t>(c10::elementSize(info.dtype));
  // The record's memory is freed with the last tensor that uses it.
  const auto storage = torch::from_blob(data->get(), {info.storage_bytes / element}, [data](void*) {}, options);
  const auto view = storage.as_strided(info.sizes, info.strides, info.storage_offset);
  // A view of part of a shared storage gets its own memory, so the rest can be freed.
  return view.numel() == storage.numel() && view.is_contiguous() ? view : view.clone(at::MemoryFormat::Contiguous);
}

NamedTensors load_pt_state_dict(const std::string& path) {
  const PtStateDict file(path);
  NamedTensors tensors;
  for (const auto& info : file.tensors()) tensors.emplace_back(info.name, file.read(info));
  return tensors;
}

}  // namespace guidiff
