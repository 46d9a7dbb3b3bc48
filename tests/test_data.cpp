// The data layer: IDX / CIFAR / image-folder readers and their errors, the mixture dataset,
// transforms, seeded epoch orders and the background batch loader. Fixture files are written
// at test time into a temporary directory.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/batch_loader.hpp"
#include "guidiff/data/cifar.hpp"
#include "guidiff/data/idx.hpp"
#include "guidiff/data/image_folder.hpp"
#include "guidiff/data/mixture_dataset.hpp"
#include "guidiff/data/random_order.hpp"
#include "guidiff/data/transforms.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "support/image_writers.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using guidiff::testing::write_jpeg_with_stb;
using guidiff::testing::write_png_with_stb;

namespace {

using Bytes = std::vector<uint8_t>;

// Whether images are float32 of `shape` and equal the reference scaling p / 127.5 - 1,
// computed in double from the raw bytes (to within float rounding; adjacent levels are 0.0078
// apart).
bool matches_pixels(const torch::Tensor& images, const Bytes& pixels, torch::IntArrayRef shape) {
  std::vector<double> values;
  for (uint8_t p : pixels) values.push_back(p / 127.5 - 1.0);
  const torch::Tensor expected = torch::tensor(values, torch::kFloat64).view(shape);
  return images.scalar_type() == torch::kFloat32 && images.sizes() == shape &&
         (images.to(torch::kFloat64) - expected).abs().max().item<double>() < 1e-6;
}

class DataTest : public guidiff::testing::TempDirTest {
 protected:
  void write_raw(const std::string& name, const Bytes& bytes) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    std::ofstream(path(name), std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  void write_gz(const std::string& name, const Bytes& bytes) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    gzFile file = gzopen(path(name).c_str(), "wb");
    ASSERT_NE(file, nullptr);
    ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    gzclose(file);
  }
  // An IDX file: magic 0 0 type ndims, big-endian sizes, then `payload` (possibly short or long).
  static Bytes idx_bytes(const std::vector<uint32_t>& dims, const Bytes& payload,
                         uint8_t type = 0x08) {
    Bytes bytes = {0, 0, type, static_cast<uint8_t>(dims.size())};
    for (uint32_t d : dims) {
      for (int shift = 24; shift >= 0; shift -= 8)
        bytes.push_back(static_cast<uint8_t>(d >> shift));
    }
    bytes.insert(bytes.end(), payload.begin(), payload.end());
    return bytes;
  }
  void write_png(const std::string& name, int width, int height, int channels,
                 const Bytes& pixels) const {
    fs::create_directories(fs::path(path(name)).parent_path());
    ASSERT_TRUE(write_png_with_stb(path(name), width, height, channels, pixels));
  }
};

// Three 2 x 3 images whose pixels cover 0 and 255, and labels 3, 0, 9.
const Bytes kIdxPixels = {0, 1, 2, 3, 4, 5, 100, 127, 128, 129, 200, 255, 255, 254, 17, 0, 64, 192};
const Bytes kIdxLabels = {3, 0, 9};

// ---- IDX -----------------------------------------------------------------------------------

TEST_F(DataTest, IdxGzipAndRawFilesReadBackExactly) {
  write_gz("images.gz", idx_bytes({3, 2, 3}, kIdxPixels));
  write_gz("labels.gz", idx_bytes({3}, kIdxLabels));
  write_raw("images-raw", idx_bytes({3, 2, 3}, kIdxPixels));
  write_raw("labels-raw", idx_bytes({3}, kIdxLabels));
  for (const auto& [images, labels] :
       {std::pair{"images.gz", "labels.gz"}, std::pair{"images-raw", "labels-raw"}}) {
    const Dataset data = load_idx_dataset(path(images), path(labels));
    EXPECT_EQ(data.images.sizes(), (torch::IntArrayRef{3, 1, 2, 3}));
    EXPECT_EQ(data.images.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(matches_pixels(data.images, kIdxPixels, {3, 1, 2, 3}));
    EXPECT_TRUE(torch::equal(data.labels, torch::tensor({3, 0, 9}, torch::kInt64)));
    EXPECT_EQ(data.num_classes, 10);
    EXPECT_EQ(data.name, images);
    EXPECT_EQ(data.images.min().item<float>(), -1.0f);
    EXPECT_EQ(data.images.max().item<float>(), 1.0f);
    data.validate();
  }
}

TEST_F(DataTest, IdxTruncationIsReportedWithExpectedAndActualByteCounts) {
  const Bytes short_payload(kIdxPixels.begin(), kIdxPixels.begin() + 10);
  write_gz("short.gz", idx_bytes({3, 2, 3}, short_payload));
  write_raw("short", idx_bytes({3, 2, 3}, short_payload));
  write_raw("labels", idx_bytes({3}, kIdxLabels));
  for (const std::string name : {"short.gz", "short"}) {
    expect_error<FileError>([&] { load_idx_dataset(path(name), path("labels")); },
                            {path(name), "truncated", "expected 18 bytes", "found 10"});
  }
  // A header declaring far more than the file can hold is refused before any allocation (a fuzz
  // finding: 41 bytes of gzip that asked for 1.8 GB).
  write_raw("huge", idx_bytes({60000, 100, 100}, short_payload));
  write_gz("huge.gz", idx_bytes({60000, 100, 100}, short_payload));
  for (const std::string name : {"huge", "huge.gz"}) {
    expect_error<FileError>([&] { read_idx_ubyte(path(name), 3); },
                            {path(name), "truncated", "declares 600000000 bytes", "can hold"});
  }
  write_raw("header-only", {0, 0, 8, 3, 0, 0});
  expect_error<FileError>([&] { read_idx_ubyte(path("header-only"), 3); },
                          {"header-only", "truncated", "expected 12 bytes", "found 2"});
  // A gzip stream cut short: zlib's own reason is quoted.
  const std::string compressed = [&] {
    write_gz("full.gz", idx_bytes({3, 2, 3}, kIdxPixels));
    std::ifstream in(path("full.gz"), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  write_raw("cut.gz", Bytes(compressed.begin(),
                            compressed.begin() + static_cast<long>(compressed.size()) - 12));
  expect_error<FileError>([&] { read_idx_ubyte(path("cut.gz"), 3); }, {"cut.gz"});
  // Only the 8-byte trailer (CRC-32, length) is cut: every data byte decodes, yet it is damaged.
  write_raw("no-trailer.gz", Bytes(compressed.begin(), compressed.end() - 8));
  expect_error<FileError>([&] { read_idx_ubyte(path("no-trailer.gz"), 3); },
                          {"no-trailer.gz", "gzip"});
}

TEST_F(DataTest, IdxRejectsBadMagicTypeRankAndTrailingBytes) {
  write_raw("png-not-idx", {0x89, 'P', 'N', 'G', 0, 0, 0, 1});
  expect_error<FileError>([&] { read_idx_ubyte(path("png-not-idx"), 3); },
                          {"png-not-idx", "not an IDX file", "bad magic 0x89 0x50"});
  write_raw("floats", idx_bytes({1}, {0, 0, 0, 0}, 0x0D));
  expect_error<FileError>([&] { read_idx_ubyte(path("floats"), 1); }, {"floats", "data type 0x0d"});
  write_raw("labels", idx_bytes({3}, kIdxLabels));
  expect_error<FileError>([&] { load_idx_dataset(path("labels"), path("labels")); },
                          {"labels", "1-dimensional array, expected 3"});
  Bytes long_payload = kIdxPixels;
  long_payload.insert(long_payload.end(), {7, 7, 7});
  write_raw("long", idx_bytes({3, 2, 3}, long_payload));
  expect_error<FileError>([&] { read_idx_ubyte(path("long"), 3); },
                          {"long", "3 bytes after the 18"});
  expect_error<FileError>([&] { read_idx_ubyte(path("absent.gz"), 3); },
                          {"absent.gz", "does not exist"});
}

TEST_F(DataTest, IdxLabelCountAndRangeAreChecked) {
  write_raw("images", idx_bytes({3, 2, 3}, kIdxPixels));
  write_raw("two-labels", idx_bytes({2}, {1, 2}));
  expect_error<FileError>([&] { load_idx_dataset(path("images"), path("two-labels")); },
                          {path("two-labels"), "2 labels", path("images"), "3 images"});
  write_raw("big-label", idx_bytes({3}, {1, 10, 2}));
  expect_error<FileError>([&] { load_idx_dataset(path("images"), path("big-label")); },
                          {"big-label", "label 10 of sample 1", "[0, 10)"});
  // num_classes = 0 takes the largest label + 1.
  EXPECT_EQ(load_idx_dataset(path("images"), path("big-label"), 0).num_classes, 11);
}

TEST_F(DataTest, MnistLayoutSplitsAndMissingFashionMnist) {
  write_gz("mnist/train-images-idx3-ubyte.gz", idx_bytes({3, 2, 3}, kIdxPixels));
  write_gz("mnist/train-labels-idx1-ubyte.gz", idx_bytes({3}, kIdxLabels));
  write_raw("mnist/t10k-images-idx3-ubyte", idx_bytes({1, 2, 3}, Bytes(6, 255)));
  write_raw("mnist/t10k-labels-idx1-ubyte", idx_bytes({1}, {4}));
  const Dataset train = load_mnist(path("mnist"), "train");
  EXPECT_EQ(train.name, "mnist-train");
  EXPECT_EQ(train.size(), 3);
  EXPECT_EQ(train.class_names.size(), 10u);
  const Dataset test = load_mnist(path("mnist"), "test");
  EXPECT_TRUE(torch::equal(test.images, torch::ones({1, 1, 2, 3})));
  EXPECT_TRUE(torch::equal(test.labels, torch::tensor({4}, torch::kInt64)));
  expect_error<InputError>([&] { load_mnist(path("mnist"), "validation"); },
                           {"'validation'", "train", "test"});
  expect_error<FileError>([&] { load_fashion_mnist("test", path("nowhere")); },
                          {"dataset-fashion-mnist", path("nowhere/t10k-images-idx3-ubyte.gz")});
}

TEST(FashionMnist, TestSplitHasTheKnownShapeAndBalancedClasses) {
  if (!fs::exists(std::string(kFashionMnistDirectory) + "/t10k-images-idx3-ubyte.gz")) {
    GTEST_SKIP() << "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)";
  }
  const Dataset data = load_fashion_mnist("test");
  EXPECT_EQ(data.name, "fashion-mnist-test");
  EXPECT_EQ(data.images.sizes(), (torch::IntArrayRef{10000, 1, 28, 28}));
  EXPECT_EQ(data.num_classes, 10);
  EXPECT_EQ(data.class_names.at(9), "Ankle boot");
  EXPECT_EQ(data.images.min().item<float>(), -1.0f);
  EXPECT_EQ(data.images.max().item<float>(), 1.0f);
  // The test split holds exactly 1000 images of each class.
  EXPECT_TRUE(torch::equal(torch::bincount(data.labels), torch::full({10}, 1000, torch::kInt64)));
}

// ---- CIFAR ---------------------------------------------------------------------------------

// Pixel byte k of record r.
uint8_t cifar_pixel(int64_t r, int64_t k) { return static_cast<uint8_t>((r * 31 + k * 7) % 256); }

Bytes cifar_records(const std::vector<Bytes>& label_bytes, int64_t first_record) {
  Bytes bytes;
  for (size_t i = 0; i < label_bytes.size(); ++i) {
    bytes.insert(bytes.end(), label_bytes[i].begin(), label_bytes[i].end());
    for (int64_t k = 0; k < 3072; ++k)
      bytes.push_back(cifar_pixel(first_record + static_cast<int64_t>(i), k));
  }
  return bytes;
}

// The pixels of records [0, count) laid out CHW: k = c * 1024 + y * 32 + x.
Bytes expected_cifar_pixels(int64_t count) {
  Bytes pixels;
  for (int64_t r = 0; r < count; ++r) {
    for (int64_t c = 0; c < 3; ++c) {
      for (int64_t y = 0; y < 32; ++y) {
        for (int64_t x = 0; x < 32; ++x) pixels.push_back(cifar_pixel(r, c * 1024 + y * 32 + x));
      }
    }
  }
  return pixels;
}

TEST_F(DataTest, Cifar10BatchesConcatenateInOrder) {
  write_raw("a.bin", cifar_records({{7}, {0}}, 0));
  write_raw("b.bin", cifar_records({{9}}, 2));
  const Dataset data = load_cifar10_batches({path("a.bin"), path("b.bin")});
  EXPECT_TRUE(matches_pixels(data.images, expected_cifar_pixels(3), {3, 3, 32, 32}));
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({7, 0, 9}, torch::kInt64)));
  EXPECT_EQ(data.num_classes, 10);
}

TEST_F(DataTest, Cifar100ChoosesFineOrCoarseLabels) {
  write_raw("train.bin", cifar_records({{19, 99}, {3, 42}}, 0));
  const Dataset fine = load_cifar100_file(path("train.bin"));
  EXPECT_TRUE(torch::equal(fine.labels, torch::tensor({99, 42}, torch::kInt64)));
  EXPECT_EQ(fine.num_classes, 100);
  EXPECT_TRUE(matches_pixels(fine.images, expected_cifar_pixels(2), {2, 3, 32, 32}));
  const Dataset coarse = load_cifar100_file(path("train.bin"), Cifar100Labels::coarse);
  EXPECT_TRUE(torch::equal(coarse.labels, torch::tensor({19, 3}, torch::kInt64)));
  EXPECT_EQ(coarse.num_classes, 20);
}

TEST_F(DataTest, CifarDirectoriesAndTheirErrors) {
  for (int i = 1; i <= 5; ++i)
    write_raw("c10/data_batch_" + std::to_string(i) + ".bin", cifar_records({{1}}, 0));
  std::ofstream(path("c10/batches.meta.txt"))
      << "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
  const Dataset train = load_cifar10(path("c10"), "train");
  EXPECT_EQ(train.size(), 5);
  EXPECT_EQ(train.name, "cifar10-train");
  EXPECT_EQ(train.class_names.at(9), "truck");
  expect_error<FileError>([&] { load_cifar10(path("c10"), "test"); },
                          {"test_batch.bin", "does not exist"});
  expect_error<InputError>([&] { load_cifar100(path("c10"), "val"); }, {"'val'"});

  Bytes ragged = cifar_records({{1}, {2}}, 0);
  ragged.resize(ragged.size() - 100);
  write_raw("ragged.bin", ragged);
  expect_error<FileError>(
      [&] { load_cifar10_batches({path("ragged.bin")}); },
      {path("ragged.bin"), "6046 bytes", "3073-byte records", "1 records and 2973 bytes"});
  expect_error<FileError>([&] { load_cifar100_file(path("ragged.bin")); }, {"3074-byte records"});
  write_raw("empty.bin", {});
  expect_error<FileError>([&] { load_cifar10_batches({path("empty.bin")}); },
                          {"empty.bin", "empty"});
  write_raw("label10.bin", cifar_records({{0}, {10}}, 0));
  expect_error<FileError>([&] { load_cifar10_batches({path("label10.bin")}); },
                          {"label10.bin", "record 1 has label 10", "[0, 10)"});
}

// ---- image folders -------------------------------------------------------------------------

TEST_F(DataTest, ImageFolderClassesAreSortedSubFolders) {
  const Bytes grey1 = {0, 10, 20, 30, 40, 255}, grey2 = {1, 2, 3, 4, 5, 6},
              grey3 = {9, 9, 9, 200, 200, 200};
  write_png("pets/b_cat/x.png", 3, 2, 1, grey1);
  write_png("pets/a_ant/2.png", 3, 2, 1, grey3);
  write_png("pets/a_ant/1.PNG", 3, 2, 1, grey2);
  std::ofstream(path("pets/a_ant/notes.txt")) << "not an image";
  fs::create_directories(path("pets/.hidden"));
  const Dataset data = load_image_folder(path("pets") + "/", {1, 0, false});
  EXPECT_EQ(data.name, "pets");
  EXPECT_EQ(data.class_names, (std::vector<std::string>{"a_ant", "b_cat"}));
  EXPECT_EQ(data.num_classes, 2);
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({0, 0, 1}, torch::kInt64)));
  Bytes all = grey2;
  all.insert(all.end(), grey3.begin(), grey3.end());
  all.insert(all.end(), grey1.begin(), grey1.end());
  EXPECT_TRUE(matches_pixels(data.images, all, {3, 1, 2, 3}));
  // Grey files read as RGB repeat the grey value in every channel.
  const Dataset rgb = load_image_folder(path("pets"), {3, 0, false});
  EXPECT_EQ(rgb.images.sizes(), (torch::IntArrayRef{3, 3, 2, 3}));
  EXPECT_TRUE(torch::equal(rgb.images, data.images.expand({3, 3, 2, 3})));
}

TEST_F(DataTest, ImageFolderRgbAndGreyConversion) {
  const Bytes rgb = {255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30};  // 2 x 2 pixels, HWC
  write_png("colours/only/a.png", 2, 2, 3, rgb);
  const Dataset colour = load_image_folder(path("colours"));
  const Bytes chw = {255, 0, 0, 10, 0, 255, 0, 20, 0, 0, 255, 30};
  EXPECT_TRUE(matches_pixels(colour.images, chw, {1, 3, 2, 2}));
  // Grey is stb_image's integer luma (77 r + 150 g + 29 b) >> 8.
  Bytes luma;
  for (size_t p = 0; p < rgb.size(); p += 3)
    luma.push_back(static_cast<uint8_t>((77 * rgb[p] + 150 * rgb[p + 1] + 29 * rgb[p + 2]) >> 8));
  EXPECT_TRUE(
      matches_pixels(load_image_folder(path("colours"), {1, 0, false}).images, luma, {1, 1, 2, 2}));
  // A constant-colour JPEG decodes to (almost) that colour: at quality 95 a flat block keeps
  // its DC term, and the integer IDCT and YCbCr round trip cost a level or two: 2.5 levels.
  fs::create_directories(path("jpeg/one"));
  const Bytes flat(8 * 8 * 3, 90);
  ASSERT_TRUE(write_jpeg_with_stb(path("jpeg/one/a.jpg"), 8, 8, 3, flat, 95));
  const Dataset jpeg = load_image_folder(path("jpeg"));
  EXPECT_EQ(jpeg.images.sizes(), (torch::IntArrayRef{1, 3, 8, 8}));
  EXPECT_LT((jpeg.images - (90 / 127.5 - 1)).abs().max().item<float>(), 2.5 / 127.5);
}

TEST_F(DataTest, ImageFolderCropAndResize) {
  // 6 wide x 4 high: the centre crop keeps columns 1..4; shrinking to 2 x 2 averages 2 x 2 blocks.
  Bytes wide(24);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 6; ++x) wide[y * 6 + x] = static_cast<uint8_t>(10 * y + 40 * x);
  }
  write_png("sizes/a/wide.png", 6, 4, 1, wide);
  write_png("sizes/b/small.png", 3, 2, 1, Bytes(6, 7));
  expect_error<FileError>(
      [&] {
        load_image_folder(path("sizes"), {1, 0, false});
      },
      {"images differ in size", "wide.png' is 6x4", "small.png' is 3x2"});
  const Dataset data = load_image_folder(path("sizes"), {1, 2, false});
  ASSERT_EQ(data.images.sizes(), (torch::IntArrayRef{2, 1, 2, 2}));
  for (int oy = 0; oy < 2; ++oy) {
    for (int ox = 0; ox < 2; ++ox) {
      double sum = 0;
      for (int y = 2 * oy; y < 2 * oy + 2; ++y) {
        for (int x = 1 + 2 * ox; x < 3 + 2 * ox; ++x) sum += wide[y * 6 + x];
      }
      // A float32 mean of 4 pixels, scaled to [-1, 1]: a few ulps of 1 (6e-8 each); 1e-6.
      EXPECT_NEAR(data.images[0][0][oy][ox].item<double>(), sum / 4 / 127.5 - 1, 1e-6);
    }
  }
  // Enlarging 2 -> 4 is bilinear with half-pixel centres: weights 1, 3/4, 1/4, 0 on the first
  // pixel.
  const torch::Tensor row = torch::tensor({0.0f, 200.0f}).view({1, 1, 2}).expand({1, 2, 2});
  const torch::Tensor enlarged = center_crop_and_resize(row, 4);
  // Weights 1/4 and 3/4 of 0 and 200 are exact in float32; allclose's default 1e-5 relative
  // is ~100 ulps of 200.
  EXPECT_TRUE(torch::allclose(enlarged[0][3], torch::tensor({0.0f, 50.0f, 150.0f, 200.0f})));
  EXPECT_TRUE(torch::allclose(enlarged[0][0], enlarged[0][3]));
}

TEST_F(DataTest, ImageFolderErrorsNameTheFolderOrFile) {
  expect_error<FileError>([&] { load_image_folder(path("missing")); },
                          {path("missing"), "does not exist"});
  fs::create_directories(path("flat"));
  write_png("flat/loose.png", 1, 1, 1, {0});
  expect_error<FileError>([&] { load_image_folder(path("flat")); },
                          {path("flat"), "no class sub-folders"});
  write_png("classes/full/a.png", 1, 1, 1, {0});
  fs::create_directories(path("classes/empty"));
  std::ofstream(path("classes/empty/readme.txt")) << "x";
  expect_error<FileError>([&] { load_image_folder(path("classes")); },
                          {path("classes/empty"), "holds no"});
  expect_error<InputError>(
      [&] {
        load_image_folder(path("classes"), {2, 0, false});
      },
      {"channels", "2"});
}

TEST_F(DataTest, UnreadableImagesFailOrAreSkippedWithOneWarning) {
  write_png("mixed/a/good.png", 2, 2, 1, {1, 2, 3, 4});
  write_png("mixed/b/good.png", 2, 2, 1, {5, 6, 7, 8});
  write_raw("mixed/b/broken.png", {'n', 'o', 't', ' ', 'a', ' ', 'p', 'n', 'g'});
  write_raw("mixed/b/cut.jpg", {0xFF, 0xD8, 0xFF});
  expect_error<FileError>([&] { load_image_folder(path("mixed")); },
                          {path("mixed/b/broken.png"), "fix or remove the file"});

  ::testing::internal::CaptureStderr();
  const Dataset data = load_image_folder(path("mixed"), {1, 0, true});
  const std::string warning = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(data.size(), 2);
  EXPECT_TRUE(torch::equal(data.labels, torch::tensor({0, 1}, torch::kInt64)));
  EXPECT_EQ(std::count(warning.begin(), warning.end(), '\n'), 1) << warning;
  EXPECT_NE(warning.find("skipped 2 unreadable images"), std::string::npos) << warning;
  EXPECT_NE(warning.find("broken.png"), std::string::npos) << warning;

  // A class whose every file is unreadable is still an error, even when skipping.
  write_raw("dead/a/x.png", {1, 2, 3});
  ::testing::internal::CaptureStderr();
  expect_error<FileError>(
      [&] {
        load_image_folder(path("dead"), {1, 0, true});
      },
      {path("dead/a"), "no readable images"});
  ::testing::internal::GetCapturedStderr();
}

// Debian's stb_image writes past its arrays for a JPEG Huffman table of more than 256 codes (a
// fuzz finding under UBSan); the reader refuses such a file before stb sees it. Tables of up to
// 256 codes, and a 0xFF 0xC4 pair whose table stb itself refuses, are left to stb.
TEST_F(DataTest, AJpegHuffmanTableOfMoreThan256CodesIsRefused) {
  const auto jpeg_with_table = [](uint8_t class_and_slot, uint8_t count_each) {
    Bytes bytes = {0xFF, 0xD8, 0xFF, 0xC4, 0x00, 19, class_and_slot};
    for (int i = 0; i < 16; ++i) bytes.push_back(count_each);
    return bytes;
  };
  write_raw("jpeg/a/overflow.jpg", jpeg_with_table(0x00, 17));  // 16 x 17 = 272 codes
  expect_error<FileError>([&] { load_image_folder(path("jpeg")); },
                          {path("jpeg/a/overflow.jpg"), "Huffman table declares more than 256 codes"});
  // stb skips 0xFF fill bytes before the start marker, so this is a JPEG to it as well.
  Bytes filled = jpeg_with_table(0x00, 17);
  filled.insert(filled.begin(), 5, 0xFF);
  write_raw("jpeg/a/overflow.jpg", filled);
  expect_error<FileError>([&] { load_image_folder(path("jpeg")); },
                          {path("jpeg/a/overflow.jpg"), "Huffman table declares more than 256 codes"});
  write_raw("jpeg/a/overflow.jpg", jpeg_with_table(0x00, 16));  // 256: stb's own error
  expect_error<FileError>([&] { load_image_folder(path("jpeg")); }, {path("jpeg/a/overflow.jpg")});
  try {
    load_image_folder(path("jpeg"));
  } catch (const FileError& error) {
    EXPECT_EQ(std::string(error.what()).find("256 codes"), std::string::npos) << error.what();
  }
}

// stb_image reserves a PNG chunk's declared length before reading it (a fuzz finding: 200 bytes
// that asked for 1.3 GB); a chunk longer than the rest of the file is refused first.
TEST_F(DataTest, APngChunkRunningPastTheEndIsRefusedBeforeDecoding) {
  write_png("png/a/good.png", 2, 2, 1, {1, 2, 3, 4});
  EXPECT_EQ(load_image_folder(path("png")).size(), 1);
  std::string bytes = read_file_bytes(path("png/a/good.png"));
  const size_t idat = bytes.find("IDAT");
  ASSERT_NE(idat, std::string::npos);
  bytes.replace(idat - 4, 4, std::string("\x4e\x54\x0f\x96", 4));  // 1,314,131,862 bytes
  write_raw("png/a/good.png", Bytes(bytes.begin(), bytes.end()));
  expect_error<FileError>([&] { load_image_folder(path("png")); },
                          {path("png/a/good.png"), "corrupt PNG: a chunk runs past the end of the file"});
}

// An image header may declare far more pixels than any data set holds; stb would allocate them
// all before decoding (a fuzz finding: a small JPEG asked for 1.3 GB). stb itself refuses a PNG
// over 1 GiB, so the case is a PNG of 10^8 pixels.
TEST_F(DataTest, AnImageDeclaringMoreThanThePixelLimitIsRefusedBeforeDecoding) {
  write_png("big/a/image.png", 2, 2, 1, {1, 2, 3, 4});
  std::string bytes = read_file_bytes(path("big/a/image.png"));
  const size_t ihdr = bytes.find("IHDR");
  ASSERT_NE(ihdr, std::string::npos);
  bytes.replace(ihdr + 4, 8, std::string("\x00\x00\x27\x10\x00\x00\x27\x10", 8));  // 10000 x 10000
  write_raw("big/a/image.png", Bytes(bytes.begin(), bytes.end()));
  expect_error<FileError>([&] { load_image_folder(path("big")); },
                          {path("big/a/image.png"), "declares 10000x10000 pixels, more than the 89478485"});
}

// ---- mixture data --------------------------------------------------------------------------

TEST(MixtureDataset, HoldsTheMixturesExactDraws) {
  const GaussianMixture mixture = GaussianMixture::demo();
  const Dataset data = mixture_dataset(mixture, 500, 11);
  const auto [points, labels] = mixture.sample(500, 11);
  EXPECT_TRUE(torch::equal(data.images, points.to(torch::kFloat32)));  // the same seeded draw
  EXPECT_TRUE(torch::equal(data.labels, labels));
  EXPECT_EQ(data.num_classes, mixture.num_classes);
  EXPECT_FALSE(data.holds_images());
  data.validate();
  expect_error<InputError>([&] { mixture_dataset(mixture, 0, 1); }, {"must be >= 1"});
}

// ---- order and transforms ------------------------------------------------------------------

TEST(EpochOrder, IsASeededPermutationThatDependsOnlyOnSeedEpochAndSize) {
  const torch::Tensor order = epoch_order(5, 3, 1000);
  EXPECT_TRUE(torch::equal(std::get<0>(order.sort()), torch::arange(1000, torch::kInt64)));
  EXPECT_TRUE(torch::equal(order, epoch_order(5, 3, 1000)));
  EXPECT_FALSE(torch::equal(order, epoch_order(5, 4, 1000)));
  EXPECT_FALSE(torch::equal(order, epoch_order(6, 3, 1000)));
  EXPECT_EQ(epoch_order(1, 0, 0).numel(), 0);
  EXPECT_TRUE(torch::equal(epoch_order(1, 0, 1), torch::zeros({1}, torch::kInt64)));
  // Pinned (also computed by a Python transcription of the algorithm): a change of algorithm
  // would silently change the order a resumed run sees.
  EXPECT_TRUE(
      torch::equal(epoch_order(1, 0, 8), torch::tensor({3, 0, 7, 1, 4, 6, 2, 5}, torch::kInt64)))
      << epoch_order(1, 0, 8);
  // Uniform: each of the 6 orders of 3 items appears about 1/6 of the time over 3000 epochs
  // (expected 500, standard deviation 20.4; the bounds are 5 sigma).
  std::map<std::vector<int64_t>, int> counts;
  for (int64_t epoch = 0; epoch < 3000; ++epoch) {
    const torch::Tensor o = epoch_order(9, epoch, 3);
    ++counts[std::vector<int64_t>(o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + 3)];
  }
  EXPECT_EQ(counts.size(), 6u);
  for (const auto& [permutation, count] : counts) {
    EXPECT_GT(count, 398);
    EXPECT_LT(count, 602);
  }
  expect_error<InputError>([] { epoch_order(1, -1, 3); }, {"epoch"});
}

TEST(Transforms, PixelScalingAndReproducibleFlips) {
  EXPECT_TRUE(torch::equal(pixels_to_unit_range(torch::tensor({0, 255}, torch::kUInt8)),
                           torch::tensor({-1.0f, 1.0f})));
  const torch::Tensor indices = torch::arange(10000, torch::kInt64);
  const torch::Tensor mask = horizontal_flip_mask(4, 2, indices);
  EXPECT_TRUE(torch::equal(mask, horizontal_flip_mask(4, 2, indices)));
  EXPECT_FALSE(torch::equal(mask, horizontal_flip_mask(4, 3, indices)));
  EXPECT_FALSE(torch::equal(mask, horizontal_flip_mask(5, 2, indices)));
  const double fraction = mask.to(torch::kFloat64).mean().item<double>();
  EXPECT_NEAR(fraction, 0.5, 0.025);  // 5 standard deviations of a fair coin over 10000 samples
  // A sample's coin does not depend on the batch it is in.
  const torch::Tensor some = torch::tensor({9, 1, 5}, torch::kInt64);
  EXPECT_TRUE(torch::equal(horizontal_flip_mask(4, 2, some), mask.index_select(0, some)));

  const torch::Tensor images = torch::arange(8 * 2 * 2 * 3, torch::kFloat32).view({8, 2, 2, 3});
  const torch::Tensor before = images.clone();
  const torch::Tensor batch_indices = torch::arange(8, torch::kInt64);
  const torch::Tensor flipped = random_horizontal_flip(images, 4, 2, batch_indices);
  EXPECT_TRUE(torch::equal(images, before));
  for (int64_t b = 0; b < 8; ++b) {
    const bool flip = mask[b].item<bool>();
    EXPECT_TRUE(torch::equal(flipped[b], flip ? images[b].flip({2}) : images[b])) << b;
  }
}

// ---- batch loader --------------------------------------------------------------------------

// n tiny images whose pixels identify them, labels i % 3.
Dataset numbered_dataset(int64_t n) {
  Dataset data;
  data.name = "numbered";
  data.images = (torch::arange(n * 2 * 3, torch::kFloat32).view({n, 1, 2, 3}) / (n * 6.0f)) * 2 - 1;
  data.labels = torch::arange(n, torch::kInt64).remainder(3);
  data.num_classes = 3;
  return data;
}

std::vector<Batch> take(BatchLoader& loader, int count) {
  std::vector<Batch> batches;
  for (int i = 0; i < count; ++i) batches.push_back(loader.next());
  return batches;
}

void expect_same_batch(const Batch& a, const Batch& b) {
  EXPECT_TRUE(torch::equal(a.sample_indices, b.sample_indices));
  EXPECT_TRUE(torch::equal(a.images, b.images));
  EXPECT_TRUE(torch::equal(a.labels, b.labels));
  EXPECT_EQ(a.position, b.position);
  EXPECT_EQ(a.next_position, b.next_position);
}

TEST(BatchLoader, EverySampleOncePerEpochWithAndWithoutDropLast) {
  const Dataset data = numbered_dataset(10);
  BatchLoaderOptions options;
  options.batch_size = 3;
  options.seed = 8;
  options.drop_last = false;
  BatchLoader keep_last(data, options);
  for (int64_t epoch = 0; epoch < 3; ++epoch) {
    std::vector<torch::Tensor> seen;
    for (int64_t offset : {0, 3, 6, 9}) {
      const Batch batch = keep_last.next();
      EXPECT_EQ(batch.position, (LoaderPosition{epoch, offset}));
      EXPECT_EQ(batch.sample_indices.size(0), offset == 9 ? 1 : 3);
      EXPECT_TRUE(
          torch::equal(batch.sample_indices,
                       epoch_order(8, epoch, 10).narrow(0, offset, batch.sample_indices.size(0))));
      EXPECT_TRUE(torch::equal(batch.images, data.images.index_select(0, batch.sample_indices)));
      EXPECT_TRUE(torch::equal(batch.labels, batch.sample_indices.remainder(3)));
      seen.push_back(batch.sample_indices);
    }
    EXPECT_TRUE(
        torch::equal(std::get<0>(torch::cat(seen).sort()), torch::arange(10, torch::kInt64)));
  }
  options.drop_last = true;
  BatchLoader drop_last(data, options);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    std::set<int64_t> seen;
    for (int i = 0; i < 3; ++i) {
      const Batch batch = drop_last.next();
      EXPECT_EQ(batch.sample_indices.size(0), 3);
      const LoaderPosition expected_next =
          i == 2 ? LoaderPosition{epoch + 1, 0} : LoaderPosition{epoch, 3 * i + 3};
      EXPECT_EQ(batch.next_position, expected_next);
      for (int64_t k = 0; k < 3; ++k) seen.insert(batch.sample_indices[k].item<int64_t>());
    }
    EXPECT_EQ(seen.size(), 9u);
  }
}

TEST(BatchLoader, OrderIsDeterministicForASeedAndResumesExactly) {
  const Dataset data = numbered_dataset(23);
  BatchLoaderOptions options;
  options.batch_size = 4;
  options.seed = 77;
  options.random_flip = true;
  BatchLoader first(data, options), second(data, options);
  const std::vector<Batch> run = take(first, 14), again = take(second, 14);  // about 2.5 epochs
  for (size_t i = 0; i < run.size(); ++i) expect_same_batch(run[i], again[i]);
  // Resuming from any batch's next_position continues the uninterrupted run.
  for (size_t stop : {size_t{2}, size_t{4}, size_t{9}}) {
    BatchLoaderOptions resumed_options = options;
    resumed_options.start = run[stop].next_position;
    BatchLoader resumed(data, resumed_options);
    for (size_t i = stop + 1; i < run.size(); ++i) expect_same_batch(resumed.next(), run[i]);
    EXPECT_TRUE(torch::equal(batch_at(data, options, run[stop].next_position).images,
                             run[stop + 1].images));
  }
  options.seed = 78;
  BatchLoader other_seed(data, options);
  EXPECT_FALSE(torch::equal(other_seed.next().sample_indices, run[0].sample_indices));
}

TEST(BatchLoader, FlipsFollowTheSampleCoins) {
  const Dataset data = numbered_dataset(16);
  BatchLoaderOptions options;
  options.batch_size = 16;
  options.seed = 3;
  options.random_flip = true;
  BatchLoader loader(data, options);
  for (int64_t epoch = 0; epoch < 2; ++epoch) {
    const Batch batch = loader.next();
    const torch::Tensor mask = horizontal_flip_mask(3, epoch, batch.sample_indices);
    for (int64_t b = 0; b < 16; ++b) {
      const torch::Tensor original = data.images[batch.sample_indices[b].item<int64_t>()];
      EXPECT_TRUE(
          torch::equal(batch.images[b], mask[b].item<bool>() ? original.flip({2}) : original));
    }
  }
}

TEST(BatchLoader, WorkerExceptionsAreRethrownInNext) {
  std::atomic<int> prepared{0};
  BatchLoaderOptions options;
  options.batch_size = 2;
  options.transform = [&prepared](Batch&) {
    if (++prepared == 3) throw NumericError("batch 3 went bad");
  };
  BatchLoader loader(numbered_dataset(10), options);
  EXPECT_EQ(loader.next().position, (LoaderPosition{0, 0}));
  EXPECT_EQ(loader.next().position, (LoaderPosition{0, 2}));
  expect_error<NumericError>([&] { loader.next(); }, {"batch 3 went bad"});
  expect_error<NumericError>([&] { loader.next(); }, {"batch 3 went bad"});
}

TEST(BatchLoader, ShutsDownCleanlyAndChecksOptions) {
  {
    BatchLoaderOptions options;
    options.batch_size = 2;
    BatchLoader idle(numbered_dataset(10),
                     options);  // never asked: the worker blocks on a full queue
    options.prefetch = 1;
    BatchLoader busy(numbered_dataset(10), options);
    busy.next();
  }  // both destructors return
  const Dataset data = numbered_dataset(5);
  BatchLoaderOptions options;
  options.batch_size = 0;
  expect_error<InputError>([&] { BatchLoader(data, options); }, {"batch size", "0"});
  options.batch_size = 6;
  expect_error<InputError>([&] { BatchLoader(data, options); },
                           {"batch size 6", "5 samples", "drop_last"});
  options.batch_size = 2;
  options.start = {0, 6};
  expect_error<InputError>([&] { BatchLoader(data, options); },
                           {"start position", "offset 6", "[0, 5]"});
  options.start = {};
  options.random_flip = true;
  const Dataset points = mixture_dataset(GaussianMixture::demo(), 20, 1);
  expect_error<InputError>([&] { BatchLoader(points, options); }, {"random flip", "vectors"});
  options.random_flip = false;
  BatchLoader vectors(points, options);
  const Batch batch = vectors.next();
  EXPECT_EQ(batch.images.sizes(), (torch::IntArrayRef{2, 2}));
  EXPECT_TRUE(torch::equal(batch.images, points.images.index_select(0, batch.sample_indices)));
}

}  // namespace
