// Fuzz targets of data/: IDX (raw or gzip), CIFAR binaries, image folders (PNG/JPEG), and
// the mixture JSON that `--data mixture:FILE` reads.
#include <cstdint>
#include <string_view>

#include "../fuzz_target.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/data/cifar.hpp"
#include "guidiff/data/idx.hpp"
#include "guidiff/data/image_folder.hpp"
#include "guidiff/data/mixture_dataset.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/models/gaussian_mixture.hpp"

namespace guidiff::fuzz {

// Input: a little-endian uint16 n, then n bytes of the images file, then the labels file.
// (A seed's two files stay apart under mutation; inputs too short for n are one file.)
void fuzz_idx(std::string_view input) {
  size_t images_bytes = input.size();
  if (input.size() >= 2) {
    images_bytes = static_cast<uint8_t>(input[0]) | (static_cast<size_t>(static_cast<uint8_t>(input[1])) << 8);
    input.remove_prefix(2);
    images_bytes = std::min(images_bytes, input.size());
  }
  const std::string images = scratch_path("images-idx3-ubyte.gz"), labels = scratch_path("labels-idx1-ubyte.gz");
  write_scratch_file(images, input.substr(0, images_bytes));
  write_scratch_file(labels, input.substr(images_bytes));
  try {
    read_idx_ubyte(labels, 1);
  } catch (const Error&) {
    // Rejected; the images file still gets its turn.
  }
  load_idx_dataset(images, labels, /*num_classes=*/input.size() % 2 == 0 ? 10 : 0);
}

void fuzz_cifar(std::string_view input) {
  const std::string path = scratch_path("data_batch.bin");
  write_scratch_file(path, input);
  for (const auto labels : {Cifar100Labels::fine, Cifar100Labels::coarse}) {
    try {
      load_cifar100_file(path, labels, "fuzz");
    } catch (const Error&) {
    }
  }
  load_cifar10_batches({path}, "fuzz");
}

// Input: one options byte, then the image file. Bits of the options byte: 0 grey (else RGB),
// 1 resize to 8x8, 2 skip unreadable files, 3 a flat folder (load_image_files) instead of
// class folders, 4 name the file .jpg (else .png; stb_image decodes by content either way).
// The class layout puts a valid 4x4 grey PNG (guidiff's own writer) in a second class, so
// image sizes are compared.
void fuzz_image_folder(std::string_view input) {
  static const std::string kValidPng = [] {
    const std::string path = scratch_path("valid.png");
    ImageGridOptions single;
    single.nrow = 1;
    single.padding = 0;
    write_png_grid(path, torch::linspace(-1, 1, 16).reshape({1, 1, 4, 4}), single);
    return read_file_bytes(path);
  }();
  const uint8_t flags = input.empty() ? 0 : static_cast<uint8_t>(input[0]);
  if (!input.empty()) input.remove_prefix(1);
  ImageFolderOptions options;
  options.channels = (flags & 1) ? 1 : 3;
  options.image_size = (flags & 2) ? 8 : 0;
  options.skip_unreadable = (flags & 4) != 0;
  const std::string root = scratch_path("images");
  reset_scratch_dir(root);
  const std::string name = (flags & 16) ? "image.jpg" : "image.png";
  if (flags & 8) {
    write_scratch_file(root + "/" + name, input);
    load_image_files(root, options);
  } else {
    reset_scratch_dir(root + "/a");
    reset_scratch_dir(root + "/b");
    write_scratch_file(root + "/a/" + name, input);
    write_scratch_file(root + "/b/valid.png", kValidPng);
    load_image_folder(root, options);
  }
}

void fuzz_mixture_config(std::string_view input) {
  const std::string path = scratch_path("mixture.json");
  write_scratch_file(path, input);
  const GaussianMixture mixture = GaussianMixture::from_json_file(path);
  mixture_dataset(mixture, 8, 0, "fuzz");
}

}  // namespace guidiff::fuzz
