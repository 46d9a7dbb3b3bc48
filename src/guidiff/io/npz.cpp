#include "guidiff/io/npz.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>
#include <string_view>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/checksum.hpp"
#include "guidiff/io/deflate_limit.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/zip_directory.hpp"

namespace guidiff {
namespace {

using namespace zip_format;

// What we write. Version 2.0 is what Python's zipfile (and so numpy.savez) writes for
// non-ZIP64 members; "made by" Unix so unzip honours the rw-r--r-- mode in the external
// attributes. The timestamp is fixed (1980-01-01 00:00, the DOS epoch) so that identical
// arrays give byte-identical files, which keeps checksums of sample batches reproducible.
constexpr uint16_t kVersionNeeded = 20;
constexpr uint16_t kVersionMadeBy = (3 << 8) | 20;
constexpr uint32_t kExternalAttributes = 0100644u << 16;
constexpr uint16_t kDosTime = 0;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1;

void put16(std::string& out, uint32_t value) {
  out.push_back(static_cast<char>(value & 0xFF));
  out.push_back(static_cast<char>((value >> 8) & 0xFF));
}

void put32(std::string& out, uint32_t value) {
  put16(out, value & 0xFFFF);
  put16(out, value >> 16);
}

std::string hex32(uint32_t value) {
  char text[11];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

std::string describe(const torch::Tensor& tensor) {
  std::ostringstream out;
  out << c10::toString(tensor.scalar_type()) << " " << tensor.sizes();
  return out.str();
}

bool is_integer_labels(const torch::Tensor& labels) {
  return c10::isIntegralType(labels.scalar_type(), /*includeBool=*/false);
}

// ---- writing ----------------------------------------------------------------------------

[[noreturn]] void too_large(const std::string& path) {
  throw InputError("cannot write '" + path + "': the archive would exceed 4 GiB (ZIP64 .npz files are not written)");
}

// Appends to the temporary file of write_file_atomically_via, counting the offset, and
// syncs it before the rename as write_file_atomically does.
class FileSink {
 public:
  FileSink(const std::string& temp_path, const std::string& path) : path_(path) {
    fd_ = ::open(temp_path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd_ < 0) fail();
  }
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;
  ~FileSink() {
    if (fd_ >= 0) ::close(fd_);
  }

  void write(std::string_view bytes) {
    size_t written = 0;
    while (written < bytes.size()) {
      const ssize_t n = ::write(fd_, bytes.data() + written, bytes.size() - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        fail();
      }
      written += static_cast<size_t>(n);
    }
    offset_ += bytes.size();
  }
  uint64_t offset() const { return offset_; }
  void finish() {
    const bool synced = ::fsync(fd_) == 0;
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0 || !synced) fail();
  }

 private:
  [[noreturn]] void fail() const { throw FileError("cannot write '" + path_ + "': " + std::strerror(errno)); }

  std::string path_;
  int fd_ = -1;
  uint64_t offset_ = 0;
};

// Fails before any file work (and before encoding gigabytes) on names, undefined tensors and
// archives that cannot fit in 4 GiB. The size is a lower bound; the writer checks exactly.
void check_arrays(const std::string& path, const NamedArrays& arrays) {
  std::set<std::string> seen;
  uint64_t lower_bound = kEndSize;
  for (const auto& [name, tensor] : arrays) {
    if (name.empty()) throw InputError("cannot write '" + path + "': an array has an empty name");
    if (!seen.insert(name).second) {
      throw InputError("cannot write '" + path + "': the array name '" + name + "' is used twice");
    }
    if (name.size() + 4 > 0xFFFF) throw InputError("cannot write '" + path + "': an array name is too long");
    if (!tensor.defined()) throw InputError("cannot write '" + path + "': array '" + name + "' is undefined");
    // Every .npy header is at least 64 bytes (numpy pads the data to 64-byte alignment).
    lower_bound += kLocalHeaderSize + kCentralHeaderSize + 2 * (name.size() + 4) + 64 +
                   static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    if (lower_bound >= kMax32) too_large(path);
  }
  if (arrays.size() >= 0xFFFF) throw InputError("cannot write '" + path + "': too many arrays for one .npz file");
}

}  // namespace

void write_npz(const std::string& path, const NamedArrays& arrays) {
  check_arrays(path, arrays);
  write_file_atomically_via(path, [&](const std::string& temp_path) {
    FileSink sink(temp_path, path);
    std::string central;
    for (const auto& [name, tensor] : arrays) {
      const std::string member = name + ".npy";
      const std::string npy = encode_npy(tensor, path + ":" + member);
      const uint64_t offset = sink.offset();
      if (offset + kLocalHeaderSize + member.size() + npy.size() >= kMax32) too_large(path);
      const uint32_t crc = crc32_of(npy);
      const bool ascii = std::all_of(member.begin(), member.end(),
                                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
      const uint16_t flags = ascii ? 0 : kFlagUtf8Name;  // names are UTF-8 (as Python's zipfile marks them)
      const auto size = static_cast<uint32_t>(npy.size());

      std::string local;
      put32(local, kLocalHeaderSig);
      put16(local, kVersionNeeded);
      put16(local, flags);
      put16(local, kMethodStored);
      put16(local, kDosTime);
      put16(local, kDosDate);
      put32(local, crc);
      put32(local, size);  // compressed size
      put32(local, size);  // uncompressed size
      put16(local, static_cast<uint32_t>(member.size()));
      put16(local, 0);  // extra field length
      local += member;
      sink.write(local);
      sink.write(npy);

      put32(central, kCentralHeaderSig);
      put16(central, kVersionMadeBy);
      put16(central, kVersionNeeded);
      put16(central, flags);
      put16(central, kMethodStored);
      put16(central, kDosTime);
      put16(central, kDosDate);
      put32(central, crc);
      put32(central, size);
      put32(central, size);
      put16(central, static_cast<uint32_t>(member.size()));
      put16(central, 0);  // extra field length
      put16(central, 0);  // comment length
      put16(central, 0);  // disk number start
      put16(central, 0);  // internal attributes
      put32(central, kExternalAttributes);
      put32(central, static_cast<uint32_t>(offset));
      central += member;
    }
    const uint64_t central_offset = sink.offset();
    if (central_offset + central.size() + kEndSize >= kMax32) too_large(path);
    std::string end;
    put32(end, kEndSig);
    put16(end, 0);  // this disk
    put16(end, 0);  // disk holding the central directory
    put16(end, static_cast<uint32_t>(arrays.size()));  // entries on this disk
    put16(end, static_cast<uint32_t>(arrays.size()));  // entries in all
    put32(end, static_cast<uint32_t>(central.size()));
    put32(end, static_cast<uint32_t>(central_offset));
    put16(end, 0);  // comment length
    sink.write(central);
    sink.write(end);
    sink.finish();
  });
}

namespace {

// ---- reading ----------------------------------------------------------------------------

class NpzReader {
 public:
  NpzReader(const std::string& path, std::string_view bytes)
      : path_(path), bytes_(bytes), errors_{path, ".npz file", "an .npz file"} {}

  NamedArrays read() {
    NamedArrays arrays;
    for (const ZipEntry& entry : read_zip_directory(bytes_, 0, errors_)) {
      const std::string source = "'" + path_ + "' " + zip_member_text(entry);
      if (entry.name.size() <= 4 || entry.name.compare(entry.name.size() - 4, 4, ".npy") != 0) {
        throw FileError(source + " is not a .npy array (an .npz file holds only <name>.npy members)");
      }
      std::string inflated;
      const std::string_view npy = member_data(entry, source, inflated);
      const uint32_t crc = crc32_of(npy);
      if (crc != entry.crc) {
        throw FileError(source + " fails its CRC-32 check (stored " + hex32(entry.crc) + ", data gives " +
                        hex32(crc) + "): the file is corrupt");
      }
      arrays.emplace_back(entry.name.substr(0, entry.name.size() - 4), decode_npy(npy, source));
    }
    return arrays;
  }

 private:
  bool fits(uint64_t at, uint64_t count) const { return at <= bytes_.size() && count <= bytes_.size() - at; }

  // The member's uncompressed bytes: a view into the file for stored members, or
  // `inflated` (filled here) for deflated ones.
  std::string_view member_data(const ZipEntry& entry, const std::string& source, std::string& inflated) const {
    if (entry.flags & kFlagEncrypted) throw FileError(source + " is encrypted, which is not supported");
    if (entry.method != kMethodStored && entry.method != kMethodDeflate) {
      throw FileError(source + " uses unsupported compression method " + std::to_string(entry.method) +
                      " (only stored (0) and deflate (8) are supported)");
    }
    // The local header's own sizes may be zero (data descriptor, flag bit 3) or ZIP64
    // markers, and its extra field may differ from the central one: only its name and
    // extra lengths are used, to find the data.
    if (!fits(entry.local_offset, kLocalHeaderSize)) errors_.truncated(zip_member_text(entry) + " lies past the end");
    if (get32(bytes_, entry.local_offset) != kLocalHeaderSig) {
      errors_.corrupt(zip_member_text(entry) + " has no local header where the central directory says");
    }
    const uint64_t data_offset = entry.local_offset + kLocalHeaderSize + get16(bytes_, entry.local_offset + 26) +
                                 get16(bytes_, entry.local_offset + 28);
    if (!fits(data_offset, entry.compressed_size)) errors_.truncated(zip_member_text(entry) + " runs past the end");
    const std::string_view data = bytes_.substr(data_offset, entry.compressed_size);
    if (entry.method == kMethodStored) {
      if (entry.compressed_size != entry.size) {
        throw FileError(source + " is stored but its two sizes differ: the file is corrupt");
      }
      return data;
    }
    inflate_into(data, entry.size, source, inflated);
    return inflated;
  }

  // Raw deflate (no zlib header: window bits negative), into exactly `size` bytes.
  static void inflate_into(std::string_view data, uint64_t size, const std::string& source, std::string& out) {
    // A larger claim than deflate can expand to is corruption; refusing it avoids a huge allocation.
    if (size / kMaxDeflateRatio > data.size() + 1) throw FileError(source + " declares an impossible size: the file is corrupt");
    const auto fail = [&](const std::string& why) {
      throw FileError(source + " has bad deflate data (" + why + "): the file is corrupt");
    };
    out.assign(size, '\0');
    z_stream stream{};
    if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) throw FileError(source + ": cannot initialise zlib");
    struct End {
      z_stream& stream;
      ~End() { inflateEnd(&stream); }
    } end{stream};

    constexpr size_t kPiece = size_t{1} << 30;  // avail_in/avail_out are 32-bit
    size_t given_in = 0, given_out = 0;
    unsigned char spare = 0;  // catches output beyond the declared size
    bool spare_given = false;
    while (true) {
      if (stream.avail_in == 0 && given_in < data.size()) {
        const size_t piece = std::min(data.size() - given_in, kPiece);
        stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data() + given_in));
        stream.avail_in = static_cast<uInt>(piece);
        given_in += piece;
      }
      if (stream.avail_out == 0) {
        if (given_out < size) {
          const size_t piece = std::min<size_t>(size - given_out, kPiece);
          stream.next_out = reinterpret_cast<Bytef*>(out.data() + given_out);
          stream.avail_out = static_cast<uInt>(piece);
          given_out += piece;
        } else if (!spare_given) {
          stream.next_out = &spare;
          stream.avail_out = 1;
          spare_given = true;
        } else {
          fail("more data than its declared size");
        }
      }
      const int status = inflate(&stream, Z_NO_FLUSH);
      if (status == Z_STREAM_END) break;
      if (status == Z_OK) continue;
      if (status == Z_BUF_ERROR && stream.avail_in == 0 && given_in == data.size()) fail("it ends early");
      fail(stream.msg != nullptr ? stream.msg : "zlib error " + std::to_string(status));
    }
    if (stream.total_out != size) {
      fail("it holds " + std::to_string(stream.total_out) + " bytes, the archive says " + std::to_string(size));
    }
  }

  const std::string& path_;
  std::string_view bytes_;
  ZipArchiveErrors errors_;
};

}  // namespace

NamedArrays read_npz(const std::string& path) {
  const std::string bytes = read_file_bytes(path);
  return NpzReader(path, bytes).read();
}

torch::Tensor npz_array(const NamedArrays& arrays, const std::string& name, const std::string& file) {
  for (const auto& [key, tensor] : arrays) {
    if (key == name) return tensor;
  }
  std::string present;
  // The names come from the file: printable, and not all of a file with thousands.
  for (const auto& entry : arrays) present += (present.empty() ? "" : ", ") + entry.first;
  throw FileError("'" + file + "' has no array '" + name + "' (" +
                  (present.empty() ? std::string("it holds none") : "it holds: " + printable_excerpt(present, 160)) +
                  ")");
}

void write_sample_batch_npz(const std::string& path, const torch::Tensor& images_uint8_nhwc,
                            const torch::Tensor& labels) {
  const torch::Tensor& images = images_uint8_nhwc;
  if (!images.defined() || images.scalar_type() != torch::kUInt8 || images.dim() != 4 ||
      (images.size(3) != 1 && images.size(3) != 3)) {
    throw InputError("cannot write '" + path + "': images must be uint8 [N, H, W, C] with C in {1, 3}, got " +
                     (images.defined() ? describe(images) : std::string("an undefined tensor")));
  }
  NamedArrays arrays = {{"arr_0", images}};
  if (labels.defined()) {
    if (!is_integer_labels(labels) || labels.dim() != 1 || labels.size(0) != images.size(0)) {
      throw InputError("cannot write '" + path + "': labels must be integers of shape [" +
                       std::to_string(images.size(0)) + "], got " + describe(labels));
    }
    arrays.emplace_back("arr_1", labels.to(torch::kInt64));
  }
  write_npz(path, arrays);
}

SampleBatchNpz read_sample_batch_npz(const std::string& path) {
  const NamedArrays arrays = read_npz(path);
  SampleBatchNpz batch;
  batch.images = npz_array(arrays, "arr_0", path);
  const torch::Tensor& images = batch.images;
  if (images.scalar_type() != torch::kUInt8 || images.dim() != 4 || (images.size(3) != 1 && images.size(3) != 3)) {
    throw FileError("'" + path + "': arr_0 must be uint8 images [N, H, W, C] with C in {1, 3}, got " +
                    describe(images));
  }
  for (const auto& [name, tensor] : arrays) {
    if (name != "arr_1") continue;
    if (!is_integer_labels(tensor) || tensor.dim() != 1 || tensor.size(0) != images.size(0)) {
      throw FileError("'" + path + "': arr_1 must be integer labels of shape [" + std::to_string(images.size(0)) +
                      "] (one per image of arr_0), got " + describe(tensor));
    }
    batch.labels = tensor.to(torch::kInt64);
    break;
  }
  return batch;
}


}  // namespace guidiff
