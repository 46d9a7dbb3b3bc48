#include "guidiff/io/image.hpp"

// The one translation unit that compiles stb_image_write's implementation.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#include <stb/stb_image_write.h>
#pragma GCC diagnostic pop

#include <map>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/bitmap_font.hpp"

namespace guidiff {
namespace {

void append_to_string(void* context, void* data, int size) {
  static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<size_t>(size));
}

}  // namespace

torch::Tensor image_grid_pixels(const torch::Tensor& images, const ImageGridOptions& options) {
  if (!images.defined() || images.dim() != 4 || !images.is_floating_point()) {
    throw InputError("images must be a float tensor [N, C, H, W]");
  }
  const int64_t n = images.size(0), channels = images.size(1);
  if (channels != 1 && channels != 3) {
    throw InputError("images must have 1 or 3 channels to be written as PNG, got " + std::to_string(channels));
  }
  if (n < 1 || images.size(2) < 1 || images.size(3) < 1) throw InputError("cannot write an empty image grid");
  if (options.nrow < 1 || options.padding < 0 || options.scale < 1 || options.label_scale < 0) {
    throw InputError("image grid: nrow and scale must be >= 1, padding and label_scale >= 0");
  }
  if (!torch::isfinite(images).all().item<bool>()) throw NumericError("images contain NaN or infinity");

  const int64_t cols = std::min(options.nrow, n);
  const int64_t rows = (n + cols - 1) / cols;
  if (!options.row_labels.empty() && static_cast<int64_t>(options.row_labels.size()) != rows) {
    throw InputError("image grid: " + std::to_string(options.row_labels.size()) + " row labels for " +
                     std::to_string(rows) + " rows");
  }
  if (!options.column_labels.empty() && static_cast<int64_t>(options.column_labels.size()) != cols) {
    throw InputError("image grid: " + std::to_string(options.column_labels.size()) + " column labels for " +
                     std::to_string(cols) + " columns");
  }
  const int64_t pad = options.padding;
  torch::Tensor pixels = images_to_uint8_nhwc(images.detach());  // [N, H, W, C]
  if (options.scale > 1) pixels = pixels.repeat_interleave(options.scale, 1).repeat_interleave(options.scale, 2);
  const int64_t height = pixels.size(1), width = pixels.size(2);

  // Margins for the labels: the longest label plus a gap of two font pixels on each side.
  const int64_t text_scale = options.label_scale > 0 ? options.label_scale : std::max<int64_t>(1, height / 40);
  const int64_t gap = 2 * text_scale;
  const auto text_width = [&](const std::string& text) { return render_text(text, text_scale).size(1); };
  int64_t left = 0, top = 0;
  for (const auto& label : options.row_labels) left = std::max(left, text_width(label) + 2 * gap);
  if (!options.column_labels.empty()) top = kGlyphHeight * text_scale + 2 * gap;

  torch::Tensor grid = torch::full({top + rows * (height + pad) + pad, left + cols * (width + pad) + pad, channels},
                                   static_cast<int64_t>(options.pad_value), torch::kUInt8);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t y = top + pad + (i / cols) * (height + pad);
    const int64_t x = left + pad + (i % cols) * (width + pad);
    grid.narrow(0, y, height).narrow(1, x, width).copy_(pixels[i]);
  }
  // Text in the padding's opposite grey, so it shows on either a black or a white margin.
  const int64_t ink = options.pad_value < 128 ? 255 : 0;
  const auto draw = [&](const std::string& text, int64_t y, int64_t x) {
    // Cropped at the grid's edge: a column label wider than its column may run into the next.
    const int64_t fit_height = std::min<int64_t>(kGlyphHeight * text_scale, grid.size(0) - y);
    const int64_t fit_width = std::min<int64_t>(text_width(text), grid.size(1) - x);
    if (fit_height <= 0 || fit_width <= 0) return;
    const torch::Tensor mask = render_text(text, text_scale).narrow(0, 0, fit_height).narrow(1, 0, fit_width);
    grid.narrow(0, y, mask.size(0)).narrow(1, x, mask.size(1)).masked_fill_(mask.unsqueeze(2).expand({-1, -1, channels}), ink);
  };
  for (int64_t r = 0; r < static_cast<int64_t>(options.row_labels.size()); ++r) {
    const int64_t y = top + pad + r * (height + pad) + (height - kGlyphHeight * text_scale) / 2;
    draw(options.row_labels[static_cast<size_t>(r)], std::max<int64_t>(y, 0), gap);
  }
  for (int64_t c = 0; c < static_cast<int64_t>(options.column_labels.size()); ++c) {
    const std::string& label = options.column_labels[static_cast<size_t>(c)];
    const int64_t x = left + pad + c * (width + pad) + (width - text_width(label)) / 2;
    draw(label, gap, std::max<int64_t>(x, 0));
  }
  return grid;
}

void write_png_grid(const std::string& path, const torch::Tensor& images, const ImageGridOptions& options) {
  const torch::Tensor grid = image_grid_pixels(images, options).contiguous();
  const int height = static_cast<int>(grid.size(0)), width = static_cast<int>(grid.size(1)),
            channels = static_cast<int>(grid.size(2));
  std::string png;
  if (stbi_write_png_to_func(append_to_string, &png, width, height, channels, grid.data_ptr<uint8_t>(),
                             width * channels) == 0) {
    throw FileError("cannot encode PNG '" + path + "'");
  }
  write_file_atomically(path, png);
}

torch::Tensor images_to_uint8_nhwc(const torch::Tensor& images_nchw) {
  if (!images_nchw.defined() || !images_nchw.is_floating_point() || images_nchw.dim() != 4) {
    throw InputError("images must be a floating [N, C, H, W] tensor, got " +
                     (images_nchw.defined() ? c10::str(images_nchw.scalar_type(), " ", images_nchw.sizes()) : std::string("an undefined tensor")));
  }
  torch::Tensor x = images_nchw.detach().to(torch::kCPU);
  // float64 keeps its precision; half types are widened so the arithmetic is exact enough.
  if (x.scalar_type() != torch::kFloat64) x = x.to(torch::kFloat32);
  if (!torch::isfinite(x).all().item<bool>()) throw NumericError("images contain NaN or infinity");
  // torch::round rounds half to even, as numpy's np.round does.
  return ((x + 1) * 127.5).round().clamp(0, 255).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
}

torch::Tensor uint8_nhwc_to_images(const torch::Tensor& pixels_nhwc) {
  if (!pixels_nhwc.defined() || pixels_nhwc.scalar_type() != torch::kUInt8 || pixels_nhwc.dim() != 4) {
    throw InputError("pixels must be a uint8 [N, H, W, C] tensor, got " +
                     (pixels_nhwc.defined() ? c10::str(pixels_nhwc.scalar_type(), " ", pixels_nhwc.sizes()) : std::string("an undefined tensor")));
  }
  return (pixels_nhwc.detach().to(torch::kCPU).permute({0, 3, 1, 2}).to(torch::kFloat32) / 127.5 - 1).contiguous();
}

ClassRows arrange_by_class(const torch::Tensor& images, const torch::Tensor& labels,
                           const std::vector<std::string>& class_names, int64_t columns, int64_t rows_per_class) {
  if (!images.defined() || images.dim() != 4 || images.size(0) < 1) {
    throw InputError("class rows: images must be a tensor [N, C, H, W] with N >= 1");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0)) {
    throw InputError("class rows: need one label per image (" + std::to_string(images.size(0)) + ")");
  }
  if (columns < 1 || rows_per_class < 0) throw InputError("class rows: columns must be >= 1, rows_per_class >= 0");
  const torch::Tensor classes = labels.to(torch::kCPU, torch::kLong).contiguous();
  if (classes.min().item<int64_t>() < 0) throw InputError("class rows: a label is negative");
  const torch::Tensor blank = torch::full_like(images[0], -1.0);  // black, as the grid's padding
  ClassRows rows;
  std::vector<torch::Tensor> cells;
  std::map<int64_t, std::vector<int64_t>> members;  // class -> its samples, in order
  const auto label_of = classes.accessor<int64_t, 1>();
  for (int64_t i = 0; i < classes.size(0); ++i) members[label_of[i]].push_back(i);
  for (const auto& [c, indices] : members) {
    int64_t count = static_cast<int64_t>(indices.size());
    if (rows_per_class > 0) count = std::min(count, rows_per_class * columns);
    const int64_t class_rows = (count + columns - 1) / columns;
    for (int64_t i = 0; i < class_rows * columns; ++i) {
      cells.push_back(i < count ? images[indices[static_cast<size_t>(i)]] : blank);
    }
    const bool named = c < static_cast<int64_t>(class_names.size());
    rows.row_labels.push_back(named ? class_names[static_cast<size_t>(c)] : "class " + std::to_string(c));
    rows.row_labels.resize(rows.row_labels.size() + static_cast<size_t>(class_rows - 1));
  }
  rows.images = torch::stack(cells);  // N >= 1: at least one class, one cell
  return rows;
}

void write_png_images(const std::string& dir, const torch::Tensor& images, int64_t first_index) {
  ImageGridOptions single;
  single.nrow = 1;
  single.padding = 0;
  for (int64_t i = 0; i < images.size(0); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "/%06lld.png", static_cast<long long>(i + first_index));
    write_png_grid(dir + name, images.slice(0, i, i + 1), single);
  }
}

}  // namespace guidiff
