// Reading `.pt` files written by torch.save(model.state_dict()), in either of its formats:
//  - the zip archive (torch >= 1.6) holding <archive>/data.pkl (the pickled dict of tensors)
//    and one record <archive>/data/<key> per storage;
//  - the legacy format (torch < 1.6, or _use_new_zipfile_serialization=False), in which
//    pytorch-fid's Inception weights are saved: five pickles in a row (a magic number, the
//    protocol version 1001, a dict of the saving machine's settings, the dict of tensors, the
//    list of storage keys in data order), then each storage as its element count (int64) and
//    its bytes.
// libtorch reads the zip archive (caffe2::serialize::PyTorchStreamReader) and every pickle
// (torch::jit::Unpickler, after normalise_state_dict_pickle made it safe for it).
// Every storage is mapped to the CPU whatever device it was saved from ("cuda:0" in files
// saved during GPU training), as torch.load(..., map_location="cpu") does. Python is not
// involved.
//
// Opening reads only the pickle: tensor data is read one tensor at a time, on request, so a
// caller that copies each tensor into a model and drops it holds the weights once.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "guidiff/io/safetensors.hpp"

namespace caffe2::serialize {
class PyTorchStreamReader;
}
namespace c10 {
struct IValue;
}

namespace guidiff {

// One entry of the state dict: what the pickle says about it.
struct PtTensorInfo {
  std::string name;
  torch::ScalarType dtype = torch::kFloat32;
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  int64_t storage_offset = 0;  // in elements
  std::string storage_key;     // record data/<key> (or the legacy data's entry); empty for a storage without elements
  int64_t storage_bytes = 0;
  int64_t numel() const;
};

class PtStateDict {
 public:
  // Opens `path` and reads its pickles. Throws FileError naming the file when it is missing,
  // in neither format, truncated or corrupt, lacks data.pkl or a storage's data, or its
  // pickle is not a dict from strings to tensors (the key or byte offset at fault is named).
  explicit PtStateDict(const std::string& path);
  ~PtStateDict();
  PtStateDict(PtStateDict&&) noexcept;
  PtStateDict& operator=(PtStateDict&&) noexcept;

  const std::string& path() const { return path_; }
  // In the file's order.
  const std::vector<PtTensorInfo>& tensors() const { return tensors_; }
  const PtTensorInfo* find(const std::string& name) const;
  // Bytes of all storages (each counted once): the weights' size.
  int64_t storage_bytes() const { return storage_bytes_; }

  // The tensor's values: a contiguous CPU tensor of its stored dtype that owns its memory.
  // Throws FileError if the record cannot be read or its size disagrees with the pickle.
  torch::Tensor read(const PtTensorInfo& info) const;

 private:
  void open_archive();
  void open_legacy();
  void read_tensor_list(const c10::IValue& state_dict);
  torch::Tensor read_storage(const PtTensorInfo& info) const;

  std::string path_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader_;  // the zip format's
  std::map<std::string, int64_t> legacy_data_offsets_;               // the legacy format's: key -> byte offset
  std::vector<PtTensorInfo> tensors_;
  int64_t storage_bytes_ = 0;
};

// Every tensor of the file, in its order (holds them all: for small files and tests).
NamedTensors load_pt_state_dict(const std::string& path);

}  // namespace guidiff
