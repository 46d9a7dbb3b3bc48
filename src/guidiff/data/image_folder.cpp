#include "guidiff/data/image_folder.hpp"

// The one translation unit of the library that compiles stb_image's decoder (PNG and JPEG
// only). It is static, so a test that compiles its own copy does not clash with it.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/data/transforms.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff {
namespace {

namespace fs = std::filesystem;

bool is_hidden(const fs::path& path) { return path.filename().string().rfind('.', 0) == 0; }

bool has_image_extension(const fs::path& path) {
  std::string extension = path.extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return extension == ".png" || extension == ".jpg" || extension == ".jpeg";
}

std::vector<fs::path> sorted_entries(const fs::path& directory, bool want_directories) {
  std::vector<fs::path> entries;
  for (const auto& entry : fs::directory_iterator(directory)) {
    if (is_hidden(entry.path())) continue;
    if (want_directories ? entry.is_directory()
                         : (entry.is_regular_file() && has_image_extension(entry.path()))) {
      entries.push_back(entry.path());
    }
  }
  std::sort(entries.begin(), entries.end());
  return entries;
}

std::string size_text(int64_t width, int64_t height) {
  return std::to_string(width) + "x" + std::to_string(height);
}

// Debian 12's stb_image (v2.27) trusts a JPEG Huffman table's 16 code counts: when they add up
// to more than 256 it writes past its 257-entry size and 256-entry value arrays
// (stbi__build_huffman, found by fuzzing under UBSan). stb takes any 0xFF 0xC4 it meets as a DHT
// marker, even after garbage, so every such pair is read the way stb would read it, and the file
// is refused when a table stb would accept (class <= 1, slot <= 3) declares more than 256 codes.
// The pair cannot occur in entropy-coded data (0xFF is followed by 0x00 or a restart there).
bool jpeg_huffman_tables_fit(const std::string& bytes) {
  const auto byte_at = [&](size_t at) -> unsigned { return at < bytes.size() ? static_cast<unsigned char>(bytes[at]) : 0; };
  for (size_t at = 0; at + 1 < bytes.size(); ++at) {
    if (byte_at(at) != 0xFF || byte_at(at + 1) != 0xC4) continue;
    int64_t length = static_cast<int64_t>(byte_at(at + 2) << 8 | byte_at(at + 3)) - 2;
    size_t table = at + 4;
    while (length > 0 && table < bytes.size()) {
      const unsigned class_and_slot = byte_at(table);
      if ((class_and_slot >> 4) > 1 || (class_and_slot & 15) > 3) break;  // stb refuses this table itself
      unsigned codes = 0;
      for (size_t i = 1; i <= 16; ++i) codes += byte_at(table + i);
      if (codes > 256) return false;
      table += 17 + codes;
      length -= 17 + static_cast<int64_t>(codes);
    }
  }
  return true;
}

// stb_image reserves a PNG chunk's declared length before reading it, so a 200-byte file that
// declares a 1.3 GB IDAT chunk makes it ask for 1.3 GB (found by fuzzing with a memory limit).
// The chunks are walked the way stb walks them (length, type, data, CRC, up to IEND), and a chunk
// that runs past the end of the file refuses the file first.
bool png_chunks_fit(const std::string& bytes) {
  const auto big_endian_32 = [&](size_t at) {
    uint32_t value = 0;
    for (size_t i = 0; i < 4; ++i) value = value << 8 | static_cast<unsigned char>(bytes[at + i]);
    return value;
  };
  for (size_t at = 8; at + 8 <= bytes.size();) {
    const uint64_t length = big_endian_32(at);
    if (length + 12 > bytes.size() - at) return false;
    if (bytes.compare(at + 4, 4, "IEND") == 0) break;
    at += 12 + length;
  }
  return true;
}

// uint8 pixels [C, H, W] of one file, or an undefined tensor with `reason` set when stb_image
// cannot decode it.
torch::Tensor decode_image(const fs::path& file, int64_t channels, std::string& reason) {
  std::string bytes;
  try {
    bytes = read_file_bytes(file.string());
  } catch (const FileError& error) {
    reason = error.what();
    return {};
  }
  if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    reason = "larger than 2 GiB";
    return {};
  }
  // stb decodes only PNG and JPEG here, and takes anything that is not a PNG for a JPEG: it
  // skips any number of 0xFF fill bytes before the start marker, so a JPEG need not begin with
  // 0xFF 0xD8 (a fuzz finding).
  static const std::string kPngSignature("\x89PNG\r\n\x1a\n", 8);
  const bool png = bytes.compare(0, kPngSignature.size(), kPngSignature) == 0;
  if (png && !png_chunks_fit(bytes)) {
    reason = "corrupt PNG: a chunk runs past the end of the file";
    return {};
  }
  if (!png && !jpeg_huffman_tables_fit(bytes)) {
    reason = "corrupt JPEG: a Huffman table declares more than 256 codes";
    return {};
  }
  int width = 0, height = 0, channels_in_file = 0;
  // A 300-byte JPEG can declare a 40000 x 33000 image, which stb allocates in full before
  // decoding (a fuzz finding): the declared size is capped first, at Pillow's
  // decompression-bomb limit.
  constexpr int64_t kMaxPixels = 89478485;
  if (stbi_info_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                            &height, &channels_in_file) != 0 &&
      static_cast<int64_t>(width) * height > kMaxPixels) {
    reason = "declares " + size_text(width, height) + " pixels, more than the " + std::to_string(kMaxPixels) +
             " guidiff decodes";
    return {};
  }
  std::unique_ptr<stbi_uc, void (*)(void*)> data(
      stbi_load_from_memory(reinterpret_cast<const stbi_uc*>(bytes.data()), static_cast<int>(bytes.size()), &width,
                            &height, &channels_in_file, static_cast<int>(channels)),
      stbi_image_free);
  if (!data) {
    const char* failure = stbi_failure_reason();
    // stb's reasons are short constant texts, but one mutated PNG gave "I\n": kept to one line.
    reason = failure != nullptr ? printable_excerpt(failure, 80) : "unknown error";
    return {};
  }
  return torch::from_blob(data.get(), {height, width, channels}, torch::kUInt8)
      .permute({2, 0, 1})
      .clone();
}

}  // namespace

torch::Tensor center_crop_and_resize(const torch::Tensor& pixels, int64_t size) {
  if (!pixels.defined() || pixels.dim() != 3 || !pixels.is_floating_point()) {
    throw InputError("center_crop_and_resize: pixels must be float [C, H, W]");
  }
  if (size < 1)
    throw InputError("center_crop_and_resize: size must be >= 1, got " + std::to_string(size));
  const int64_t height = pixels.size(1), width = pixels.size(2), side = std::min(height, width);
  const torch::Tensor square =
      pixels.narrow(1, (height - side) / 2, side).narrow(2, (width - side) / 2, side).unsqueeze(0);
  if (side == size) return square.squeeze(0).contiguous();
  namespace F = torch::nn::functional;
  auto options = F::InterpolateFuncOptions().size(std::vector<int64_t>{size, size});
  if (size < side) {
    options.mode(torch::kArea);
  } else {
    options.mode(torch::kBilinear).align_corners(false);
  }
  return F::interpolate(square, options).squeeze(0);
}

namespace {

// Decodes files one by one into a common size (resizing them, or checking they agree),
// skipping unreadable ones when asked; shared by the labelled and the flat folder readers.
class ImageCollector {
 public:
  ImageCollector(const ImageFolderOptions& options, std::string root) : options_(options), root_(std::move(root)) {}

  // Returns false when the file was skipped.
  bool add(const fs::path& file) {
    std::string reason;
    torch::Tensor pixels = decode_image(file, options_.channels, reason);
    if (!pixels.defined()) {
      if (!options_.skip_unreadable) {
        throw FileError("cannot read image '" + file.string() + "': " + reason +
                        " (fix or remove the file)");
      }
      if (skipped_++ == 0) first_skipped_ = "'" + file.string() + "': " + reason;
      return false;
    }
    if (options_.image_size > 0) {
      pixels = center_crop_and_resize(pixels.to(torch::kFloat32), options_.image_size);
    } else if (images_.empty()) {
      first_file_ = file;
    } else if (pixels.sizes() != images_.front().sizes()) {
      throw FileError("images differ in size: '" + first_file_.string() + "' is " +
                      size_text(images_.front().size(2), images_.front().size(1)) + " but '" + file.string() +
                      "' is " + size_text(pixels.size(2), pixels.size(1)) +
                      " (width x height; give an image size to crop and resize them)");
    }
    images_.push_back(pixels);
    return true;
  }

  // The images as float32 [N, C, H, W] in [-1, 1], after one warning line for skipped files.
  torch::Tensor finish() {
    if (skipped_ > 0) {
      std::cerr << "guidiff: warning: skipped " << skipped_ << " unreadable image" << (skipped_ == 1 ? "" : "s")
                << " under '" << root_ << "' (first: " << first_skipped_ << ")\n";
    }
    return pixels_to_unit_range(torch::stack(images_));
  }

 private:
  const ImageFolderOptions& options_;
  std::string root_;
  std::vector<torch::Tensor> images_;
  fs::path first_file_;  // the image whose size the others must match (no resizing)
  int64_t skipped_ = 0;
  std::string first_skipped_;  // "'path': reason" of the first skipped file
};

void check_options(const ImageFolderOptions& options) {
  if (options.channels != 1 && options.channels != 3) {
    throw InputError("image folder: channels must be 1 or 3, got " + std::to_string(options.channels));
  }
  if (options.image_size < 0) {
    throw InputError("image folder: image size must be >= 0, got " + std::to_string(options.image_size));
  }
}

}  // namespace

Dataset load_image_folder(const std::string& root, const ImageFolderOptions& options) {
  check_options(options);
  if (!fs::is_directory(root))
    throw FileError("image folder '" + root + "' does not exist or is not a directory");
  const std::vector<fs::path> class_folders = sorted_entries(root, /*want_directories=*/true);
  if (class_folders.empty())
    throw FileError("image folder '" + root + "' has no class sub-folders");

  Dataset dataset;
  fs::path root_path = fs::path(root).lexically_normal();
  if (root_path.filename().empty())
    root_path = root_path.parent_path();  // "data/cats/" -> "data/cats"
  dataset.name = root_path.filename().string();
  dataset.num_classes = static_cast<int64_t>(class_folders.size());

  ImageCollector collector(options, root);
  std::vector<int64_t> labels;
  for (int64_t label = 0; label < dataset.num_classes; ++label) {
    const fs::path& folder = class_folders[static_cast<size_t>(label)];
    dataset.class_names.push_back(folder.filename().string());
    const std::vector<fs::path> files = sorted_entries(folder, /*want_directories=*/false);
    if (files.empty())
      throw FileError("class folder '" + folder.string() + "' holds no .png/.jpg/.jpeg images");
    int64_t read_in_class = 0;
    for (const auto& file : files) {
      if (!collector.add(file)) continue;
      labels.push_back(label);
      ++read_in_class;
    }
    if (read_in_class == 0) {
      throw FileError("class folder '" + folder.string() + "' has no readable images (" +
                      std::to_string(files.size()) + " unreadable)");
    }
  }
  dataset.images = collector.finish();
  dataset.labels = torch::tensor(labels, torch::kInt64);
  return dataset;
}

torch::Tensor load_image_files(const std::string& dir, const ImageFolderOptions& options) {
  check_options(options);
  if (!fs::is_directory(dir)) throw FileError("image folder '" + dir + "' does not exist or is not a directory");
  const std::vector<fs::path> files = sorted_entries(dir, /*want_directories=*/false);
  if (files.empty()) throw FileError("image folder '" + dir + "' holds no .png/.jpg/.jpeg images");
  ImageCollector collector(options, dir);
  int64_t read = 0;
  for (const auto& file : files) read += collector.add(file) ? 1 : 0;
  if (read == 0) throw FileError("image folder '" + dir + "' has no readable images");
  return collector.finish();
}

}  // namespace guidiff
