// NumPy .npz archives: a ZIP file whose members are `<name>.npy` (numpy.savez,
// numpy.savez_compressed), and guided-diffusion's sample-batch layout inside them
// (arr_0 = uint8 NHWC images, arr_1 = int64 class labels, written by its image_sample.py
// and read by its evaluator). ZIP reference: PKWARE APPNOTE.TXT 6.3.
#pragma once
#include <torch/torch.h>

#include "guidiff/io/image.hpp"  // the pixel conversions of the sample layout

#include <string>
#include <utility>
#include <vector>

namespace guidiff {

// Arrays by name, in archive order. Names carry no ".npy" suffix.
using NamedArrays = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes the arrays as an uncompressed (stored) .npz archive, atomically: member
// `<name>.npy` per array, as numpy.savez does, so numpy.load reads it. Dtypes are those of
// write_npy. Throws InputError naming the file for an empty or duplicate name, an undefined
// tensor, an unsupported dtype, or an archive that would exceed 4 GiB (ZIP64 is not written),
// and FileError if the file cannot be written.
void write_npz(const std::string& path, const NamedArrays& arrays);

// Reads every member of an .npz archive, stored or deflated, ZIP64 or not, checking each
// member's CRC-32. Throws FileError naming the file (and the member, where one is at fault)
// when it is missing, not a zip archive, truncated, encrypted, split over several disks,
// uses a compression method other than stored/deflate, fails its CRC check, or holds a
// member that is not a readable .npy file (see read_npy for the accepted dtypes).
NamedArrays read_npz(const std::string& path);

// The array called `name` (the first one, should the archive repeat it). Throws FileError
// naming `file` and the missing key, and listing the keys present, if there is none.
torch::Tensor npz_array(const NamedArrays& arrays, const std::string& name, const std::string& file);

// A batch of samples in guided-diffusion's .npz layout.
struct SampleBatchNpz {
  torch::Tensor images;  // uint8 [N, H, W, C], C in {1, 3}
  torch::Tensor labels;  // int64 [N], or undefined when the file has no arr_1
};

// Writes images as arr_0 and, when defined, labels as arr_1 (cast to int64), like
// guided-diffusion's `np.savez(out_path, arr, label_arr)`. Throws InputError naming the
// file unless images is uint8 [N, H, W, C] with C in {1, 3} and labels (if defined) is an
// integer tensor of shape [N]; FileError if the file cannot be written.
void write_sample_batch_npz(const std::string& path, const torch::Tensor& images_uint8_nhwc,
                            const torch::Tensor& labels);

// Reads a batch written by write_sample_batch_npz or guided-diffusion. Integer labels of
// another width are widened to int64. Throws FileError naming the file (read_npz's cases)
// and when arr_0 is missing or not uint8 [N, H, W, C] with C in {1, 3}, or when arr_1 is
// not an integer array of shape [N].
SampleBatchNpz read_sample_batch_npz(const std::string& path);



}  // namespace guidiff
