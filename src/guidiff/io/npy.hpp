// NumPy .npy files (format versions 1.0, 2.0 and 3.0; little-endian, C order).
// Supported dtypes: float32 '<f4', float64 '<f8', int64 '<i8', int32 '<i4', uint8 '|u1'.
// Format reference: numpy.lib.format (NEP 1).
#pragma once
#include <torch/torch.h>

#include <string>
#include <string_view>

namespace guidiff {

// Reads an array into a CPU tensor of the matching dtype and shape. Throws FileError naming
// the file when it is missing, truncated, not a .npy file (bad magic or header), or holds
// an unsupported dtype, big-endian data or Fortran-ordered data.
torch::Tensor read_npy(const std::string& path);

// Decodes the bytes of a whole .npy file (e.g. a member of an .npz archive) as read_npy
// does. `source` names the bytes in error messages exactly as given, e.g. "'a.npy'" or
// "'a.npz' member 'x.npy'"; every failure is a FileError starting with it.
torch::Tensor decode_npy(std::string_view bytes, const std::string& source);

// Writes a tensor (any device, any strides) as a C-order .npy file, version 1.0 unless the
// header needs 2.0, atomically. Throws InputError naming the file for an unsupported dtype
// and FileError if the file cannot be written.
void write_npy(const std::string& path, const torch::Tensor& tensor);

// The .npy bytes of a tensor, as write_npy writes them.
std::string encode_npy(const torch::Tensor& tensor, const std::string& name_for_errors = "tensor");

}  // namespace guidiff
