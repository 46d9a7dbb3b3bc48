// Datasets named on the command line: one string picks a reader and its source, so every
// subcommand that reads data (train, eval) accepts the same spellings.
#pragma once
#include <cstdint>
#include <string>

#include "guidiff/data/dataset.hpp"

namespace guidiff {

struct DatasetRequest {
  // "fashion-mnist" (Debian's dataset-fashion-mnist), "mnist:DIR", "cifar10:DIR",
  // "cifar100:DIR", "folder:DIR" (one sub-folder per class), "mixture" (the demo 2-D
  // Gaussian mixture) or "mixture:FILE.json".
  std::string spec = "fashion-mnist";
  std::string split = "train";  // "train" or "test" (IDX and CIFAR)
  int64_t image_size = 0;       // folder: centre-crop and resize to this side (0: keep)
  int64_t channels = 3;         // folder: 1 (grey) or 3 (RGB)
  int64_t mixture_size = 20000; // mixture: how many points to draw
  uint64_t seed = 0;            // mixture: which points
  // The command-line flags the spec and split came from, for messages (eval's reference set
  // is --reference and --reference-split).
  std::string flag = "--data";
  std::string split_flag = "--split";
};

// The reader a spec names: "folder" for "folder:DIR", "fashion-mnist" for "fashion-mnist".
std::string dataset_kind(const std::string& spec);
// Whether the spec's data set has train and test splits (IDX and CIFAR; not folders and
// mixtures, which read the same data whatever the split).
bool dataset_has_splits(const std::string& spec);

// Loads the dataset. Throws InputError for an unknown spec (listing the known ones) or a
// split other than train and test (whatever the data set: a typo is never ignored), and the
// readers' FileError naming the file at fault, prefixed with the flag and spec.
Dataset load_dataset(const DatasetRequest& request);

}  // namespace guidiff
