// IDX files, the format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/):
// magic bytes 0x00 0x00 <type> <ndims>, then ndims big-endian uint32 sizes, then the values
// in row-major order. Files may be gzip-compressed (read through zlib) or raw.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "guidiff/data/dataset.hpp"

namespace guidiff {

// Where Debian's dataset-fashion-mnist package installs Fashion-MNIST.
constexpr const char* kFashionMnistDirectory = "/usr/share/datasets/fashion-mnist";

// An unsigned-byte IDX array (type 0x08) with `expected_ndims` dimensions, as uint8 of that
// shape. Throws FileError naming the file when it is missing, not IDX (bad magic), of
// another type or rank, truncated (the expected and actual byte counts are quoted), longer
// than its header says, or a corrupt gzip stream.
torch::Tensor read_idx_ubyte(const std::string& path, int64_t expected_ndims);

// Images from an idx3-ubyte file ([N, H, W] -> float32 [N, 1, H, W] in [-1, 1]) and labels
// from an idx1-ubyte file (int64 [N]). num_classes > 0 bounds the labels; 0 takes the largest
// label + 1. Throws FileError naming the file for the read errors above, a label count
// different from the image count, a label outside [0, num_classes) or an empty file.
Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path,
                         int64_t num_classes = 10, const std::string& name = "");

// A standard split ("train" or "test") of a directory laid out like the original MNIST
// distribution: {train,t10k}-{images-idx3,labels-idx1}-ubyte, each gzip-compressed (.gz) or
// raw. Named "fashion-mnist-<split>" / "mnist-<split>". Throw InputError for another split
// and FileError naming the missing file (for Fashion-MNIST, with the Debian package to
// install) and for the read errors of load_idx_dataset.
Dataset load_fashion_mnist(const std::string& split,
                           const std::string& directory = kFashionMnistDirectory);
Dataset load_mnist(const std::string& directory, const std::string& split);

}  // namespace guidiff
