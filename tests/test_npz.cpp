// .npz archives: round trips, numpy compatibility both ways (fixtures from
// tests/fixtures/make_npz_fixtures.py), corrupt archives, guided-diffusion's sample layout
// and the pixel conversions.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/npz.hpp"
#include "guidiff/io/zip_directory.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using guidiff::testing::same_bytes;

namespace {

const std::string kData = GUIDIFF_TEST_DATA_DIR;

// A fresh directory per test, removed afterwards.
class NpzTest : public guidiff::testing::TempDirTest {
 protected:
};

std::vector<std::string> names_of(const NamedArrays& arrays) {
  std::vector<std::string> names;
  for (const auto& entry : arrays) names.push_back(entry.first);
  return names;
}

// Little-endian field access and patching, independent of the code under test.
uint64_t le(const std::string& bytes, size_t at, int count) {
  uint64_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(bytes.at(at + i));
  return value;
}
void put_le32(std::string& bytes, size_t at, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes.at(at + i) = static_cast<char>((value >> (8 * i)) & 0xFF);
}
uint32_t crc_of(const std::string& data) {
  return static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(data.data()), static_cast<uInt>(data.size())));
}

// A member as its local header describes it (APPNOTE 4.3.7), walking the archive from the
// start. numpy.savez writes ZIP64 local headers whose sizes live in the extra block (id 1).
struct LocalMember {
  size_t header_offset = 0;
  uint16_t flags = 0, method = 0;
  uint32_t crc = 0;
  std::string name, data;
};

std::vector<LocalMember> local_members(const std::string& bytes) {
  std::vector<LocalMember> members;
  size_t at = 0;
  while (at + 30 <= bytes.size() && le(bytes, at, 4) == 0x04034b50) {
    LocalMember member;
    member.header_offset = at;
    member.flags = static_cast<uint16_t>(le(bytes, at + 6, 2));
    member.method = static_cast<uint16_t>(le(bytes, at + 8, 2));
    member.crc = static_cast<uint32_t>(le(bytes, at + 14, 4));
    uint64_t compressed = le(bytes, at + 18, 4);
    const size_t name_length = le(bytes, at + 26, 2), extra_length = le(bytes, at + 28, 2);
    member.name = bytes.substr(at + 30, name_length);
    const size_t extra = at + 30 + name_length;
    if (compressed == 0xFFFFFFFF) {
      EXPECT_EQ(le(bytes, extra, 2), 1u) << "expected a ZIP64 extra block";
      compressed = le(bytes, extra + 4 + 8, 8);  // after the uncompressed size
    }
    const size_t data = extra + extra_length;
    member.data = bytes.substr(data, compressed);
    members.push_back(member);
    at = data + compressed;
  }
  return members;
}

// Offsets into an archive without ZIP64 or comment, as write_npz writes it.
size_t central_directory_offset(const std::string& bytes) { return le(bytes, bytes.size() - 22 + 16, 4); }

// The fixtures' arrays (see tests/fixtures/make_npz_fixtures.py).
torch::Tensor fixture_images() {
  return (torch::arange(96, torch::kInt64) * 3 % 256).to(torch::kUInt8).reshape({2, 4, 4, 3});
}

// ---- round trips -------------------------------------------------------------------------

TEST_F(NpzTest, RoundTripIsBitExactForEveryDtype) {
  torch::manual_seed(3);
  const float nan_f = std::numeric_limits<float>::quiet_NaN();
  const NamedArrays arrays = {
      {"floats", torch::tensor({1.5f, -0.0f, nan_f, 3e-40f, -1e30f})},
      {"noise", torch::randn({2, 3, 4}, torch::kFloat32)},
      {"doubles", torch::tensor({-std::numeric_limits<double>::infinity(), 0.1, 1e-310, 2.0}).reshape({2, 2})},
      {"ids", torch::randint(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), {7},
                             torch::kInt64)},
      {"ints", torch::randint(-1000000, 1000000, {3, 1, 2}, torch::kInt32)},
      {"pixels", torch::randint(0, 256, {2, 5, 5, 3}, torch::kUInt8)},
      {"empty", torch::zeros({0, 3}, torch::kFloat32)},
      {"scalar", torch::tensor(42.0)},
      {"transposed", torch::randn({3, 4}).t()},  // non-contiguous
      {"gr\xc3\xb6\xc3\x9f" "e", torch::ones({2}, torch::kInt64)},  // UTF-8 name
  };
  const std::string file = path("all.npz");
  write_npz(file, arrays);
  const NamedArrays back = read_npz(file);
  ASSERT_EQ(names_of(back), names_of(arrays));
  for (size_t i = 0; i < arrays.size(); ++i) {
    EXPECT_TRUE(same_bytes(back[i].second, arrays[i].second)) << arrays[i].first;
  }
}

TEST_F(NpzTest, EmptyArchiveRoundTrips) {
  write_npz(path("none.npz"), {});
  EXPECT_TRUE(read_npz(path("none.npz")).empty());
  EXPECT_EQ(read_file_bytes(path("none.npz")).size(), 22u);  // only the end record
}

TEST_F(NpzTest, WritesAtomicallyAndDeterministically) {
  const NamedArrays arrays = {{"a", torch::arange(5, torch::kFloat32)}};
  write_npz(path("x.npz"), {{"old", torch::ones({1})}});
  write_npz(path("x.npz"), arrays);  // replaces
  write_npz(path("y.npz"), arrays);
  EXPECT_EQ(listing(), (std::set<std::string>{"x.npz", "y.npz"}));
  // A fixed timestamp: identical arrays give identical bytes.
  EXPECT_EQ(read_file_bytes(path("x.npz")), read_file_bytes(path("y.npz")));
  EXPECT_EQ(names_of(read_npz(path("x.npz"))), std::vector<std::string>{"a"});
}

// ---- numpy compatibility -------------------------------------------------------------------

TEST_F(NpzTest, ReadsNumpySavez) {
  const NamedArrays arrays = read_npz(kData + "/npz_stored.npz");
  ASSERT_EQ(names_of(arrays), (std::vector<std::string>{"arr_0", "arr_1"}));
  EXPECT_TRUE(same_bytes(arrays[0].second, fixture_images()));
  EXPECT_TRUE(same_bytes(arrays[1].second, torch::tensor({7, 0}, torch::kInt64)));
}

TEST_F(NpzTest, ReadsNumpySavezCompressed) {
  const std::string file = kData + "/npz_compressed.npz";
  // The fixture really is deflated (method 8), so this exercises inflate.
  for (const LocalMember& member : local_members(read_file_bytes(file))) EXPECT_EQ(member.method, 8) << member.name;
  const NamedArrays arrays = read_npz(file);
  ASSERT_EQ(names_of(arrays), (std::vector<std::string>{"weights", "ids", "zeros"}));
  EXPECT_TRUE(same_bytes(arrays[0].second, (torch::arange(12, torch::kFloat32) * 0.25 - 1).reshape({3, 4})));
  EXPECT_TRUE(same_bytes(arrays[1].second, torch::tensor({int64_t{-5}, int64_t{0}, int64_t{1} << 40})));
  EXPECT_TRUE(same_bytes(arrays[2].second, torch::zeros({1000}, torch::kFloat64)));
}

TEST_F(NpzTest, ReadsNumpyZip64Archive) {
  // ZIP64 extra fields in the central directory and a ZIP64 end record, as numpy writes
  // for batches over 4 GiB.
  const NamedArrays arrays = read_npz(kData + "/npz_zip64.npz");
  ASSERT_EQ(names_of(arrays), (std::vector<std::string>{"arr_0", "arr_1"}));
  EXPECT_TRUE(same_bytes(arrays[0].second, torch::tensor({0, 255, 128, 1}, torch::kUInt8).reshape({1, 2, 2, 1})));
  EXPECT_TRUE(same_bytes(arrays[1].second, torch::tensor({999}, torch::kInt64)));
}

// zip_directory_of_file reads a file's tail: the end records, then, when the central directory
// starts before that 64 KiB window (here 1500 members with long names, about 130 KB of
// directory), from its start. Both give what reading the whole file gives, ZIP64 included.
TEST_F(NpzTest, TheDirectoryReadFromAFilesTailIsTheWholeFilesDirectory) {
  NamedArrays many;
  for (int i = 0; i < 1500; ++i) {
    many.emplace_back("an_array_with_a_rather_long_name_to_fill_the_directory_" + std::to_string(i),
                      torch::full({20}, static_cast<float>(i)));
  }
  write_npz(path("many.npz"), many);
  const std::string zip64 = kData + "/npz_zip64.npz";
  for (const std::string& file : {path("many.npz"), zip64}) {
    SCOPED_TRACE(file);
    const ZipArchiveErrors errors{file, ".npz file", "an .npz file"};
    const std::vector<ZipEntry> tail = zip_directory_of_file(errors);
    const std::vector<ZipEntry> whole = read_zip_directory(read_file_bytes(file), 0, errors);
    ASSERT_EQ(tail.size(), whole.size());
    ASSERT_FALSE(whole.empty());
    for (size_t i = 0; i < whole.size(); ++i) {
      EXPECT_EQ(tail[i].name, whole[i].name);
      EXPECT_EQ(tail[i].size, whole[i].size);
      EXPECT_EQ(tail[i].local_offset, whole[i].local_offset);
      EXPECT_EQ(tail[i].crc, whole[i].crc);
    }
  }
  EXPECT_EQ(zip_directory_of_file({path("many.npz"), ".npz file", "an .npz file"}).size(), 1500u);
  check_zip_members_fit({path("many.npz"), ".npz file", "an .npz file"});  // a good archive passes
  write_raw("not_zip.npz", std::string(100000, 'x'));
  expect_error<FileError>([&] { zip_directory_of_file({path("not_zip.npz"), ".npz file", "an .npz file"}); },
                          {"not_zip.npz", "is not an .npz file (not a zip archive)"});
}

TEST_F(NpzTest, ReadsNumpyArchiveWithDataDescriptors) {
  // Written to an unseekable stream: local headers hold zero CRC and sizes (flag bit 3).
  const std::string file = kData + "/npz_streamed.npz";
  const std::vector<LocalMember> members = local_members(read_file_bytes(file));
  ASSERT_FALSE(members.empty());
  EXPECT_TRUE(members[0].flags & 0x08);
  EXPECT_EQ(members[0].crc, 0u);
  const NamedArrays arrays = read_npz(file);
  ASSERT_EQ(names_of(arrays), (std::vector<std::string>{"arr_0", "arr_1"}));
  EXPECT_TRUE(same_bytes(arrays[0].second, torch::tensor({1.5f, -2.0f, 0.0f, 3.25f}).reshape({2, 2})));
  EXPECT_TRUE(same_bytes(arrays[1].second, torch::tensor({1, 2}, torch::kInt64)));
}

TEST_F(NpzTest, WritesWhatNumpySavezWrites) {
  // Same members, same names, same .npy bytes as numpy's own savez of the same arrays; and
  // every local header is a stored member whose CRC field matches its data.
  const std::string file = path("ours.npz");
  write_npz(file, {{"arr_0", fixture_images()}, {"arr_1", torch::tensor({7, 0}, torch::kInt64)}});
  const std::string ours_bytes = read_file_bytes(file);
  const std::vector<LocalMember> ours = local_members(ours_bytes);
  const std::vector<LocalMember> numpys = local_members(read_file_bytes(kData + "/npz_stored.npz"));
  ASSERT_EQ(ours.size(), 2u);
  ASSERT_EQ(numpys.size(), 2u);
  for (size_t i = 0; i < ours.size(); ++i) {
    EXPECT_EQ(ours[i].name, numpys[i].name);
    EXPECT_EQ(ours[i].data, numpys[i].data) << ours[i].name;
    EXPECT_EQ(ours[i].method, 0);
    EXPECT_EQ(ours[i].crc, crc_of(ours[i].data)) << ours[i].name;
  }
  EXPECT_EQ(ours[0].name, "arr_0.npy");
  EXPECT_EQ(ours[0].data, encode_npy(fixture_images()));

  // Central directory: one entry per member pointing at its local header, then the end
  // record with the entry count.
  const size_t central = central_directory_offset(ours_bytes);
  EXPECT_EQ(central, ours[1].header_offset + 30 + ours[1].name.size() + ours[1].data.size());
  EXPECT_EQ(le(ours_bytes, central, 4), 0x02014b50u);
  EXPECT_EQ(le(ours_bytes, central + 16, 4), ours[0].crc);
  EXPECT_EQ(le(ours_bytes, central + 42, 4), 0u);
  EXPECT_EQ(ours_bytes.substr(central + 46, 9), "arr_0.npy");
  const size_t end = ours_bytes.size() - 22;
  EXPECT_EQ(le(ours_bytes, end, 4), 0x06054b50u);
  EXPECT_EQ(le(ours_bytes, end + 10, 2), 2u);
  EXPECT_EQ(le(ours_bytes, end + 12, 4), end - central);
}

// ---- refusals when writing -------------------------------------------------------------------

TEST_F(NpzTest, WriteRefusesBadArraysAndLeavesNoFile) {
  const std::string file = path("bad.npz");
  const torch::Tensor ok = torch::ones({2});
  expect_error<InputError>([&] { write_npz(file, {{"", ok}}); }, {file, "empty name"});
  expect_error<InputError>([&] { write_npz(file, {{"a", ok}, {"a", ok}}); }, {file, "'a'", "twice"});
  expect_error<InputError>([&] { write_npz(file, {{"u", torch::Tensor()}}); }, {file, "'u'", "undefined"});
  expect_error<InputError>([&] { write_npz(file, {{"ok", ok}, {"h", torch::ones({2}, torch::kFloat16)}}); },
                           {file, "h.npy", "Half"});
  // 2^30 + 1 float32 values (an expanded view, nothing allocated): over the 4 GiB limit.
  const torch::Tensor huge = torch::zeros({1}).expand({(int64_t{1} << 30) + 1});
  expect_error<InputError>([&] { write_npz(file, {{"big", huge}}); }, {file, "4 GiB"});
  EXPECT_TRUE(listing().empty());
}

TEST_F(NpzTest, FailedWriteLeavesTheOldFile) {
  const std::string file = path("keep.npz");
  write_npz(file, {{"a", torch::ones({3})}});
  const std::string before = read_file_bytes(file);
  EXPECT_THROW(write_npz(file, {{"a", torch::ones({3})}, {"b", torch::ones({1}, torch::kFloat16)}}), InputError);
  EXPECT_EQ(read_file_bytes(file), before);
  EXPECT_EQ(listing(), std::set<std::string>{"keep.npz"});
}

TEST_F(NpzTest, WriteIntoMissingDirectoryIsAFileError) {
  const std::string file = path("no/such/dir/x.npz");
  expect_error<FileError>([&] { write_npz(file, {{"a", torch::ones({1})}}); }, {file});
}

// ---- corrupt archives -------------------------------------------------------------------------

TEST_F(NpzTest, MissingFileIsAFileErrorNamingIt) {
  const std::string file = path("absent.npz");
  expect_error<FileError>([&] { read_npz(file); }, {file});
}

TEST_F(NpzTest, NotAZipIsAFileErrorNamingIt) {
  write_raw("text.npz", "this is plain text, not an archive at all");
  expect_error<FileError>([&] { read_npz(path("text.npz")); }, {path("text.npz"), "not a zip"});
  write_raw("empty.npz", "");
  expect_error<FileError>([&] { read_npz(path("empty.npz")); }, {path("empty.npz"), "not a zip"});
  // A lone .npy file is not an .npz either.
  write_npy(path("array.npz"), torch::ones({4}));
  expect_error<FileError>([&] { read_npz(path("array.npz")); }, {path("array.npz"), "not a zip"});
}

TEST_F(NpzTest, TruncatedArchiveIsAFileErrorNamingIt) {
  write_npz(path("full.npz"), {{"a", torch::arange(40, torch::kFloat32)}, {"b", torch::ones({3}, torch::kInt64)}});
  const std::string bytes = read_file_bytes(path("full.npz"));
  const size_t central = central_directory_offset(bytes);
  for (size_t cut : {size_t{4}, size_t{20}, size_t{100}, central, central + 10, bytes.size() - 22, bytes.size() - 1}) {
    write_raw("cut.npz", bytes.substr(0, cut));
    expect_error<FileError>([&] { read_npz(path("cut.npz")); }, {path("cut.npz"), "truncated"});
  }
}

TEST_F(NpzTest, CrcMismatchIsAFileErrorNamingFileAndMember) {
  write_npz(path("ok.npz"), {{"a", torch::ones({3})}, {"b", torch::arange(6, torch::kInt64)}});
  std::string bytes = read_file_bytes(path("ok.npz"));
  const std::vector<LocalMember> members = local_members(bytes);
  ASSERT_EQ(members.size(), 2u);
  // Flip a bit of b's last data byte: the .npy would still decode, only the CRC catches it.
  const size_t last = members[1].header_offset + 30 + members[1].name.size() + members[1].data.size() - 1;
  bytes[last] = static_cast<char>(bytes[last] ^ 0x01);
  write_raw("flipped.npz", bytes);
  expect_error<FileError>([&] { read_npz(path("flipped.npz")); }, {path("flipped.npz"), "'b.npy'", "CRC"});
}

TEST_F(NpzTest, CorruptDeflateDataIsAFileErrorNamingFileAndMember) {
  std::string bytes = read_file_bytes(kData + "/npz_compressed.npz");
  const LocalMember first = local_members(bytes).at(0);
  const size_t data = first.header_offset + 30 + first.name.size() + le(bytes, first.header_offset + 28, 2);
  ASSERT_GT(first.data.size(), 20u);
  for (size_t i = 5; i < 15; ++i) bytes[data + i] = static_cast<char>(~bytes[data + i]);
  write_raw("mangled.npz", bytes);
  expect_error<FileError>([&] { read_npz(path("mangled.npz")); }, {path("mangled.npz"), "'weights.npy'"});
}

TEST_F(NpzTest, WrongDeclaredSizeOfDeflatedMemberIsAFileError) {
  std::string bytes = read_file_bytes(kData + "/npz_compressed.npz");
  const size_t central = central_directory_offset(bytes);
  ASSERT_EQ(le(bytes, central, 4), 0x02014b50u);
  put_le32(bytes, central + 24, static_cast<uint32_t>(le(bytes, central + 24, 4) + 1));  // uncompressed size
  write_raw("size.npz", bytes);
  expect_error<FileError>([&] { read_npz(path("size.npz")); }, {path("size.npz"), "'weights.npy'", "deflate"});
}

TEST_F(NpzTest, UnsupportedCompressionIsAFileErrorNamingFileAndMember) {
  write_npz(path("ok.npz"), {{"a", torch::ones({3})}});
  std::string bytes = read_file_bytes(path("ok.npz"));
  const size_t central = central_directory_offset(bytes);
  bytes[central + 10] = 12;  // bzip2
  write_raw("bzip2.npz", bytes);
  expect_error<FileError>([&] { read_npz(path("bzip2.npz")); },
                          {path("bzip2.npz"), "'a.npy'", "compression method 12"});
}

TEST_F(NpzTest, MemberThatIsNotNpyIsAFileError) {
  write_npz(path("ok.npz"), {{"x", torch::ones({3})}});
  std::string bytes = read_file_bytes(path("ok.npz"));
  const size_t central = central_directory_offset(bytes);
  ASSERT_EQ(bytes.substr(central + 46, 5), "x.npy");
  bytes.replace(central + 46, 5, "x.txt");
  write_raw("txt.npz", bytes);
  expect_error<FileError>([&] { read_npz(path("txt.npz")); }, {path("txt.npz"), "'x.txt'", ".npy"});
}

TEST_F(NpzTest, MemberWithBadNpyIsAFileErrorNamingFileAndMember) {
  write_npz(path("ok.npz"), {{"x", torch::ones({3})}});
  std::string bytes = read_file_bytes(path("ok.npz"));
  const LocalMember member = local_members(bytes).at(0);
  const size_t data = member.header_offset + 30 + member.name.size();
  ASSERT_EQ(bytes.substr(data + 1, 5), "NUMPY");
  bytes[data + 1] = 'X';
  // With consistent CRCs, so the .npy decoder is what objects.
  const uint32_t crc = crc_of(bytes.substr(data, member.data.size()));
  put_le32(bytes, member.header_offset + 14, crc);
  put_le32(bytes, central_directory_offset(bytes) + 16, crc);
  write_raw("badnpy.npz", bytes);
  expect_error<FileError>([&] { read_npz(path("badnpy.npz")); }, {path("badnpy.npz"), "'x.npy'", "magic"});
}

TEST_F(NpzTest, MissingKeyIsAFileErrorNamingKeyAndFile) {
  const NamedArrays arrays = read_npz(kData + "/npz_compressed.npz");
  EXPECT_TRUE(same_bytes(npz_array(arrays, "ids", "c.npz"), arrays[1].second));
  expect_error<FileError>([&] { npz_array(arrays, "arr_0", "c.npz"); }, {"'c.npz'", "'arr_0'", "weights, ids, zeros"});
}

// ---- guided-diffusion's sample layout ----------------------------------------------------------

TEST_F(NpzTest, SampleBatchRoundTrips) {
  const torch::Tensor images = torch::randint(0, 256, {3, 8, 6, 3}, torch::kUInt8);
  const std::string file = path("samples_3x8x6x3.npz");
  write_sample_batch_npz(file, images, torch::tensor({5, 0, 999}, torch::kInt32));  // widened to int64
  EXPECT_EQ(names_of(read_npz(file)), (std::vector<std::string>{"arr_0", "arr_1"}));
  const SampleBatchNpz batch = read_sample_batch_npz(file);
  EXPECT_TRUE(same_bytes(batch.images, images));
  EXPECT_TRUE(same_bytes(batch.labels, torch::tensor({5, 0, 999}, torch::kInt64)));

  // Unconditional samples: arr_0 only.
  const torch::Tensor grey = torch::randint(0, 256, {2, 4, 4, 1}, torch::kUInt8);
  write_sample_batch_npz(path("grey.npz"), grey, torch::Tensor());
  EXPECT_EQ(names_of(read_npz(path("grey.npz"))), std::vector<std::string>{"arr_0"});
  const SampleBatchNpz unlabelled = read_sample_batch_npz(path("grey.npz"));
  EXPECT_TRUE(same_bytes(unlabelled.images, grey));
  EXPECT_FALSE(unlabelled.labels.defined());
}

TEST_F(NpzTest, SampleBatchReadsNumpyFixture) {
  const SampleBatchNpz batch = read_sample_batch_npz(kData + "/npz_stored.npz");
  EXPECT_TRUE(same_bytes(batch.images, fixture_images()));
  EXPECT_TRUE(same_bytes(batch.labels, torch::tensor({7, 0}, torch::kInt64)));
}

TEST_F(NpzTest, SampleBatchWithBadLayoutIsAFileErrorNamingFile) {
  const torch::Tensor images = torch::zeros({2, 4, 4, 3}, torch::kUInt8);
  const std::string no_images = path("labels_only.npz");
  write_npz(no_images, {{"arr_1", torch::tensor({1, 2}, torch::kInt64)}});
  expect_error<FileError>([&] { read_sample_batch_npz(no_images); }, {no_images, "arr_0"});

  const std::string floats = path("floats.npz");
  write_npz(floats, {{"arr_0", torch::zeros({2, 4, 4, 3})}});
  expect_error<FileError>([&] { read_sample_batch_npz(floats); }, {floats, "arr_0", "uint8", "Float"});

  const std::string nchw = path("nchw.npz");  // channels first: C = 4 is not 1 or 3
  write_npz(nchw, {{"arr_0", torch::zeros({2, 3, 4, 4}, torch::kUInt8)}});
  expect_error<FileError>([&] { read_sample_batch_npz(nchw); }, {nchw, "arr_0"});

  const std::string flat = path("flat.npz");
  write_npz(flat, {{"arr_0", torch::zeros({2, 48}, torch::kUInt8)}});
  expect_error<FileError>([&] { read_sample_batch_npz(flat); }, {flat, "arr_0"});

  const std::string short_labels = path("short_labels.npz");
  write_npz(short_labels, {{"arr_0", images}, {"arr_1", torch::tensor({1, 2, 3}, torch::kInt64)}});
  expect_error<FileError>([&] { read_sample_batch_npz(short_labels); }, {short_labels, "arr_1", "[2]"});

  const std::string float_labels = path("float_labels.npz");
  write_npz(float_labels, {{"arr_0", images}, {"arr_1", torch::tensor({1.0, 2.0})}});
  expect_error<FileError>([&] { read_sample_batch_npz(float_labels); }, {float_labels, "arr_1"});

  const std::string corrupt = path("corrupt.npz");
  write_raw("corrupt.npz", "PK\x03\x04 and then nothing");
  expect_error<FileError>([&] { read_sample_batch_npz(corrupt); }, {corrupt});
}

TEST_F(NpzTest, SampleBatchWriterRefusesBadInputs) {
  const std::string file = path("s.npz");
  const torch::Tensor images = torch::zeros({2, 4, 4, 3}, torch::kUInt8);
  expect_error<InputError>([&] { write_sample_batch_npz(file, torch::zeros({2, 4, 4, 3}), {}); },
                           {file, "uint8"});
  expect_error<InputError>([&] { write_sample_batch_npz(file, torch::zeros({2, 3, 4, 4}, torch::kUInt8), {}); },
                           {file, "[N, H, W, C]"});
  expect_error<InputError>([&] { write_sample_batch_npz(file, torch::Tensor(), {}); }, {file, "undefined"});
  expect_error<InputError>([&] { write_sample_batch_npz(file, images, torch::tensor({1}, torch::kInt64)); },
                           {file, "labels", "[2]"});
  expect_error<InputError>([&] { write_sample_batch_npz(file, images, torch::tensor({1.0, 2.0})); },
                           {file, "labels"});
  EXPECT_TRUE(listing().empty());
}

// ---- pixel conversions ------------------------------------------------------------------------

TEST(NpzPixels, ConversionIsRoundedClampedAndNhwc) {
  // [1, 1, 1, 7]: -1 -> 0, 1 -> 255, 0 -> 127.5 rounds half to even -> 128, out of range clamps.
  const torch::Tensor x = torch::tensor({-1.0f, 1.0f, 0.0f, -3.0f, 2.5f, -0.99f, 0.999f}).reshape({1, 1, 1, 7});
  const torch::Tensor pixels = images_to_uint8_nhwc(x);
  EXPECT_TRUE(same_bytes(pixels, torch::tensor({0, 255, 128, 0, 255, 1, 255}, torch::kUInt8).reshape({1, 1, 7, 1})));

  // Layout: NCHW [2, 3, 2, 2] -> NHWC [2, 2, 2, 3] with pixel (n, h, w, c) from (n, c, h, w).
  const torch::Tensor levels = torch::arange(24, torch::kInt64).reshape({2, 3, 2, 2}) * 10;
  const torch::Tensor images = levels.to(torch::kFloat32) / 127.5 - 1;
  const torch::Tensor nhwc = images_to_uint8_nhwc(images);
  ASSERT_EQ(nhwc.sizes(), (std::vector<int64_t>{2, 2, 2, 3}));
  EXPECT_TRUE(nhwc.is_contiguous());
  EXPECT_EQ(nhwc[1][0][1][2].item<int>(), levels[1][2][0][1].item<int>());
  EXPECT_TRUE(same_bytes(nhwc, levels.permute({0, 2, 3, 1}).to(torch::kUInt8).contiguous()));
  // float64 input gives the same pixels.
  EXPECT_TRUE(same_bytes(images_to_uint8_nhwc(images.to(torch::kFloat64)), nhwc));
}

TEST(NpzPixels, EveryLevelSurvivesTheRoundTrip) {
  const torch::Tensor all = torch::arange(256, torch::kInt64).to(torch::kUInt8).reshape({1, 16, 16, 1});
  const torch::Tensor images = uint8_nhwc_to_images(all);
  EXPECT_EQ(images.scalar_type(), torch::kFloat32);
  ASSERT_EQ(images.sizes(), (std::vector<int64_t>{1, 1, 16, 16}));
  EXPECT_EQ(images.min().item<float>(), -1.0f);
  EXPECT_EQ(images.max().item<float>(), 1.0f);
  EXPECT_TRUE(same_bytes(images_to_uint8_nhwc(images), all));

  const torch::Tensor rgb = torch::randint(0, 256, {2, 3, 5, 3}, torch::kUInt8);
  const torch::Tensor rgb_images = uint8_nhwc_to_images(rgb);
  ASSERT_EQ(rgb_images.sizes(), (std::vector<int64_t>{2, 3, 3, 5}));
  EXPECT_FLOAT_EQ(rgb_images[1][2][0][4].item<float>(), rgb[1][0][4][2].item<int>() / 127.5f - 1);
  EXPECT_TRUE(same_bytes(images_to_uint8_nhwc(rgb_images), rgb));
}

TEST(NpzPixels, ConversionRefusesBadInputs) {
  expect_error<InputError>([] { images_to_uint8_nhwc(torch::zeros({2, 3, 4}, torch::kFloat32)); }, {"[N, C, H, W]"});
  expect_error<InputError>([] { images_to_uint8_nhwc(torch::zeros({1, 3, 2, 2}, torch::kInt64)); }, {"floating"});
  const float nan_f = std::numeric_limits<float>::quiet_NaN();
  expect_error<NumericError>([&] { images_to_uint8_nhwc(torch::full({1, 1, 2, 2}, nan_f)); }, {"NaN"});
  expect_error<InputError>([] { uint8_nhwc_to_images(torch::zeros({1, 2, 2, 3})); }, {"uint8"});
  expect_error<InputError>([] { uint8_nhwc_to_images(torch::zeros({2, 2, 3}, torch::kUInt8)); }, {"uint8"});
}

}  // namespace
