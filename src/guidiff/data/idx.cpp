#include "guidiff/data/idx.hpp"

#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <sstream>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/transforms.hpp"
#include "guidiff/io/deflate_limit.hpp"

namespace guidiff {
namespace {

constexpr int kUnsignedByteType = 0x08;
// A sanity bound on one file's payload (16 GiB): a corrupt header cannot make us allocate more.
constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 34;

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

// zlib's own description of the stream's state, or empty when there is no error. zlib
// prefixes it with the path, which our messages already name.
std::string gzip_error(gzFile file, const std::string& path) {
  int code = Z_OK;
  const char* message = gzerror(file, &code);
  if (code == Z_OK || message == nullptr) return "";
  if (code == Z_ERRNO) return std::strerror(errno);
  std::string reason = message;
  if (reason.rfind(path + ": ", 0) == 0) reason.erase(0, path.size() + 2);
  return reason;
}

// Reads up to `size` bytes; returns how many were read. Throws FileError on a hard error.
uint64_t read_up_to(gzFile file, const std::string& path, unsigned char* destination,
                    uint64_t size) {
  uint64_t total = 0;
  while (total < size) {
    const auto chunk = static_cast<unsigned>(std::min<uint64_t>(size - total, 1u << 30));
    const int got = gzread(file, destination + total, chunk);
    if (got < 0) throw FileError("cannot read IDX file '" + path + "': " + gzip_error(file, path));
    if (got == 0) break;
    total += static_cast<uint64_t>(got);
  }
  return total;
}

// " (gzip: <reason>)" when the stream ended in an error, else "".
std::string gzip_suffix(gzFile file, const std::string& path) {
  const std::string reason = gzip_error(file, path);
  return reason.empty() ? "" : " (gzip: " + reason + ")";
}

std::string hex_byte(int value) {
  std::ostringstream text;
  text << "0x" << std::hex << (value < 16 ? "0" : "") << value;
  return text.str();
}

std::string first_existing(const std::vector<std::string>& candidates) {
  for (const auto& candidate : candidates) {
    if (std::filesystem::exists(candidate)) return candidate;
  }
  return "";
}

// One split of a directory in the MNIST layout; `missing_hint` ends the missing-file message.
Dataset load_mnist_layout(const std::string& directory, const std::string& split,
                          const std::string& dataset_name, const std::string& missing_hint,
                          std::vector<std::string> class_names) {
  if (split != "train" && split != "test") {
    throw InputError(dataset_name + " split must be 'train' or 'test', got '" + split + "'");
  }
  const std::string prefix =
      (std::filesystem::path(directory) / (split == "train" ? "train" : "t10k")).string();
  std::array<std::string, 2> paths;
  const std::array<std::string, 2> kinds = {"-images-idx3-ubyte", "-labels-idx1-ubyte"};
  for (size_t i = 0; i < kinds.size(); ++i) {
    const std::string gz = prefix + kinds[i] + ".gz", raw = prefix + kinds[i];
    paths[i] = first_existing({gz, raw});
    if (paths[i].empty()) {
      throw FileError(dataset_name + " " + split + " split not found: neither '" + gz + "' nor '" +
                      raw + "' exists" + missing_hint);
    }
  }
  Dataset dataset = load_idx_dataset(paths[0], paths[1], 10, dataset_name + "-" + split);
  dataset.class_names = std::move(class_names);
  return dataset;
}

}  // namespace

torch::Tensor read_idx_ubyte(const std::string& path, int64_t expected_ndims) {
  if (!std::filesystem::exists(path)) throw FileError("IDX file '" + path + "' does not exist");
  GzFile file(gzopen(path.c_str(), "rb"));
  if (!file) throw FileError("cannot open IDX file '" + path + "': " + std::strerror(errno));
  gzbuffer(file.get(), 1 << 17);

  std::array<unsigned char, 4> magic{};
  const uint64_t magic_read = read_up_to(file.get(), path, magic.data(), magic.size());
  if (magic_read < magic.size()) {
    throw FileError("IDX file '" + path + "' is truncated: expected a 4-byte header, found " +
                    std::to_string(magic_read) + " bytes" + gzip_suffix(file.get(), path));
  }
  if (magic[0] != 0 || magic[1] != 0) {
    throw FileError("'" + path + "' is not an IDX file: bad magic " + hex_byte(magic[0]) + " " +
                    hex_byte(magic[1]) + " (expected 0x00 0x00)");
  }
  if (magic[2] != kUnsignedByteType) {
    throw FileError("IDX file '" + path + "' holds data type " + hex_byte(magic[2]) +
                    "; only unsigned bytes (0x08) are supported");
  }
  if (magic[3] != expected_ndims) {
    throw FileError("IDX file '" + path + "' holds a " + std::to_string(magic[3]) +
                    "-dimensional array, expected " + std::to_string(expected_ndims) +
                    " (idx3 for images, idx1 for labels)");
  }

  std::vector<unsigned char> size_bytes(4 * static_cast<size_t>(expected_ndims));
  const uint64_t sizes_read = read_up_to(file.get(), path, size_bytes.data(), size_bytes.size());
  if (sizes_read < size_bytes.size()) {
    throw FileError("IDX file '" + path + "' is truncated: expected " +
                    std::to_string(size_bytes.size()) + " bytes of dimension sizes, found " +
                    std::to_string(sizes_read) + gzip_suffix(file.get(), path));
  }
  std::vector<int64_t> dims;
  uint64_t payload = 1;
  for (int64_t d = 0; d < expected_ndims; ++d) {
    const unsigned char* b = &size_bytes[4 * static_cast<size_t>(d)];
    const uint64_t size =
        (uint64_t{b[0]} << 24) | (uint64_t{b[1]} << 16) | (uint64_t{b[2]} << 8) | uint64_t{b[3]};
    dims.push_back(static_cast<int64_t>(size));
    payload =
        size == 0 ? 0 : (payload > kMaxPayloadBytes / size ? kMaxPayloadBytes + 1 : payload * size);
  }
  if (payload > kMaxPayloadBytes) {
    throw FileError("IDX file '" + path +
                    "' declares an implausibly large array (more than 16 GiB)");
  }

  // Checked before the allocation: a 40-byte file must not make the reader ask for gigabytes.
  std::error_code size_error;
  const uint64_t file_bytes = std::filesystem::file_size(path, size_error);
  if (!size_error) {
    const bool raw = gzdirect(file.get()) != 0;
    const uint64_t most = raw ? file_bytes : file_bytes * kMaxDeflateRatio;
    if (payload > most) {
      throw FileError("IDX file '" + path + "' is truncated: its header declares " + std::to_string(payload) +
                      " bytes of data, more than its " + std::to_string(file_bytes) + " bytes" +
                      (raw ? "" : " of gzip") + " can hold");
    }
  }
  torch::Tensor values = torch::empty(dims, torch::kUInt8);
  const uint64_t payload_read = read_up_to(file.get(), path, values.data_ptr<uint8_t>(), payload);
  if (payload_read < payload) {
    throw FileError("IDX file '" + path + "' is truncated: expected " + std::to_string(payload) +
                    " bytes of data after the header, found " + std::to_string(payload_read) +
                    gzip_suffix(file.get(), path));
  }
  std::array<unsigned char, 4096> rest{};
  uint64_t trailing = 0;
  for (uint64_t got; (got = read_up_to(file.get(), path, rest.data(), rest.size())) > 0;)
    trailing += got;
  // All the data may decode before a damaged gzip trailer (CRC, length) is noticed.
  const std::string gzip_reason = gzip_error(file.get(), path);
  if (!gzip_reason.empty())
    throw FileError("IDX file '" + path + "' is a damaged gzip stream: " + gzip_reason);
  if (trailing > 0) {
    throw FileError("IDX file '" + path + "' has " + std::to_string(trailing) +
                    " bytes after the " + std::to_string(payload) + " its header declares");
  }
  return values;
}

Dataset load_idx_dataset(const std::string& images_path, const std::string& labels_path,
                         int64_t num_classes, const std::string& name) {
  if (num_classes < 0)
    throw InputError("IDX dataset: num_classes must be >= 0, got " + std::to_string(num_classes));
  const torch::Tensor pixels = read_idx_ubyte(images_path, 3);
  const torch::Tensor label_bytes = read_idx_ubyte(labels_path, 1);
  if (pixels.numel() == 0) throw FileError("IDX file '" + images_path + "' holds no images");
  if (label_bytes.size(0) != pixels.size(0)) {
    throw FileError("IDX labels '" + labels_path + "' hold " + std::to_string(label_bytes.size(0)) +
                    " labels but images '" + images_path + "' hold " +
                    std::to_string(pixels.size(0)) + " images");
  }
  const torch::Tensor labels = label_bytes.to(torch::kInt64);
  const int64_t classes = num_classes > 0 ? num_classes : labels.max().item<int64_t>() + 1;
  const torch::Tensor outside = labels.ge(classes).nonzero();
  if (outside.size(0) > 0) {
    const int64_t index = outside[0][0].item<int64_t>();
    throw FileError("IDX labels '" + labels_path + "': label " +
                    std::to_string(labels[index].item<int64_t>()) + " of sample " +
                    std::to_string(index) + " is outside [0, " + std::to_string(classes) + ")");
  }
  Dataset dataset;
  dataset.name = name.empty() ? std::filesystem::path(images_path).filename().string() : name;
  dataset.images = pixels_to_unit_range(pixels.unsqueeze(1));
  dataset.labels = labels;
  dataset.num_classes = classes;
  return dataset;
}

Dataset load_fashion_mnist(const std::string& split, const std::string& directory) {
  // Class names from the Fashion-MNIST README (Xiao, Rasul & Vollgraf 2017).
  return load_mnist_layout(
      directory, split, "fashion-mnist",
      " (install the Debian package dataset-fashion-mnist, or give the directory that holds "
      "the Fashion-MNIST files)",
      {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
       "Ankle boot"});
}

Dataset load_mnist(const std::string& directory, const std::string& split) {
  return load_mnist_layout(directory, split, "mnist", "",
                           {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"});
}

}  // namespace guidiff
