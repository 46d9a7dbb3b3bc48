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
#include "guidiff/io/npy.hpp"

namespace guidiff {
namespace {

// ZIP record signatures (APPNOTE 4.3).
constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;

constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kEndSize = 22;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;

constexpr uint16_t kMethodStored = 0;
constexpr uint16_t kMethodDeflate = 8;
constexpr uint16_t kFlagEncrypted = 1 << 0;
constexpr uint16_t kFlagUtf8Name = 1 << 11;

// 0xFFFFFFFF in a 32-bit field means "see the ZIP64 extra field", so a non-ZIP64 archive
// keeps every size and offset below it.
constexpr uint64_t kMax32 = 0xFFFFFFFFu;

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

uint64_t get_le(std::string_view bytes, size_t at, int count) {
  uint64_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[at + i]);
  return value;
}
uint32_t get16(std::string_view bytes, size_t at) { return static_cast<uint32_t>(get_le(bytes, at, 2)); }
uint32_t get32(std::string_view bytes, size_t at) { return static_cast<uint32_t>(get_le(bytes, at, 4)); }
uint64_t get64(std::string_view bytes, size_t at) { return get_le(bytes, at, 8); }

// zlib's crc32 takes a 32-bit length; feed larger buffers in pieces.
uint32_t crc32_of(std::string_view bytes) {
  uLong crc = crc32(0L, Z_NULL, 0);
  size_t done = 0;
  while (done < bytes.size()) {
    const size_t piece = std::min<size_t>(bytes.size() - done, size_t{1} << 30);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(bytes.data() + done), static_cast<uInt>(piece));
    done += piece;
  }
  return static_cast<uint32_t>(crc);
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

// One central-directory entry, with ZIP64 values already substituted.
struct Entry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;
  uint64_t local_offset = 0;
};

// "member 'NAME'" as error messages quote it: the name comes from the file.
std::string member_text(const Entry& entry) { return "member '" + printable_excerpt(entry.name, 100) + "'"; }

class NpzReader {
 public:
  NpzReader(const std::string& path, std::string_view bytes) : path_(path), bytes_(bytes) {}

  NamedArrays read() {
    NamedArrays arrays;
    for (const Entry& entry : central_directory()) {
      const std::string source = "'" + path_ + "' " + member_text(entry);
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
  [[noreturn]] void corrupt(const std::string& why) const {
    throw FileError("'" + path_ + "' is not a valid .npz file: " + why);
  }
  [[noreturn]] void truncated(const std::string& where) const {
    throw FileError("'" + path_ + "' is truncated (" + where + ")");
  }
  bool fits(uint64_t at, uint64_t count) const { return at <= bytes_.size() && count <= bytes_.size() - at; }

  // The end-of-central-directory record: the last one within the 64 KiB comment window.
  size_t find_end_record() const {
    if (bytes_.size() >= kEndSize) {
      const size_t lowest = bytes_.size() - kEndSize > 0xFFFF ? bytes_.size() - kEndSize - 0xFFFF : 0;
      for (size_t at = bytes_.size() - kEndSize;; --at) {
        if (get32(bytes_, at) == kEndSig && fits(at + kEndSize, get16(bytes_, at + 20))) return at;
        if (at == lowest) break;
      }
    }
    // Without it, a file that starts like a zip archive has lost its end.
    if (bytes_.size() >= 4 && get32(bytes_, 0) == kLocalHeaderSig) truncated("no end-of-central-directory record");
    throw FileError("'" + path_ + "' is not an .npz file (not a zip archive)");
  }

  std::vector<Entry> central_directory() const {
    const size_t end = find_end_record();
    uint64_t disk = get16(bytes_, end + 4);
    uint64_t central_disk = get16(bytes_, end + 6);
    uint64_t entries_here = get16(bytes_, end + 8);
    uint64_t entries = get16(bytes_, end + 10);
    uint64_t central_size = get32(bytes_, end + 12);
    uint64_t central_offset = get32(bytes_, end + 16);
    size_t directory_end = end;  // the central directory lies before the end records

    // A ZIP64 locator right before the record points at the ZIP64 end record, whose
    // 64-bit values take precedence (Python's zipfile, and so numpy.savez for batches over
    // 4 GiB, writes one; it may leave the 32-bit fields below their 0xFFFF... markers).
    if (end >= kZip64LocatorSize && get32(bytes_, end - kZip64LocatorSize) == kZip64LocatorSig) {
      const size_t locator = end - kZip64LocatorSize;
      const uint64_t record = get64(bytes_, locator + 8);
      if (record > locator || locator - record < kZip64EndSize || get32(bytes_, record) != kZip64EndSig) {
        corrupt("bad ZIP64 end-of-central-directory record");
      }
      disk = get32(bytes_, record + 16);
      central_disk = get32(bytes_, record + 20);
      entries_here = get64(bytes_, record + 24);
      entries = get64(bytes_, record + 32);
      central_size = get64(bytes_, record + 40);
      central_offset = get64(bytes_, record + 48);
      directory_end = record;
    }
    if (disk != 0 || central_disk != 0 || entries_here != entries) {
      corrupt("archives split over several disks are not supported");
    }
    if (central_offset > directory_end || central_size > directory_end - central_offset) {
      corrupt("the central directory lies outside the file");
    }
    if (entries > central_size / kCentralHeaderSize) corrupt("the central directory is too short for its entries");

    std::vector<Entry> result;
    result.reserve(entries);
    size_t at = central_offset;
    const size_t central_end = central_offset + central_size;
    for (uint64_t i = 0; i < entries; ++i) {
      if (central_end - at < kCentralHeaderSize || get32(bytes_, at) != kCentralHeaderSig) {
        corrupt("bad central directory entry " + std::to_string(i));
      }
      Entry entry;
      entry.flags = static_cast<uint16_t>(get16(bytes_, at + 8));
      entry.method = static_cast<uint16_t>(get16(bytes_, at + 10));
      entry.crc = get32(bytes_, at + 16);
      entry.compressed_size = get32(bytes_, at + 20);
      entry.size = get32(bytes_, at + 24);
      const size_t name_length = get16(bytes_, at + 28);
      const size_t extra_length = get16(bytes_, at + 30);
      const size_t comment_length = get16(bytes_, at + 32);
      entry.local_offset = get32(bytes_, at + 42);
      const size_t record_length = kCentralHeaderSize + name_length + extra_length + comment_length;
      if (central_end - at < record_length) corrupt("bad central directory entry " + std::to_string(i));
      entry.name = std::string(bytes_.substr(at + kCentralHeaderSize, name_length));
      apply_zip64_extra(entry, bytes_.substr(at + kCentralHeaderSize + name_length, extra_length));
      result.push_back(std::move(entry));
      at += record_length;
    }
    return result;
  }

  // Fields stored as 0xFFFFFFFF take their 64-bit values, in APPNOTE order, from the ZIP64
  // extra block (id 1).
  void apply_zip64_extra(Entry& entry, std::string_view extra) const {
    const bool needs = entry.size == kMax32 || entry.compressed_size == kMax32 || entry.local_offset == kMax32;
    size_t at = 0;
    while (needs && extra.size() - at >= 4) {
      const uint32_t id = get16(extra, at);
      const size_t length = get16(extra, at + 2);
      if (extra.size() - at - 4 < length) break;
      if (id == kZip64ExtraId) {
        std::string_view block = extra.substr(at + 4, length);
        size_t next = 0;
        for (uint64_t* field : {&entry.size, &entry.compressed_size, &entry.local_offset}) {
          if (*field != kMax32) continue;
          if (block.size() - next < 8) break;
          *field = get64(block, next);
          next += 8;
        }
        break;
      }
      at += 4 + length;
    }
    if (entry.size == kMax32 || entry.compressed_size == kMax32 || entry.local_offset == kMax32) {
      corrupt(member_text(entry) + " lacks its ZIP64 sizes");
    }
  }

  // The member's uncompressed bytes: a view into the file for stored members, or
  // `inflated` (filled here) for deflated ones.
  std::string_view member_data(const Entry& entry, const std::string& source, std::string& inflated) const {
    if (entry.flags & kFlagEncrypted) throw FileError(source + " is encrypted, which is not supported");
    if (entry.method != kMethodStored && entry.method != kMethodDeflate) {
      throw FileError(source + " uses unsupported compression method " + std::to_string(entry.method) +
                      " (only stored (0) and deflate (8) are supported)");
    }
    // The local header's own sizes may be zero (data descriptor, flag bit 3) or ZIP64
    // markers, and its extra field may differ from the central one: only its name and
    // extra lengths are used, to find the data.
    if (!fits(entry.local_offset, kLocalHeaderSize)) truncated(member_text(entry) + " lies past the end");
    if (get32(bytes_, entry.local_offset) != kLocalHeaderSig) {
      corrupt(member_text(entry) + " has no local header where the central directory says");
    }
    const uint64_t data_offset = entry.local_offset + kLocalHeaderSize + get16(bytes_, entry.local_offset + 26) +
                                 get16(bytes_, entry.local_offset + 28);
    if (!fits(data_offset, entry.compressed_size)) truncated(member_text(entry) + " runs past the end");
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
    // Deflate cannot expand more than about 1032:1; a larger claim is corruption, and
    // refusing it avoids a huge allocation.
    if (size / 1032 > data.size() + 1) throw FileError(source + " declares an impossible size: the file is corrupt");
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
