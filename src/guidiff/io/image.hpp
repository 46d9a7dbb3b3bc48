// Image grids: a batch of NCHW images in [-1, 1] tiled into one PNG.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace guidiff {

struct ImageGridOptions {
  int64_t nrow = 8;          // images per grid row (torchvision's make_grid convention)
  int64_t padding = 2;       // pixels between images and around the border
  uint8_t pad_value = 0;     // the padding's grey level (0 = black)
  int64_t scale = 1;         // each image pixel becomes a scale x scale block (nearest neighbour)
  // Optional labels in the built-in 5x7 font (io/bitmap_font.hpp), drawn in the padding's
  // opposite grey (white on black): one per grid row in a left margin (e.g. class names),
  // and one per grid column in a top margin (e.g. guidance strengths).
  std::vector<std::string> row_labels, column_labels;
  int64_t label_scale = 0;   // font pixel size; 0: max(1, image height * scale / 40)
};

// The grid as uint8 pixels [H', W', C], C = 1 or 3. Without labels H' = rows (H s + p) + p and
// W' = cols (W s + p) + p, cols = min(nrow, N), rows = ceil(N / cols), s = scale; row labels
// widen it by a left margin, column labels heighten it by a top margin. Pixel values are
// ((x + 1) * 127.5) rounded and clamped to [0, 255] (images_to_uint8_nhwc). Throws
// InputError unless images is float [N, C, H, W] with C in {1, 3}, N >= 1, and the labels
// are absent or one per row / column; NumericError if the images hold NaN or infinity.
torch::Tensor image_grid_pixels(const torch::Tensor& images, const ImageGridOptions& options = {});

// Writes image_grid_pixels(images) as an 8-bit grey or RGB PNG, atomically. Throws
// FileError naming the path if it cannot be written.
void write_png_grid(const std::string& path, const torch::Tensor& images,
                    const ImageGridOptions& options = {});

// Images sorted into grid rows by class, for write_png_grid with nrow = columns: each class
// present in `labels` (int64 [N]), in ascending order, fills rows of `columns` images in the
// order of its samples, the last one completed with black images; at most rows_per_class rows
// (0: as many as its samples need; later samples are left out). row_labels holds the class's
// name on its first row and "" on the others: class_names[c], or "class c" where class_names
// has no entry. Throws InputError for images that are not [N, C, H, W] with N >= 1, labels
// that are not [N], a negative label, or columns < 1.
struct ClassRows {
  torch::Tensor images;  // [rows * columns, C, H, W]
  std::vector<std::string> row_labels;
};
ClassRows arrange_by_class(const torch::Tensor& images, const torch::Tensor& labels,
                           const std::vector<std::string>& class_names, int64_t columns, int64_t rows_per_class = 0);

// One PNG per image: dir/000000.png, dir/000001.png, ... (index + first_index, six digits),
// each written atomically; `dir` must exist. Throws as write_png_grid.
void write_png_images(const std::string& dir, const torch::Tensor& images, int64_t first_index = 0);

// Float NCHW images in [-1, 1] to uint8 NHWC pixels: round((x + 1) * 127.5) clamped to
// [0, 255], rounding half to even. Rounding (rather than the truncation guided-diffusion's
// image_sample.py uses) makes uint8 -> uint8_nhwc_to_images -> here
// the identity. Throws InputError unless images is a 4-D floating tensor, NumericError if it
// holds NaN or infinity. The result is a contiguous CPU tensor.
torch::Tensor images_to_uint8_nhwc(const torch::Tensor& images_nchw);

// uint8 NHWC pixels to float32 NCHW images in [-1, 1]: v / 127.5 - 1, as guided-diffusion's
// image_datasets.py scales its inputs. Throws InputError unless pixels is uint8 and 4-D.
// The result is a contiguous CPU tensor.
torch::Tensor uint8_nhwc_to_images(const torch::Tensor& pixels_nhwc);

}  // namespace guidiff
