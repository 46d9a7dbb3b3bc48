// The safetensors weight format (https://huggingface.co/docs/safetensors): an 8-byte
// little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>", ...}}      (metadata optional)
// padded with spaces, then the raw little-endian tensor bytes; offsets are relative to the
// first byte after the header. Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8,
// BOOL.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "guidiff/io/atomic_file.hpp"

namespace guidiff {

// Named tensors in a fixed order (the order they are written, and read back).
using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct SafetensorsContents {
  NamedTensors tensors;                         // CPU tensors, ordered by data offset
  std::map<std::string, std::string> metadata;  // the "__metadata__" map (may be empty)

  // The tensor called `name`, or nullptr.
  const torch::Tensor* find(const std::string& name) const;
};

// Writes `tensors` (any device, any strides; copied to contiguous CPU) and `metadata` to
// `path` atomically, tensors laid out in the given order. Throws InputError naming the
// tensor for an unsupported dtype, a duplicate or empty name, or the reserved name
// "__metadata__"; FileError if the file cannot be written.
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// save_safetensors' file for write_files_atomically, with others as one group: the header is
// built and the names and dtypes checked now (InputError naming `path`); the tensors' bytes go
// from their memory to the file as it is written, so a model is never copied into one buffer.
// The tensors must not change until it is written.
StreamedFile safetensors_file(const std::string& path, const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Reads a whole safetensors file. Throws FileError naming the file (and the tensor or key at
// fault) when it is missing, truncated, its header is not valid JSON or not the expected
// layout, a dtype is unknown, a shape disagrees with its byte count, or data_offsets run past
// the data or overlap another tensor's.
SafetensorsContents load_safetensors(const std::string& path);

// A safetensors file read tensor by tensor: opening reads and checks the header as
// load_safetensors does (FileError naming the file); read(i) reads the i-th tensor (in data
// order) into a fresh CPU tensor. For large files that must not be held twice.
class SafetensorsFile {
 public:
  struct Entry {
    std::string name;
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
  };
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  const std::vector<Entry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  torch::Tensor read(size_t index) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// The file bytes save_safetensors writes, and their inverse (`name_for_errors` is the file
// name that messages quote).
std::string encode_safetensors(const NamedTensors& tensors,
                               const std::map<std::string, std::string>& metadata = {});
SafetensorsContents decode_safetensors(const std::string& bytes,
                                       const std::string& name_for_errors);

}  // namespace guidiff
