// Fuzz targets of io/: .npy, .npz, safetensors and torch.save .pt files. Where a reader accepts the input, its
// writer must write what was read and the reader must read that back unchanged: a reader
// that accepts bytes it misreads is caught even when it does not crash.
#include <cstring>
#include <set>
#include <stdexcept>
#include <string_view>

#include "../fixtures.hpp"
#include "../fuzz_target.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/pt_file.hpp"
#include "guidiff/io/safetensors.hpp"

namespace guidiff::fuzz {
namespace {

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const auto x = a.contiguous(), y = b.contiguous();
  const size_t bytes = static_cast<size_t>(x.numel()) * x.element_size();
  return bytes == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), bytes) == 0;
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::logic_error("round trip: " + what);
}

}  // namespace

void fuzz_npy(std::string_view input) {
  const torch::Tensor tensor = decode_npy(input, "'fuzz.npy'");
  const torch::Tensor again = decode_npy(encode_npy(tensor), "'fuzz re-encoded.npy'");
  require(same_bytes(tensor, again), "decode(encode(tensor)) differs from tensor");
}

void fuzz_npz(std::string_view input) {
  const std::string path = scratch_path("fuzz.npz");
  write_scratch_file(path, input);
  const NamedArrays arrays = read_npz(path);
  std::set<std::string> names;
  for (const auto& entry : arrays) names.insert(entry.first);
  if (names.size() == arrays.size()) {  // write_npz refuses repeated names, as numpy.savez does
    const std::string copy = scratch_path("fuzz-copy.npz");
    write_npz(copy, arrays);
    const NamedArrays again = read_npz(copy);
    require(again.size() == arrays.size(), "array count changed");
    for (size_t i = 0; i < arrays.size(); ++i) {
      require(again[i].first == arrays[i].first, "name of array " + std::to_string(i) + " changed");
      require(same_bytes(again[i].second, arrays[i].second), "array '" + arrays[i].first + "' changed");
    }
  }
  read_sample_batch_npz(path);
}

void fuzz_safetensors(std::string_view input) {
  const SafetensorsContents contents = decode_safetensors(std::string(input), "fuzz.safetensors");
  const SafetensorsContents again =
      decode_safetensors(encode_safetensors(contents.tensors, contents.metadata), "fuzz re-encoded.safetensors");
  require(again.metadata == contents.metadata, "metadata changed");
  require(again.tensors.size() == contents.tensors.size(), "tensor count changed");
  for (size_t i = 0; i < contents.tensors.size(); ++i) {
    require(again.tensors[i].first == contents.tensors[i].first, "tensor names changed");
    require(same_bytes(again.tensors[i].second, contents.tensors[i].second),
            "tensor '" + contents.tensors[i].first + "' changed");
  }
  static Model model = tiny_model();
  load_model_state(*model.module, contents, "fuzz.safetensors");
}

void fuzz_pt(std::string_view input) {
  // A torch.save zip archive read with libtorch's own unpickler (io/pt_file): every tensor is
  // read, so a record whose size disagrees with the pickle is found too.
  const std::string path = scratch_path("fuzz.pt");
  write_scratch_file(path, input);
  const NamedTensors tensors = load_pt_state_dict(path);
  for (const auto& entry : tensors) require(entry.second.defined(), "tensor '" + entry.first + "' undefined");
}

}  // namespace guidiff::fuzz
