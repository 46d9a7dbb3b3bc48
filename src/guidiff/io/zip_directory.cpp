#include "guidiff/io/zip_directory.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <optional>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/deflate_limit.hpp"

namespace guidiff {
namespace zip_format {

uint64_t get_le(std::string_view bytes, size_t at, int count) {
  uint64_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes[at + i]);
  return value;
}

}  // namespace zip_format

using namespace zip_format;

std::string zip_member_text(const ZipEntry& entry) { return "member '" + printable_excerpt(entry.name, 100) + "'"; }

void ZipArchiveErrors::corrupt(const std::string& why) const {
  throw FileError("'" + path + "' is not a valid " + kind + ": " + why);
}

void ZipArchiveErrors::truncated(const std::string& where) const {
  throw FileError("'" + path + "' is truncated (" + where + ")");
}

void ZipArchiveErrors::not_a_zip() const {
  throw FileError("'" + path + "' is not " + kind_with_article + " (not a zip archive)");
}

namespace {

// The bytes of a file from `offset_` to its end. Positions are the file's; a record that
// starts before the window sets `needed_from` instead of being read.
class DirectoryParser {
 public:
  DirectoryParser(std::string_view window, uint64_t window_offset, const ZipArchiveErrors& errors)
      : window_(window), offset_(window_offset), errors_(errors) {}

  // The entries, or nothing when the directory starts before the window (needed_from() says where).
  std::optional<std::vector<ZipEntry>> parse() {
    const uint64_t end = find_end_record();
    uint64_t disk = u16(end + 4);
    uint64_t central_disk = u16(end + 6);
    uint64_t entries_here = u16(end + 8);
    uint64_t entries = u16(end + 10);
    uint64_t central_size = u32(end + 12);
    uint64_t central_offset = u32(end + 16);
    uint64_t directory_end = end;  // the central directory lies before the end records

    // A ZIP64 locator right before the record points at the ZIP64 end record, whose
    // 64-bit values take precedence (Python's zipfile, and so numpy.savez for batches over
    // 4 GiB, writes one; it may leave the 32-bit fields below their 0xFFFF... markers).
    if (end >= kZip64LocatorSize && u32(end - kZip64LocatorSize) == kZip64LocatorSig) {
      const uint64_t locator = end - kZip64LocatorSize;
      const uint64_t record = u64(locator + 8);
      if (record > locator || locator - record < kZip64EndSize) errors_.corrupt("bad ZIP64 end-of-central-directory record");
      if (record < offset_) return need(record);
      if (u32(record) != kZip64EndSig) errors_.corrupt("bad ZIP64 end-of-central-directory record");
      disk = u32(record + 16);
      central_disk = u32(record + 20);
      entries_here = u64(record + 24);
      entries = u64(record + 32);
      central_size = u64(record + 40);
      central_offset = u64(record + 48);
      directory_end = record;
    }
    if (disk != 0 || central_disk != 0 || entries_here != entries) {
      errors_.corrupt("archives split over several disks are not supported");
    }
    if (central_offset > directory_end || central_size > directory_end - central_offset) {
      errors_.corrupt("the central directory lies outside the file");
    }
    if (entries > central_size / kCentralHeaderSize) errors_.corrupt("the central directory is too short for its entries");
    if (central_offset < offset_) return need(central_offset);

    std::vector<ZipEntry> result;
    result.reserve(entries);
    uint64_t at = central_offset;
    const uint64_t central_end = central_offset + central_size;
    for (uint64_t i = 0; i < entries; ++i) {
      if (central_end - at < kCentralHeaderSize || u32(at) != kCentralHeaderSig) {
        errors_.corrupt("bad central directory entry " + std::to_string(i));
      }
      ZipEntry entry;
      entry.flags = static_cast<uint16_t>(u16(at + 8));
      entry.method = static_cast<uint16_t>(u16(at + 10));
      entry.crc = u32(at + 16);
      entry.compressed_size = u32(at + 20);
      entry.size = u32(at + 24);
      const uint64_t name_length = u16(at + 28);
      const uint64_t extra_length = u16(at + 30);
      const uint64_t comment_length = u16(at + 32);
      entry.local_offset = u32(at + 42);
      const uint64_t record_length = kCentralHeaderSize + name_length + extra_length + comment_length;
      if (central_end - at < record_length) errors_.corrupt("bad central directory entry " + std::to_string(i));
      entry.name = std::string(bytes(at + kCentralHeaderSize, name_length));
      apply_zip64_extra(entry, bytes(at + kCentralHeaderSize + name_length, extra_length));
      result.push_back(std::move(entry));
      at += record_length;
    }
    return result;
  }

  uint64_t needed_from() const { return needed_from_; }

 private:
  uint64_t file_size() const { return offset_ + window_.size(); }
  // Whether [at, at + count) lies in the file (callers then read it from the window).
  bool fits(uint64_t at, uint64_t count) const { return at <= file_size() && count <= file_size() - at; }
  std::string_view bytes(uint64_t at, uint64_t count) const { return window_.substr(at - offset_, count); }
  uint32_t u16(uint64_t at) const { return get16(window_, at - offset_); }
  uint32_t u32(uint64_t at) const { return get32(window_, at - offset_); }
  uint64_t u64(uint64_t at) const { return get64(window_, at - offset_); }
  std::nullopt_t need(uint64_t from) {
    needed_from_ = from;
    return std::nullopt;
  }

  // The end-of-central-directory record: the last one within the 64 KiB comment window.
  uint64_t find_end_record() const {
    if (file_size() >= kEndSize) {
      const uint64_t highest = file_size() - kEndSize;
      const uint64_t lowest = std::max<uint64_t>(offset_, highest > kMaxCommentSize ? highest - kMaxCommentSize : 0);
      for (uint64_t at = highest; at >= lowest; --at) {
        if (u32(at) == kEndSig && fits(at + kEndSize, u16(at + 20))) return at;
        if (at == lowest) break;
      }
    }
    // Without it, a file that starts like a zip archive has lost its end. (A window that
    // starts later belongs to a file whose start zip_directory_of_file has checked.)
    const bool starts_like_zip = offset_ > 0 || (window_.size() >= 4 && get32(window_, 0) == kLocalHeaderSig);
    if (starts_like_zip) errors_.truncated("no end-of-central-directory record");
    errors_.not_a_zip();
  }

  // Fields stored as 0xFFFFFFFF take their 64-bit values, in APPNOTE order, from the ZIP64
  // extra block (id 1).
  void apply_zip64_extra(ZipEntry& entry, std::string_view extra) const {
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
      errors_.corrupt(zip_member_text(entry) + " lacks its ZIP64 sizes");
    }
  }

  std::string_view window_;
  uint64_t offset_;
  const ZipArchiveErrors& errors_;
  uint64_t needed_from_ = 0;
};

}  // namespace

std::vector<ZipEntry> read_zip_directory(std::string_view window, uint64_t window_offset,
                                         const ZipArchiveErrors& errors) {
  DirectoryParser parser(window, window_offset, errors);
  auto entries = parser.parse();
  if (!entries) {
    errors.corrupt("the central directory starts at byte " + std::to_string(parser.needed_from()) +
                   ", before the bytes read");
  }
  return std::move(*entries);
}

std::vector<ZipEntry> zip_directory_of_file(const ZipArchiveErrors& errors) {
  std::ifstream in(errors.path, std::ios::binary | std::ios::ate);
  if (!in) throw FileError("cannot open '" + errors.path + "'");
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  const auto read_from = [&](uint64_t offset) {
    std::string bytes(size - offset, '\0');
    in.seekg(static_cast<std::streamoff>(offset));
    if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
      throw FileError("cannot read '" + errors.path + "'");
    }
    return bytes;
  };
  std::string head(4, '\0');
  if (size < 4 || !in.read(head.data(), 4) || get32(head, 0) != kLocalHeaderSig) errors.not_a_zip();
  // First the end records and the comment window; then, if the directory starts earlier,
  // from its start (it lies before the end records, so once is enough).
  const uint64_t tail = std::min<uint64_t>(size, kEndSize + kMaxCommentSize + kZip64LocatorSize);
  std::string window = read_from(size - tail);
  DirectoryParser first(window, size - tail, errors);
  if (auto entries = first.parse()) return std::move(*entries);
  window = read_from(first.needed_from());
  return read_zip_directory(window, first.needed_from(), errors);
}

void check_zip_members_fit(const ZipArchiveErrors& errors) {
  std::error_code failed;
  const uint64_t file_size = std::filesystem::file_size(errors.path, failed);
  if (failed) throw FileError("cannot read '" + errors.path + "': " + failed.message());
  for (const ZipEntry& entry : zip_directory_of_file(errors)) {
    // compressed_size <= file_size first, so that the product cannot overflow.
    const uint64_t most = entry.method == kMethodStored ? entry.compressed_size : entry.compressed_size * kMaxDeflateRatio;
    if (entry.compressed_size > file_size || entry.size > most) {
      errors.corrupt(zip_member_text(entry) + " declares " + std::to_string(entry.size) +
                     " bytes, more than the file's " + std::to_string(file_size) + " bytes can hold");
    }
  }
}

}  // namespace guidiff
