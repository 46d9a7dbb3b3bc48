#include "guidiff/data/cifar.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/transforms.hpp"
#include "guidiff/io/atomic_file.hpp"

namespace guidiff {
namespace {

constexpr int64_t kCifarPixelBytes = 3 * 32 * 32;

struct RecordLayout {
  std::string format;    // "CIFAR-10" or "CIFAR-100", for messages
  int64_t label_bytes;   // bytes before the pixels
  int64_t label_offset;  // which of them is the label we keep
  int64_t num_classes;
  int64_t record_bytes() const { return label_bytes + kCifarPixelBytes; }
};

// Decodes every record of one file into uint8 pixels [R, 3, 32, 32] and int64 labels [R].
std::pair<torch::Tensor, torch::Tensor> read_records(const std::string& path,
                                                     const RecordLayout& layout) {
  if (!std::filesystem::exists(path))
    throw FileError(layout.format + " file '" + path + "' does not exist");
  const std::string bytes = read_file_bytes(path);
  const auto size = static_cast<int64_t>(bytes.size());
  if (size == 0) throw FileError(layout.format + " file '" + path + "' is empty");
  if (size % layout.record_bytes() != 0) {
    throw FileError(layout.format + " file '" + path + "' has " + std::to_string(size) +
                    " bytes, not a whole number of " + std::to_string(layout.record_bytes()) +
                    "-byte records (" + std::to_string(size / layout.record_bytes()) +
                    " records and " + std::to_string(size % layout.record_bytes()) +
                    " bytes left over)");
  }
  const int64_t count = size / layout.record_bytes();
  torch::Tensor pixels = torch::empty({count, 3, 32, 32}, torch::kUInt8);
  torch::Tensor labels = torch::empty({count}, torch::kInt64);
  auto* pixel_out = pixels.data_ptr<uint8_t>();
  auto* label_out = labels.data_ptr<int64_t>();
  for (int64_t r = 0; r < count; ++r) {
    const auto* record = reinterpret_cast<const uint8_t*>(bytes.data()) + r * layout.record_bytes();
    label_out[r] = record[layout.label_offset];
    if (label_out[r] >= layout.num_classes) {
      throw FileError(layout.format + " file '" + path + "': record " + std::to_string(r) +
                      " has label " + std::to_string(label_out[r]) + ", outside [0, " +
                      std::to_string(layout.num_classes) + ")");
    }
    std::memcpy(pixel_out + r * kCifarPixelBytes, record + layout.label_bytes, kCifarPixelBytes);
  }
  return {pixels, labels};
}

Dataset dataset_from_files(const std::vector<std::string>& files, const RecordLayout& layout,
                           const std::string& name) {
  if (files.empty()) throw InputError(layout.format + ": no batch files given");
  std::vector<torch::Tensor> pixels, labels;
  for (const auto& file : files) {
    auto [file_pixels, file_labels] = read_records(file, layout);
    pixels.push_back(file_pixels);
    labels.push_back(file_labels);
  }
  Dataset dataset;
  dataset.name = name;
  dataset.images = pixels_to_unit_range(torch::cat(pixels));
  dataset.labels = torch::cat(labels);
  dataset.num_classes = layout.num_classes;
  return dataset;
}

void check_split(const std::string& format, const std::string& split) {
  if (split != "train" && split != "test") {
    throw InputError(format + " split must be 'train' or 'test', got '" + split + "'");
  }
}

// The non-empty lines of a class-name file, or nothing when it is absent or does not list
// exactly `expected` names (the names are a courtesy; the labels do not depend on them).
std::vector<std::string> class_names_from(const std::filesystem::path& file, int64_t expected) {
  std::vector<std::string> names;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (static_cast<int64_t>(names.size()) != expected) names.clear();
  return names;
}

const RecordLayout kCifar10{"CIFAR-10", 1, 0, 10};

RecordLayout cifar100_layout(Cifar100Labels labels) {
  return labels == Cifar100Labels::fine ? RecordLayout{"CIFAR-100", 2, 1, 100}
                                        : RecordLayout{"CIFAR-100", 2, 0, 20};
}

}  // namespace

Dataset load_cifar10_batches(const std::vector<std::string>& batch_files, const std::string& name) {
  return dataset_from_files(batch_files, kCifar10, name);
}

Dataset load_cifar100_file(const std::string& path, Cifar100Labels labels,
                           const std::string& name) {
  return dataset_from_files({path}, cifar100_layout(labels), name);
}

Dataset load_cifar10(const std::string& directory, const std::string& split) {
  check_split("CIFAR-10", split);
  const std::filesystem::path root(directory);
  std::vector<std::string> files;
  if (split == "train") {
    for (int i = 1; i <= 5; ++i)
      files.push_back((root / ("data_batch_" + std::to_string(i) + ".bin")).string());
  } else {
    files.push_back((root / "test_batch.bin").string());
  }
  Dataset dataset = load_cifar10_batches(files, "cifar10-" + split);
  dataset.class_names = class_names_from(root / "batches.meta.txt", dataset.num_classes);
  return dataset;
}

Dataset load_cifar100(const std::string& directory, const std::string& split,
                      Cifar100Labels labels) {
  check_split("CIFAR-100", split);
  const std::filesystem::path root(directory);
  Dataset dataset =
      load_cifar100_file((root / (split + ".bin")).string(), labels, "cifar100-" + split);
  dataset.class_names = class_names_from(
      root / (labels == Cifar100Labels::fine ? "fine_label_names.txt" : "coarse_label_names.txt"),
      dataset.num_classes);
  return dataset;
}

}  // namespace guidiff
