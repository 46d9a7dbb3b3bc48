// safetensors reading and writing (format summary in safetensors.hpp).
#include "guidiff/io/safetensors.hpp"

#include <algorithm>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; guidiff copies it to memory as is");

namespace guidiff {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr const char* kMetadataKey = "__metadata__";
// The reference implementation refuses headers above 100 MB; so do we, before allocating.
constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kSafetensorsDtypes[] = {
    {"F64", torch::kFloat64},   {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},   {"I32", torch::kInt32},
    {"I16", torch::kInt16},     {"I8", torch::kInt8},     {"U8", torch::kUInt8},
    {"BOOL", torch::kBool},
};

const char* dtype_name(torch::ScalarType type, const std::string& tensor_name) {
  for (const auto& entry : kSafetensorsDtypes) {
    if (entry.type == type) return entry.name;
  }
  throw InputError("cannot save tensor '" + tensor_name + "' as safetensors: unsupported dtype " +
                   std::string(c10::toString(type)));
}

}  // namespace

// One header entry, checked against the data section. Outside the anonymous namespace because
// SafetensorsFile::Impl (external linkage) holds a vector of them.
struct SafetensorsTensorEntry {
  std::string name;
  torch::ScalarType type;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

namespace {

using TensorEntry = SafetensorsTensorEntry;

class HeaderReader {
 public:
  HeaderReader(std::string file, uint64_t data_bytes)
      : file_(std::move(file)), data_bytes_(data_bytes) {}

  [[noreturn]] void fail(const std::string& what) const {
    throw FileError("safetensors file '" + file_ + "': " + what);
  }

  uint64_t non_negative_integer(const OrderedJson& value, const std::string& tensor,
                                const char* field) const {
    if (!value.is_number_unsigned()) {
      fail("tensor '" + tensor + "': " + field + " must hold non-negative integers, got " +
           value.dump());
    }
    return value.get<uint64_t>();
  }

  TensorEntry entry(const std::string& name, const OrderedJson& value) const {
    if (!value.is_object()) fail("tensor '" + name + "': header entry is not an object");
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!value.contains(field))
        fail("tensor '" + name + "': header entry lacks \"" + field + "\"");
    }
    TensorEntry entry;
    entry.name = name;
    const auto& dtype = value.at("dtype");
    if (!dtype.is_string()) fail("tensor '" + name + "': dtype is not a string");
    const auto dtype_text = dtype.get<std::string>();
    const auto found = std::find_if(std::begin(kSafetensorsDtypes), std::end(kSafetensorsDtypes),
                                    [&](const DtypeName& d) { return dtype_text == d.name; });
    if (found == std::end(kSafetensorsDtypes))
      fail("tensor '" + name + "': unknown dtype '" + dtype_text + "'");
    entry.type = found->type;

    const auto& shape = value.at("shape");
    if (!shape.is_array()) fail("tensor '" + name + "': shape is not an array");
    uint64_t bytes = c10::elementSize(entry.type);
    for (const auto& size : shape) {
      const uint64_t extent = non_negative_integer(size, name, "shape");
      if (extent > 0 && bytes > std::numeric_limits<int64_t>::max() / extent) {
        fail("tensor '" + name + "': shape " + shape.dump() + " is too large");
      }
      bytes *= extent;
      entry.shape.push_back(static_cast<int64_t>(extent));
    }

    const auto& offsets = value.at("data_offsets");
    if (!offsets.is_array() || offsets.size() != 2) {
      fail("tensor '" + name + "': data_offsets must be [begin, end]");
    }
    entry.begin = non_negative_integer(offsets[0], name, "data_offsets");
    entry.end = non_negative_integer(offsets[1], name, "data_offsets");
    if (entry.end < entry.begin)
      fail("tensor '" + name + "': data_offsets " + offsets.dump() + " end before they begin");
    if (entry.end > data_bytes_) {
      fail("tensor '" + name + "': data_offsets " + offsets.dump() + " run past the end of the " +
           std::to_string(data_bytes_) + " data bytes (file truncated or offsets out of range)");
    }
    if (entry.end - entry.begin != bytes) {
      fail("tensor '" + name + "': shape " + shape_string(entry.shape) + " of " + dtype_text +
           " needs " + std::to_string(bytes) + " bytes but data_offsets " + offsets.dump() +
           " span " + std::to_string(entry.end - entry.begin));
    }
    return entry;
  }

  std::map<std::string, std::string> metadata(const OrderedJson& value) const {
    if (!value.is_object()) fail("__metadata__ is not an object of strings");
    std::map<std::string, std::string> result;
    for (const auto& item : value.items()) {
      if (!item.value().is_string()) fail("__metadata__ key '" + item.key() + "' is not a string");
      result[item.key()] = item.value().get<std::string>();
    }
    return result;
  }

 private:
  std::string file_;
  uint64_t data_bytes_;
};

}  // namespace

const torch::Tensor* SafetensorsContents::find(const std::string& name) const {
  for (const auto& [key, tensor] : tensors) {
    if (key == name) return &tensor;
  }
  return nullptr;
}

namespace {

// The file's first part (length + padded JSON header) and the tensors' bytes in order, as
// contiguous CPU tensors (the given tensors themselves when they already are).
struct EncodedParts {
  std::string prefix;
  std::vector<torch::Tensor> data;
  uint64_t data_bytes = 0;
};

EncodedParts encode_parts(const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  OrderedJson header = OrderedJson::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  std::vector<torch::Tensor> contiguous;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty()) throw InputError("cannot save a safetensors tensor with an empty name");
    if (name == kMetadataKey)
      throw InputError("cannot save a tensor named '__metadata__' (reserved)");
    if (!seen.insert(name).second) throw InputError("cannot save tensor '" + name + "' twice");
    if (!tensor.defined()) throw InputError("cannot save tensor '" + name + "': it is undefined");
    const char* dtype = dtype_name(tensor.scalar_type(), name);
    auto data = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(data.numel()) * data.element_size();
    header[name] = {{"dtype", dtype},
                    {"shape", data.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(std::move(data));
  }
  std::string header_text = header.dump();
  // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  EncodedParts parts;
  const uint64_t header_length = header_text.size();
  for (int i = 0; i < 8; ++i) parts.prefix.push_back(static_cast<char>((header_length >> (8 * i)) & 0xff));
  parts.prefix += header_text;
  parts.data = std::move(contiguous);
  parts.data_bytes = offset;
  return parts;
}

// Hands the file's bytes to `append`: the prefix, then each tensor straight from its memory.
void append_parts(const EncodedParts& parts, const AppendBytes& append) {
  append(parts.prefix.data(), parts.prefix.size());
  for (const auto& data : parts.data) {
    append(data.data_ptr(), static_cast<size_t>(data.numel()) * data.element_size());
  }
}

}  // namespace

std::string encode_safetensors(const NamedTensors& tensors,
                               const std::map<std::string, std::string>& metadata) {
  const EncodedParts parts = encode_parts(tensors, metadata);
  std::string out;
  out.reserve(parts.prefix.size() + parts.data_bytes);
  append_parts(parts, [&](const void* data, size_t size) {
    out.append(static_cast<const char*>(data), size);
  });
  return out;
}

StreamedFile safetensors_file(const std::string& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata) {
  auto parts = std::make_shared<EncodedParts>();
  try {
    *parts = encode_parts(tensors, metadata);
  } catch (const InputError& error) {
    throw InputError("'" + path + "': " + error.what());
  }
  return {path, [parts](const AppendBytes& append) { append_parts(*parts, append); }};
}

namespace {

[[noreturn]] void fail_file(const std::string& name, const std::string& what) {
  throw FileError("safetensors file '" + name + "': " + what);
}

// The header length in the first 8 of `head` (the file's first bytes, `file_size` in all),
// checked against the file.
uint64_t header_length_of(const std::string& head, uint64_t file_size, const std::string& name) {
  if (file_size < 8 || head.size() < 8) {
    fail_file(name, "truncated: " + std::to_string(file_size) + " bytes, less than the 8-byte header length");
  }
  uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i) {
    header_length |= static_cast<uint64_t>(static_cast<unsigned char>(head[i])) << (8 * i);
  }
  if (header_length > kMaxHeaderBytes) {
    fail_file(name, "header length " + std::to_string(header_length) + " is implausible (not a safetensors file?)");
  }
  if (header_length > file_size - 8) {
    fail_file(name, "truncated header: it should have " + std::to_string(header_length) + " bytes but only " +
                        std::to_string(file_size - 8) + " follow");
  }
  return header_length;
}

// The header (its JSON text) parsed and checked: entries in data order, no overlaps, all
// inside the file's `data_bytes` data bytes.
struct ParsedHeader {
  std::vector<TensorEntry> entries;
  std::map<std::string, std::string> metadata;
};

ParsedHeader parse_header(const std::string& text, uint64_t data_bytes, const std::string& name) {
  OrderedJson header;
  try {
    header = OrderedJson::parse(text);
  } catch (const nlohmann::json::exception& error) {
    fail_file(name, std::string("header is not valid JSON (") + json_error_text(error) + ")");
  }
  if (!header.is_object()) fail_file(name, "header is not a JSON object");
  const HeaderReader reader(name, data_bytes);
  ParsedHeader parsed;
  for (const auto& item : header.items()) {
    if (item.key() == kMetadataKey) {
      parsed.metadata = reader.metadata(item.value());
    } else {
      parsed.entries.push_back(reader.entry(item.key(), item.value()));
    }
  }
  // File order = data order; empty tensors (begin == end) keep their header order.
  auto& entries = parsed.entries;
  std::stable_sort(entries.begin(), entries.end(),
                   [](const TensorEntry& a, const TensorEntry& b) { return a.begin < b.begin; });
  const TensorEntry* previous = nullptr;  // the non-empty entry reaching furthest so far
  for (const auto& entry : entries) {
    if (entry.begin == entry.end) continue;
    if (previous != nullptr && entry.begin < previous->end) {
      fail_file(name, "tensors '" + previous->name + "' and '" + entry.name + "' have overlapping data_offsets");
    }
    if (previous == nullptr || entry.end > previous->end) previous = &entry;
  }
  return parsed;
}

}  // namespace

SafetensorsContents decode_safetensors(const std::string& bytes,
                                       const std::string& name_for_errors) {
  const uint64_t header_length = header_length_of(bytes, bytes.size(), name_for_errors);
  const uint64_t data_start = 8 + header_length;
  ParsedHeader parsed = parse_header(bytes.substr(8, header_length), bytes.size() - data_start, name_for_errors);
  SafetensorsContents contents;
  contents.metadata = std::move(parsed.metadata);
  for (const auto& entry : parsed.entries) {
    auto tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.type));
    if (entry.end > entry.begin) {
      std::memcpy(tensor.data_ptr(), bytes.data() + data_start + entry.begin,
                  entry.end - entry.begin);
    }
    contents.tensors.emplace_back(entry.name, std::move(tensor));
  }
  return contents;
}

struct SafetensorsFile::Impl {
  std::string path;
  std::ifstream in;
  uint64_t data_start = 0;
  std::vector<TensorEntry> entries;
};

SafetensorsFile::SafetensorsFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  if (std::filesystem::is_directory(path)) throw FileError("cannot read '" + path + "': it is a directory");
  impl_->in.open(path, std::ios::binary);
  if (!impl_->in) throw FileError("cannot read '" + path + "': " + std::strerror(errno));
  std::error_code error;
  const uint64_t file_size = std::filesystem::file_size(path, error);
  if (error) throw FileError("cannot read '" + path + "': " + error.message());
  std::string head(8, '\0');
  impl_->in.read(head.data(), 8);
  head.resize(static_cast<size_t>(impl_->in.gcount()));
  const uint64_t header_length = header_length_of(head, file_size, path);
  std::string text(header_length, '\0');
  impl_->in.read(text.data(), static_cast<std::streamsize>(header_length));
  if (static_cast<uint64_t>(impl_->in.gcount()) != header_length) fail_file(path, "truncated header");
  impl_->data_start = 8 + header_length;
  ParsedHeader parsed = parse_header(text, file_size - impl_->data_start, path);
  impl_->entries = std::move(parsed.entries);
  metadata_ = std::move(parsed.metadata);
  for (const auto& entry : impl_->entries) entries_.push_back({entry.name, entry.type, entry.shape});
}

SafetensorsFile::~SafetensorsFile() = default;

torch::Tensor SafetensorsFile::read(size_t index) const {
  const TensorEntry& entry = impl_->entries.at(index);
  auto tensor = torch::empty(entry.shape, torch::TensorOptions().dtype(entry.type));
  const uint64_t bytes = entry.end - entry.begin;
  if (bytes > 0) {
    impl_->in.clear();
    impl_->in.seekg(static_cast<std::streamoff>(impl_->data_start + entry.begin));
    impl_->in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(bytes));
    if (static_cast<uint64_t>(impl_->in.gcount()) != bytes) {
      fail_file(impl_->path, "tensor '" + entry.name + "' could not be read (file changed or truncated)");
    }
  }
  return tensor;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_files_atomically({safetensors_file(path, tensors, metadata)});
}

SafetensorsContents load_safetensors(const std::string& path) {
  return decode_safetensors(read_file_bytes(path), path);
}

}  // namespace guidiff
