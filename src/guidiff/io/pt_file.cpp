// `.pt` state dicts through libtorch's archive reader and unpickler (see pt_file.hpp).
#include "guidiff/io/pt_file.hpp"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/unpickler.h>

#include <cstring>
#include <filesystem>
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

// torch.save's legacy format begins with a pickle (protocol 2) of its magic number
// 0x1950a86a20f9469cfc6c, then one of the protocol version 1001 (torch/serialization.py).
constexpr char kLegacyMagicPickle[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";
constexpr size_t kLegacyMagicPickleBytes = sizeof kLegacyMagicPickle - 1;
constexpr char kLegacyVersionPickle[] = "\x80\x02\x4d\xe9\x03\x2e";
constexpr size_t kLegacyVersionPickleBytes = sizeof kLegacyVersionPickle - 1;

enum class PtFormat { zip, legacy };

// Tells the two formats apart by their first bytes, and names what else the file is.
PtFormat pt_format(const std::string& path) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored))
    fail(path, "it is a directory, not a torch.save file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open the file");
  char magic[kLegacyMagicPickleBytes] = {};
  in.read(magic, sizeof magic);
  const auto bytes = static_cast<size_t>(in.gcount());
  if (bytes >= 4 && std::memcmp(magic, "PK\x03\x04", 4) == 0) return PtFormat::zip;
  if (bytes == kLegacyMagicPickleBytes && std::memcmp(magic, kLegacyMagicPickle, bytes) == 0) return PtFormat::legacy;
  if (bytes >= 2 && static_cast<unsigned char>(magic[0]) == 0x80 && static_cast<unsigned char>(magic[1]) <= 5) {
    const int protocol = static_cast<unsigned char>(magic[1]);
    if (protocol != 2) {
      fail(path, "legacy format with pickle protocol " + std::to_string(protocol) +
                     "; torch.save writes protocol 2 (re-save without pickle_protocol)");
    }
    fail(path, "a pickle, but not torch.save's: it lacks the legacy format's magic number");
  }
  fail(path, bytes == 0 ? "the file is empty" : "not a torch.save file (neither a zip archive nor the legacy format)");
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

// libtorch's unpickler over a pickle normalise_state_dict_pickle accepted; storages become
// placeholders on the CPU, whatever location the pickle names (map_location="cpu").
c10::IValue unpickle(const NormalisedStateDictPickle& normalised, const std::string& path, const std::string& what) {
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
    torch::jit::Unpickler unpickler(read_bytes, /*type_resolver=*/nullptr, /*obj_loader=*/nullptr,
                                    storage_placeholder, at::Device(at::kCPU));
    value = unpickler.parse_ivalue();
  } catch (const c10::Error& error) {
    fail(path, what + " could not be unpickled (" + first_line(error.what_without_backtrace()) + ")");
  }
  if (normalised.top_level_is_built_tuple) value = value.toTupleRef().elements().at(0);
  return value;
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
  if (pt_format(path) == PtFormat::zip) {
    open_archive();
  } else {
    open_legacy();
  }
}

void PtStateDict::open_archive() {
  check_zip_members_fit({path_, "torch.save archive", "a torch.save archive"});
  std::string pickle;
  try {
    reader_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path_);
    if (!reader_->hasRecord("data.pkl")) fail(path_, "the archive has no data.pkl (not written by torch.save?)");
    auto [data, size] = reader_->getRecord("data.pkl");
    pickle.assign(static_cast<const char*>(data.get()), size);
  } catch (const c10::Error& error) {
    fail(path_, "not a readable torch.save archive (" + first_line(error.what_without_backtrace()) + ")");
  } catch (const std::exception& error) {  // e.g. a malformed version record, bad_alloc
    fail(path_, "not a readable torch.save archive (" + first_line(error.what()) + ")");
  }
  const NormalisedStateDictPickle normalised = normalise_state_dict_pickle(pickle, "'" + path_ + "'");
  for (const auto& storage : normalised.storages) {
    if (storage.numel > 0 && !reader_->hasRecord("data/" + storage.key)) {
      fail(path_, "storage record data/" + storage.key + " is missing");
    }
  }
  read_tensor_list(unpickle(normalised, path_, "data.pkl"));
}

namespace {

// Bytes [offset, offset + count) of the file, fewer where it ends first.
std::string read_file_range(std::ifstream& in, int64_t offset, size_t count) {
  std::string bytes(count, '\0');
  in.clear();
  in.seekg(offset);
  in.read(bytes.data(), static_cast<std::streamsize>(count));
  bytes.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  return bytes;
}

// The legacy format's pickles, checked and read; what the storage data needs to be found.
struct LegacyHeader {
  NormalisedStateDictPickle state_dict;
  std::vector<std::string> storage_keys;  // in the order their data follows
  size_t data_start = 0;
};

LegacyHeader read_legacy_header(const std::string& head, const std::string& path) {
  LegacyHeader header;
  size_t position = kLegacyMagicPickleBytes;  // pt_format checked the magic number
  if (head.compare(position, kLegacyVersionPickleBytes, kLegacyVersionPickle) != 0) {
    if (head.size() < position + kLegacyVersionPickleBytes) throw PickleTruncated("'" + path + "': truncated header");
    fail(path, "legacy format, but the second pickle is not the protocol version 1001 that torch.save writes");
  }
  position += kLegacyVersionPickleBytes;
  const auto next_pickle = [&](PickleContent content, const char* label) {
    PickleSource source;
    source.name_for_errors = "'" + path + "'";
    source.label = label;
    source.first_byte = position;
    source.content = content;
    source.more_follows = true;
    NormalisedStateDictPickle pickle = normalise_state_dict_pickle(head.substr(position), source);
    position += pickle.consumed;
    return pickle;
  };
  // The saving machine's settings: the storage data is in its byte order.
  const c10::IValue settings = unpickle(next_pickle(PickleContent::plain_values, "the settings pickle"), path,
                                        "the settings pickle");
  bool little_endian = false;
  if (settings.isGenericDict()) {
    for (const auto& entry : settings.toGenericDict()) {
      if (entry.key().isString() && entry.key().toStringRef() == "little_endian" && entry.value().isBool()) {
        little_endian = entry.value().toBool();
      }
    }
  }
  if (!little_endian) fail(path, "legacy format saved on a big-endian machine (or without its byte order), which guidiff does not read");
  header.state_dict = next_pickle(PickleContent::state_dict, "the state dict pickle");
  const c10::IValue keys = unpickle(next_pickle(PickleContent::plain_values, "the storage key pickle"), path,
                                    "the storage key pickle");
  if (!keys.isList()) fail(path, "the legacy format's storage key pickle is not a list");
  for (const auto& key : keys.toListRef()) {
    if (!key.isString()) fail(path, "the legacy format's storage key list holds a " + key.tagKind() + ", not a string");
    header.storage_keys.push_back(key.toStringRef());
  }
  header.data_start = position;
  return header;
}

}  // namespace

void PtStateDict::open_legacy() {
  std::ifstream in(path_, std::ios::binary | std::ios::ate);
  if (!in) fail(path_, "cannot open the file");
  const auto file_bytes = static_cast<int64_t>(in.tellg());
  // The pickles' length is known only by reading them: read a prefix, and a longer one while
  // they run past it (the state dict pickle is limited to kMaxStateDictPickleBytes).
  size_t prefix = std::min<size_t>(static_cast<size_t>(file_bytes), size_t{64} << 10);
  LegacyHeader header;
  while (true) {
    try {
      header = read_legacy_header(read_file_range(in, 0, prefix), path_);
      break;
    } catch (const PickleTruncated& error) {
      if (prefix == static_cast<size_t>(file_bytes)) throw FileError(std::string(error.what()) + " (an interrupted download?)");
      prefix = std::min<size_t>(static_cast<size_t>(file_bytes), prefix * 4);
    }
  }

  // The data: per storage, in the key list's order, its element count then its bytes.
  std::map<std::string, const StorageReference*> referenced;
  for (const auto& storage : header.state_dict.storages) referenced.emplace(storage.key, &storage);
  int64_t offset = static_cast<int64_t>(header.data_start);
  for (const std::string& key : header.storage_keys) {
    const auto found = referenced.find(key);
    if (found == referenced.end()) {
      fail(path_, "the storage key list names '" + key + "', which no tensor uses (or names it twice)");
    }
    const StorageReference& storage = *found->second;
    referenced.erase(found);
    const int64_t bytes = storage.numel * static_cast<int64_t>(c10::elementSize(storage.dtype));
    if (file_bytes - offset < 8 || file_bytes - offset - 8 < bytes) {
      fail(path_, "truncated: storage '" + key + "' needs bytes " + std::to_string(offset) + " to " +
                      std::to_string(offset + 8 + bytes) + " but the file has " + std::to_string(file_bytes) +
                      " (an interrupted download?)");
    }
    const std::string count_bytes = read_file_range(in, offset, 8);
    if (count_bytes.size() != 8) fail(path_, "storage '" + key + "': its element count cannot be read");
    const auto stored_numel = static_cast<int64_t>(zip_format::get64(count_bytes, 0));
    if (stored_numel != storage.numel) {
      fail(path_, "storage '" + key + "' at byte " + std::to_string(offset) + " holds " + std::to_string(stored_numel) +
                      " elements but the pickle says " + std::to_string(storage.numel));
    }
    legacy_data_offsets_[key] = offset + 8;
    offset += 8 + bytes;
  }
  if (!referenced.empty()) {
    fail(path_, "storage '" + referenced.begin()->first + "' is used by a tensor but has no data (missing from the storage key list)");
  }
  if (offset != file_bytes) {
    fail(path_, std::to_string(file_bytes - offset) + " bytes follow the last storage's data (not written by torch.save?)");
  }
  read_tensor_list(unpickle(header.state_dict, path_, "the state dict pickle"));
}

void PtStateDict::read_tensor_list(const c10::IValue& state_dict) {
  std::set<std::string> counted_storages;
  for (const auto& entry : state_dict.toGenericDict()) {
    if (!entry.key().isString()) fail(path_, "a state dict key is not a string");
    const std::string name = entry.key().toStringRef();
    if (!entry.value().isTensor()) {
      fail(path_, "key '" + name + "' holds a " + entry.value().tagKind() + ", not a tensor (not a state dict?)");
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
      if (info.storage_key.empty()) fail(path_, "tensor '" + name + "' has no storage record");
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
  const torch::Tensor storage = read_storage(info);
  const auto view = storage.as_strided(info.sizes, info.strides, info.storage_offset);
  // A view of part of a shared storage gets its own memory, so the rest can be freed.
  return view.numel() == storage.numel() && view.is_contiguous() ? view : view.clone(at::MemoryFormat::Contiguous);
}

// The whole storage behind `info`, as a flat tensor of its dtype.
torch::Tensor PtStateDict::read_storage(const PtTensorInfo& info) const {
  const auto options = torch::TensorOptions().dtype(info.dtype);
  const int64_t element = static_cast<int64_t>(c10::elementSize(info.dtype));
  if (!reader_) {
    const auto found = legacy_data_offsets_.find(info.storage_key);
    if (found == legacy_data_offsets_.end()) fail(path_, "tensor '" + info.name + "' has no storage data");
    torch::Tensor storage = torch::empty({info.storage_bytes / element}, options);
    std::ifstream in(path_, std::ios::binary);
    in.seekg(found->second);
    in.read(static_cast<char*>(storage.data_ptr()), info.storage_bytes);
    if (!in || in.gcount() != info.storage_bytes) {
      fail(path_, "tensor '" + info.name + "': its storage data at byte " + std::to_string(found->second) +
                      " cannot be read (the file changed since it was opened?)");
    }
    return storage;
  }
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
  // The record's memory is freed with the last tensor that uses it.
  return torch::from_blob(data->get(), {info.storage_bytes / element}, [data](void*) {}, options);
}

NamedTensors load_pt_state_dict(const std::string& path) {
  const PtStateDict file(path);
  NamedTensors tensors;
  for (const auto& info : file.tensors()) tensors.emplace_back(info.name, file.read(info));
  return tensors;
}

}  // namespace guidiff
