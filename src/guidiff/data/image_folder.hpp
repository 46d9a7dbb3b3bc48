// A folder of PNG/JPEG images with one sub-folder per class, the layout of torchvision's
// ImageFolder: root/<class name>/<image>.{png,jpg,jpeg}. Sub-folder names sorted bytewise give
// the class indices 0, 1, ...; within a class, files are read in sorted order.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "guidiff/data/dataset.hpp"

namespace guidiff {

struct ImageFolderOptions {
  int64_t channels = 3;    // 1: grey (stb_image's luma), 3: RGB (alpha dropped, grey replicated)
  int64_t image_size = 0;  // > 0: centre-crop each image to a square, then resize it to
                           // image_size x image_size; 0: keep the sizes, which must all agree
  bool skip_unreadable = false;  // skip files that do not decode, with one warning line on stderr
};

// Reads every image under `root` as float32 [N, channels, H, W] in [-1, 1] with labels from
// the sub-folders; class_names are the sub-folder names; name is the root's last component.
// Files with other extensions and hidden entries (".*") are ignored. Throws InputError for bad
// options, and FileError naming the path when root is missing or has no class sub-folders, a
// class folder holds no images (or none readable), an image does not decode (unless
// skip_unreadable), or two images differ in size while image_size is 0 (both files and their
// sizes are quoted).
Dataset load_image_folder(const std::string& root, const ImageFolderOptions& options = {});

// The images directly inside `dir` (no labels; sub-folders ignored), sorted by name, as
// float32 [N, channels, H, W] in [-1, 1]. Throws FileError as load_image_folder.
torch::Tensor load_image_files(const std::string& dir, const ImageFolderOptions& options = {});

// The central min(H, W) square of float pixels [C, H, W], resized to [C, size, size]: box
// (area) averaging when shrinking, bilinear interpolation (half-pixel centres) when enlarging.
torch::Tensor center_crop_and_resize(const torch::Tensor& pixels, int64_t size);

}  // namespace guidiff
