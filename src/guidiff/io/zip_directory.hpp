// The central directory of a zip archive (APPNOTE 4.3, ZIP64 included), read without trusting
// any of its numbers. The .npz reader and writer (io/npz) use it, and so do the checks that run
// before libtorch opens a torch.save archive (io/pt_file): libtorch allocates a record's
// declared size before reading it, so a 500-byte file could ask for 4 GiB.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace guidiff {
namespace zip_format {

// Record signatures (APPNOTE 4.3).
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
constexpr size_t kMaxCommentSize = 0xFFFF;  // the end record's comment follows it

constexpr uint16_t kMethodStored = 0;
constexpr uint16_t kMethodDeflate = 8;
constexpr uint16_t kFlagEncrypted = 1 << 0;
constexpr uint16_t kFlagUtf8Name = 1 << 11;

// 0xFFFFFFFF in a 32-bit field means "see the ZIP64 extra field", so a non-ZIP64 archive
// keeps every size and offset below it.
constexpr uint64_t kMax32 = 0xFFFFFFFFu;

// Little-endian fields; the caller has checked that the bytes are there.
uint64_t get_le(std::string_view bytes, size_t at, int count);
inline uint32_t get16(std::string_view bytes, size_t at) { return static_cast<uint32_t>(get_le(bytes, at, 2)); }
inline uint32_t get32(std::string_view bytes, size_t at) { return static_cast<uint32_t>(get_le(bytes, at, 4)); }
inline uint64_t get64(std::string_view bytes, size_t at) { return get_le(bytes, at, 8); }

}  // namespace zip_format

// One central-directory entry, with ZIP64 values already substituted.
struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed_size = 0;
  uint64_t size = 0;
  uint64_t local_offset = 0;
};

// "member 'NAME'" as error messages quote it: the name comes from the file.
std::string zip_member_text(const ZipEntry& entry);

// How a reader's errors name its file, as FileError:
//   corrupt:   "'PATH' is not a valid <kind>: <why>"
//   truncated: "'PATH' is truncated (<where>)"
//   not a zip: "'PATH' is not <kind_with_article> (not a zip archive)"
struct ZipArchiveErrors {
  std::string path;
  std::string kind;               // ".npz file"
  std::string kind_with_article;  // "an .npz file"
  [[noreturn]] void corrupt(const std::string& why) const;
  [[noreturn]] void truncated(const std::string& where) const;
  [[noreturn]] void not_a_zip() const;
};

// The entries of the archive whose bytes from `window_offset` to the end of the file are
// `window` (the whole file when `window_offset` is 0). The window must reach back to the end
// record's comment window and to the central directory; zip_directory_of_file finds how far.
std::vector<ZipEntry> read_zip_directory(std::string_view window, uint64_t window_offset,
                                         const ZipArchiveErrors& errors);

// The same for a file on disk, reading only its tail: the end records and the directory.
std::vector<ZipEntry> zip_directory_of_file(const ZipArchiveErrors& errors);

// Refuses (errors.corrupt) an archive whose members declare more bytes than the file can hold:
// a stored member more than the file, a deflated one more than kMaxDeflateRatio times its
// compressed bytes. libtorch's archive reader (torch.save, TorchScript) allocates a record's
// declared size before reading it, so this runs first.
void check_zip_members_fit(const ZipArchiveErrors& errors);

}  // namespace guidiff
