// CIFAR-10 and CIFAR-100 in their "binary version" (https://www.cs.toronto.edu/~kriz/cifar.html).
// A CIFAR-10 record is 1 label byte + 3072 pixel bytes; a CIFAR-100 record is a coarse label
// byte, a fine label byte, then the 3072 pixel bytes. The pixels are the 1024 red, then green,
// then blue values of a 32 x 32 image, rows first: already channel-major (CHW).
#pragma once
#include <string>
#include <vector>

#include "guidiff/data/dataset.hpp"

namespace guidiff {

enum class Cifar100Labels { fine, coarse };  // 100 fine classes or 20 superclasses

// The records of the given CIFAR-10 batch files, concatenated in that order, as float32
// [N, 3, 32, 32] in [-1, 1] with 10 classes. Throws FileError naming the file when it is
// missing, empty, not a whole number of records (its size and the record size are quoted), or
// holds a label >= 10.
Dataset load_cifar10_batches(const std::vector<std::string>& batch_files,
                             const std::string& name = "cifar10");

// One CIFAR-100 file (train.bin or test.bin) with fine (100) or coarse (20) labels. Errors as
// for CIFAR-10.
Dataset load_cifar100_file(const std::string& path, Cifar100Labels labels = Cifar100Labels::fine,
                           const std::string& name = "cifar100");

// A split ("train" or "test") of the extracted archives: cifar-10-batches-bin/ (data_batch_1..5.bin
// or test_batch.bin; class names from batches.meta.txt when present) and cifar-100-binary/
// (train.bin or test.bin; names from fine_label_names.txt / coarse_label_names.txt when present).
// Named "cifar10-<split>" / "cifar100-<split>". Throw InputError for another split.
Dataset load_cifar10(const std::string& directory, const std::string& split);
Dataset load_cifar100(const std::string& directory, const std::string& split,
                      Cifar100Labels labels = Cifar100Labels::fine);

}  // namespace guidiff
