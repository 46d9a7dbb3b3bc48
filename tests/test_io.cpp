// File I/O: .npy round trips and numpy compatibility, atomic writes, PNG grids, scatter plots.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <vector>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-function"
#include <nlohmann/json.hpp>
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

#include "guidiff/core/text.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/bitmap_font.hpp"
#include "guidiff/io/checksum.hpp"
#include "guidiff/io/image.hpp"
#include "guidiff/io/npy.hpp"
#include "guidiff/io/plot.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using guidiff::testing::same_bytes;

namespace {

const std::string kData = GUIDIFF_TEST_DATA_DIR;

// A fresh directory per test, removed afterwards.
class IoTest : public guidiff::testing::TempDirTest {
 protected:
};

struct Decoded {
  int width = 0, height = 0, channels = 0;
  std::vector<unsigned char> pixels;
  unsigned char at(int x, int y, int c) const { return pixels[(y * width + x) * channels + c]; }
};

Decoded decode_png(const std::string& file) {
  Decoded image;
  unsigned char* data = stbi_load(file.c_str(), &image.width, &image.height, &image.channels, 0);
  if (data == nullptr) return image;
  image.pixels.assign(data, data + image.width * image.height * image.channels);
  stbi_image_free(data);
  return image;
}

// ---- checksums ----------------------------------------------------------------------------

TEST_F(IoTest, FileChecksumIsTheCrc32OfTheWholeFileReadInPieces) {
  // The standard check value of CRC-32/ISO-HDLC.
  EXPECT_EQ(crc32_of("123456789"), 0xCBF43926u);
  // 2.5 MiB crosses the 1 MiB read pieces; the streamed CRC equals the one of all the bytes.
  std::string bytes(size_t{5} << 19, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7919) >> 3);
  write_raw("big.bin", bytes);
  char expected[64];
  std::snprintf(expected, sizeof expected, "crc32 %08x, %zu bytes", crc32_of(bytes), bytes.size());
  EXPECT_EQ(file_checksum(path("big.bin")), expected);
  bytes[bytes.size() - 1] ^= 1;
  write_raw("big.bin", bytes);
  EXPECT_NE(file_checksum(path("big.bin")), expected);
  EXPECT_THROW(file_checksum(path("missing.bin")), FileError);
}

// ---- .npy ------------------------------------------------------------------------------

TEST_F(IoTest, NpyRoundTripIsBitExactForEveryDtype) {
  torch::manual_seed(7);
  const float nan_f = std::numeric_limits<float>::quiet_NaN();
  const double inf_d = std::numeric_limits<double>::infinity();
  const std::vector<torch::Tensor> tensors = {
      torch::tensor({1.5f, -0.0f, nan_f, 3e-40f, -1e30f}),                       // float32 specials
      torch::randn({2, 3, 4}, torch::kFloat32),
      torch::tensor({-inf_d, 0.1, 1e-310, 2.0}).reshape({2, 2}),                  // float64 specials
      torch::randint(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(), {7},
                     torch::kInt64),
      torch::randint(-1000000, 1000000, {3, 1, 2}, torch::kInt32),
      torch::randint(0, 256, {4, 4, 3}, torch::kUInt8),
      torch::zeros({0, 3}, torch::kFloat32),                                      // empty
      torch::tensor(42.0),                                                        // 0-d scalar
      torch::randn({3, 4}).t(),                                                   // non-contiguous
  };
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string file = path("t" + std::to_string(i) + ".npy");
    write_npy(file, tensors[i]);
    const torch::Tensor back = read_npy(file);
    EXPECT_TRUE(same_bytes(back, tensors[i])) << "tensor " << i << " " << tensors[i].scalar_type();
  }
}

TEST_F(IoTest, NpyReadsFilesWrittenByNumpy) {
  const torch::Tensor f64 = read_npy(kData + "/npy_float64_2x3.npy");
  EXPECT_TRUE(same_bytes(f64, torch::arange(6, torch::kFloat64).reshape({2, 3}) * 0.5));
  const torch::Tensor i32 = read_npy(kData + "/npy_int32_5.npy");
  EXPECT_TRUE(same_bytes(i32, torch::arange(-2, 3, torch::kInt32)));
  const torch::Tensor u8 = read_npy(kData + "/npy_uint8_2x2x2_v2.npy");  // format version 2.0
  EXPECT_TRUE(same_bytes(u8, torch::arange(8, torch::kUInt8).reshape({2, 2, 2})));
}

TEST_F(IoTest, NpyWritesExactlyWhatNumpyWrites) {
  // numpy.save of the same array, byte for byte (header padded to 64 bytes, version 1.0).
  EXPECT_EQ(encode_npy(torch::arange(6, torch::kFloat64).reshape({2, 3}) * 0.5),
            read_file_bytes(kData + "/npy_float64_2x3.npy"));
  EXPECT_EQ(encode_npy(torch::arange(-2, 3, torch::kInt32)), read_file_bytes(kData + "/npy_int32_5.npy"));
}

TEST_F(IoTest, NpyUsesVersion2WhenTheHeaderIsLong) {
  // 30000 dimensions of size 1 ("1, " each) make a header longer than version 1.0's
  // 65535-byte limit.
  std::vector<int64_t> shape(30000, 1);
  const torch::Tensor tensor = torch::full(shape, 2.5, torch::kFloat32);
  const std::string bytes = encode_npy(tensor);
  ASSERT_GT(bytes.size(), 8u);
  EXPECT_EQ(bytes[6], 2);  // major version
  const std::string file = path("long.npy");
  write_npy(file, tensor);
  EXPECT_TRUE(same_bytes(read_npy(file), tensor));
  EXPECT_EQ(read_file_bytes(file).find('\n') % 64, 63u);  // header ends on the 64-byte boundary
}

TEST_F(IoTest, NpyMissingFileIsAFileErrorNamingIt) {
  const std::string file = path("absent.npy");
  expect_error<FileError>([&] { read_npy(file); }, {file});
}

TEST_F(IoTest, NpyTruncatedDataIsAFileErrorNamingIt) {
  const std::string bytes = encode_npy(torch::arange(10, torch::kFloat32));
  write_raw("short.npy", bytes.substr(0, bytes.size() - 1));
  expect_error<FileError>([&] { read_npy(path("short.npy")); }, {path("short.npy"), "truncated"});
  write_raw("header.npy", bytes.substr(0, 20));  // cut inside the header
  expect_error<FileError>([&] { read_npy(path("header.npy")); }, {path("header.npy"), "truncated"});
}

TEST_F(IoTest, NpyBadMagicIsAFileErrorNamingIt) {
  write_raw("text.npy", "this is not numpy data at all");
  expect_error<FileError>([&] { read_npy(path("text.npy")); }, {path("text.npy"), "magic"});
  write_raw("empty.npy", "");
  expect_error<FileError>([&] { read_npy(path("empty.npy")); }, {path("empty.npy")});
}

TEST_F(IoTest, NpyMalformedHeaderIsAFileError) {
  std::string bytes = encode_npy(torch::arange(3, torch::kFloat32));
  const auto shape_at = bytes.find("(3,)");
  bytes.replace(shape_at, 4, "(x, )");
  bytes.erase(bytes.find("\n") - 1, 1);  // keep the declared header length
  write_raw("bad_header.npy", bytes);
  expect_error<FileError>([&] { read_npy(path("bad_header.npy")); }, {path("bad_header.npy"), "shape"});
}

TEST_F(IoTest, NpyUnsupportedLayoutsAreFileErrors) {
  expect_error<FileError>([&] { read_npy(kData + "/npy_float32_fortran.npy"); },
                          {"npy_float32_fortran.npy", "Fortran"});
  expect_error<FileError>([&] { read_npy(kData + "/npy_float32_bigendian.npy"); },
                          {"npy_float32_bigendian.npy", ">f4"});
  expect_error<FileError>([&] { read_npy(kData + "/npy_complex64.npy"); }, {"npy_complex64.npy", "<c8"});
}

TEST_F(IoTest, NpyRefusesToWriteUnsupportedDtypes) {
  const std::string file = path("half.npy");
  expect_error<InputError>([&] { write_npy(file, torch::ones({2}, torch::kFloat16)); }, {file, "Half"});
  EXPECT_FALSE(fs::exists(file));
}

// ---- atomic writes -----------------------------------------------------------------------

TEST_F(IoTest, AtomicWritesLeaveOnlyTheTarget) {
  write_file_atomically(path("a.bin"), "first");
  write_file_atomically(path("a.bin"), "second");  // replaces
  write_npy(path("b.npy"), torch::ones({3}));
  EXPECT_EQ(listing(), (std::set<std::string>{"a.bin", "b.npy"}));
  EXPECT_EQ(read_file_bytes(path("a.bin")), "second");
}

TEST_F(IoTest, FailedProducerKeepsTheOldFileAndLeavesNoTemporary) {
  write_file_atomically(path("keep.txt"), "old");
  EXPECT_THROW(write_file_atomically_via(path("keep.txt"),
                                         [](const std::string& temp) {
                                           std::ofstream(temp) << "partial";
                                           throw FileError("producer failed");
                                         }),
               FileError);
  EXPECT_EQ(read_file_bytes(path("keep.txt")), "old");
  EXPECT_EQ(listing(), std::set<std::string>{"keep.txt"});
}

// Files written in pieces: each piece lands in order, and a writer that fails part-way through
// the group's second file leaves both old files and no temporary.
TEST_F(IoTest, StreamedGroupWritesAppendInOrderAndAFailedWriterChangesNoFile) {
  const auto pieces = [](std::vector<std::string> parts) {
    return [parts](const AppendBytes& append) {
      for (const auto& part : parts) append(part.data(), part.size());
    };
  };
  write_files_atomically(std::vector<StreamedFile>{{path("a"), pieces({"he", "", "llo"})},
                                                   {path("b"), pieces({"wor", "ld"})}});
  EXPECT_EQ(read_file_bytes(path("a")), "hello");
  EXPECT_EQ(read_file_bytes(path("b")), "world");
  const auto failing = [](const AppendBytes& append) {
    append("partial", 7);
    throw FileError("writer failed");
  };
  EXPECT_THROW(write_files_atomically(
                   std::vector<StreamedFile>{{path("a"), pieces({"new a"})}, {path("b"), failing}}),
               FileError);
  EXPECT_EQ(read_file_bytes(path("a")), "hello");
  EXPECT_EQ(read_file_bytes(path("b")), "world");
  EXPECT_EQ(listing(), (std::set<std::string>{"a", "b"}));
}

TEST_F(IoTest, WritingIntoAMissingDirectoryIsAFileErrorNamingTheFile) {
  const std::string file = path("no/such/dir/out.npy");
  expect_error<FileError>([&] { write_npy(file, torch::ones({1})); }, {file});
}

// ---- PNG grids ---------------------------------------------------------------------------

TEST_F(IoTest, PngGridHasTheGridSizeAndPixelValues) {
  // 5 RGB images 3x4, nrow 2 -> 3 rows x 2 cols, padding 1: 3*(3+1)+1 = 13 by 2*(4+1)+1 = 11.
  torch::Tensor images = torch::empty({5, 3, 3, 4});
  for (int64_t i = 0; i < 5; ++i) images[i].fill_(-1.0 + 0.5 * i);  // -1, -0.5, 0, 0.5, 1
  images[4][0].fill_(-1.0);                                          // last image: cyan (0,255,255)
  const std::string file = path("grid.png");
  write_png_grid(file, images, {/*nrow=*/2, /*padding=*/1, /*pad_value=*/7});
  const Decoded png = decode_png(file);
  ASSERT_EQ(png.width, 11);
  ASSERT_EQ(png.height, 13);
  ASSERT_EQ(png.channels, 3);
  EXPECT_EQ(png.at(0, 0, 0), 7);  // padding
  // Image i's top-left pixel at x = 1 + (i % 2) * 5, y = 1 + (i / 2) * 4;
  // value = round((v + 1) * 127.5), half to even: -1 -> 0, -0.5 -> 64, 0 -> 128, 0.5 -> 191.
  const int expected[] = {0, 64, 128, 191};
  for (int i = 0; i < 4; ++i) {
    for (int c = 0; c < 3; ++c) EXPECT_EQ(png.at(1 + (i % 2) * 5, 1 + (i / 2) * 4, c), expected[i]) << i;
  }
  EXPECT_EQ(png.at(1, 9, 0), 0);
  EXPECT_EQ(png.at(4, 11, 1), 255);  // bottom-right pixel of the last image
  EXPECT_EQ(png.at(4, 11, 2), 255);
  EXPECT_EQ(png.at(6, 9, 0), 7);     // the empty cell beside it is padding
  EXPECT_EQ(listing(), std::set<std::string>{"grid.png"});
}

TEST_F(IoTest, PngGridOfGreyImagesIsGreyscale) {
  const torch::Tensor images = torch::linspace(-1, 1, 2 * 1 * 2 * 2).reshape({2, 1, 2, 2});
  const std::string file = path("grey.png");
  write_png_grid(file, images, {8, 0, 0});
  const Decoded png = decode_png(file);
  ASSERT_EQ(png.channels, 1);
  EXPECT_EQ(png.width, 4);
  EXPECT_EQ(png.height, 2);
  const torch::Tensor expected = ((images + 1) * 127.5).round().clamp(0, 255).to(torch::kUInt8);
  EXPECT_EQ(png.at(0, 0, 0), expected[0][0][0][0].item<uint8_t>());
  EXPECT_EQ(png.at(3, 1, 0), 255);
  EXPECT_EQ(png.at(2, 0, 0), expected[1][0][0][0].item<uint8_t>());
}

TEST_F(IoTest, UpscaledGridRepeatsEveryPixelAsABlock) {
  const torch::Tensor images = torch::linspace(-1, 1, 2 * 1 * 2 * 3).reshape({2, 1, 2, 3});
  ImageGridOptions options;
  options.nrow = 2;
  options.padding = 1;
  options.scale = 3;
  const torch::Tensor grid = image_grid_pixels(images, options);
  // 1 row x 2 columns of 6x9 blocks: (6 + 1) + 1 = 8 by 2 (9 + 1) + 1 = 21.
  ASSERT_EQ(grid.sizes(), (std::vector<int64_t>{8, 21, 1}));
  const torch::Tensor plain = image_grid_pixels(images, {2, 0, 0});  // [2, 6, 1]
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t y = 0; y < 6; ++y) {
      for (int64_t x = 0; x < 9; ++x) {
        EXPECT_EQ(grid[1 + y][1 + i * 10 + x][0].item<uint8_t>(), plain[y / 3][i * 3 + x / 3][0].item<uint8_t>());
      }
    }
  }
}

TEST_F(IoTest, BitmapFontDrawsItsGlyphsAndAQuestionMarkForTheRest) {
  const torch::Tensor i = render_text("I");
  ASSERT_EQ(i.sizes(), (std::vector<int64_t>{7, 5}));
  // 'I': a bar of three on the top and bottom rows, the middle column in between.
  EXPECT_TRUE(i[0].equal(torch::tensor({false, true, true, true, false})));
  for (int64_t row = 1; row < 6; ++row) EXPECT_EQ(i[row].sum().item<int64_t>(), 1) << row;
  EXPECT_TRUE(i[3][2].item<bool>());
  // Two characters: 5 + 1 + 5 columns, the spacing column empty; scale 2 doubles both sides.
  const torch::Tensor two = render_text("T-", 2);
  ASSERT_EQ(two.sizes(), (std::vector<int64_t>{14, 22}));
  EXPECT_FALSE(two.slice(1, 10, 12).any().item<bool>());
  EXPECT_TRUE(render_text("~").equal(render_text("?")));
  EXPECT_FALSE(has_glyph('~'));
  for (const char c : std::string("T-shirt/top Ankle boot s=3 w=0.5")) EXPECT_TRUE(has_glyph(c)) << c;
  EXPECT_EQ(render_text("").size(1), 0);
  EXPECT_THROW(render_text("x", 0), InputError);
}

TEST_F(IoTest, GridLabelsNameTheRowsAndColumnsInMargins) {
  const torch::Tensor images = torch::zeros({4, 1, 20, 20});  // mid grey, 128
  ImageGridOptions options;
  options.nrow = 2;
  options.padding = 2;
  options.label_scale = 1;
  options.row_labels = {"Coat", "Bag"};
  options.column_labels = {"s=0", "s=10"};
  const torch::Tensor grid = image_grid_pixels(images, options);
  // Left margin: the longest row label (4 glyphs: 23 px) + 2 gaps of 2 on each side = 27;
  // top margin: 7 + 4 = 11.
  ASSERT_EQ(grid.sizes(), (std::vector<int64_t>{11 + 2 * 22 + 2, 27 + 2 * 22 + 2, 1}));
  // The first image starts after both margins and the padding.
  EXPECT_EQ(grid[11 + 2][27 + 2][0].item<uint8_t>(), 128);
  // Row 0's label, white on the black margin, vertically centred on the row: y = 11 + 2 + (20 - 7) / 2.
  const torch::Tensor coat = grid.slice(0, 11 + 2 + 6, 11 + 2 + 6 + 7).slice(1, 2, 2 + 23).squeeze(2);
  EXPECT_TRUE(coat.eq(255).equal(render_text("Coat")));
  // Column 1's label, centred over it: x = 27 + 2 + 22 + (20 - 23) / 2 (integer division: -1).
  const torch::Tensor s10 = grid.slice(0, 2, 9).slice(1, 27 + 2 + 22 - 1, 27 + 2 + 22 - 1 + 23).squeeze(2);
  EXPECT_TRUE(s10.eq(255).equal(render_text("s=10")));
  // Black text on a white margin.
  options.pad_value = 255;
  EXPECT_TRUE(image_grid_pixels(images, options).slice(0, 19, 26).slice(1, 2, 25).squeeze(2).eq(0).equal(render_text("Coat")));
  options.row_labels = {"only one"};
  expect_error<InputError>([&] { image_grid_pixels(images, options); }, {"1 row labels", "2 rows"});
}

TEST_F(IoTest, ClassRowsPutEachClassOnItsOwnNamedRows) {
  // Image i is the constant i / 10, so every cell says which sample it holds.
  const torch::Tensor images = (torch::arange(6, torch::kFloat32) / 10).view({6, 1, 1, 1}).expand({6, 1, 2, 2});
  const torch::Tensor labels = torch::tensor({2, 0, 2, 0, 2, 5}, torch::kLong);
  const auto cell_values = [](const torch::Tensor& cells) {
    std::vector<float> values;
    for (int64_t i = 0; i < cells.size(0); ++i) values.push_back(cells[i][0][0][0].item<float>());
    return values;
  };
  // Classes in ascending order, each on whole rows of two; the short rows end in black (-1);
  // class 5 has no name among the three given.
  const ClassRows rows = arrange_by_class(images, labels, {"zero", "one", "two"}, 2);
  EXPECT_EQ(rows.row_labels, (std::vector<std::string>{"zero", "two", "", "class 5"}));
  EXPECT_EQ(cell_values(rows.images), (std::vector<float>{0.1f, 0.3f, 0.0f, 0.2f, 0.4f, -1.0f, 0.5f, -1.0f}));
  EXPECT_EQ(rows.images.sizes(), (std::vector<int64_t>{8, 1, 2, 2}));
  // One row per class at most: class 2's third sample is left out.
  const ClassRows first = arrange_by_class(images, labels, {}, 2, 1);
  EXPECT_EQ(first.row_labels, (std::vector<std::string>{"class 0", "class 2", "class 5"}));
  EXPECT_EQ(cell_values(first.images), (std::vector<float>{0.1f, 0.3f, 0.0f, 0.2f, 0.5f, -1.0f}));
  // The rows fit image_grid_pixels with nrow = columns.
  ImageGridOptions options;
  options.nrow = 2;
  options.row_labels = rows.row_labels;
  EXPECT_EQ(image_grid_pixels(rows.images, options).size(0), 4 * (2 + 2) + 2);
  expect_error<InputError>([&] { arrange_by_class(images, labels.slice(0, 0, 5), {}, 2); }, {"one label per image", "6"});
  expect_error<InputError>([&] { arrange_by_class(images, labels - 1, {}, 2); }, {"negative"});
  expect_error<InputError>([&] { arrange_by_class(images, labels, {}, 0); }, {"columns"});
  expect_error<InputError>([&] { arrange_by_class(images.slice(0, 0, 0), labels.slice(0, 0, 0), {}, 2); }, {"N >= 1"});
}

TEST_F(IoTest, PngGridRejectsBadInput) {
  EXPECT_THROW(write_png_grid(path("x.png"), torch::zeros({1, 2, 4, 4})), InputError);  // 2 channels
  EXPECT_THROW(write_png_grid(path("x.png"), torch::zeros({3, 4, 4})), InputError);     // not NCHW
  torch::Tensor bad = torch::zeros({1, 1, 2, 2});
  bad[0][0][1][1] = std::nan("");
  EXPECT_THROW(write_png_grid(path("x.png"), bad), NumericError);
  EXPECT_TRUE(listing().empty());
}

// ---- scatter plots -------------------------------------------------------------------------

TEST_F(IoTest, ScatterPlotDrawsPanelsSideBySide) {
  // Panel 1: class 1 only (orange); panel 2: class 0 only (blue). Big points so that their
  // centres are drawn in the exact colour.
  const torch::Tensor left = torch::tensor({{0.0, 0.0}, {0.2, 0.1}, {-0.3, 0.4}});
  const std::vector<ScatterPanel> panels = {
      {"orange", left, torch::tensor({1, 1, 1})},
      {"blue", -left, torch::tensor({0, 0, 0})},
  };
  ScatterPlotOptions options;
  options.panel_size = 200;
  options.point_size = 3.0;
  const std::string file = path("scatter.png");
  write_scatter_plot(file, panels, options);
  const Decoded png = decode_png(file);
  ASSERT_EQ(png.width, 400);
  ASSERT_EQ(png.height, 200);
  auto count_colour = [&](int x0, int x1, int r, int g, int b) {
    int count = 0;
    for (int y = 0; y < png.height; ++y) {
      for (int x = x0; x < x1; ++x) {
        if (png.at(x, y, 0) == r && png.at(x, y, 1) == g && png.at(x, y, 2) == b) ++count;
      }
    }
    return count;
  };
  EXPECT_GT(count_colour(0, 200, 0xff, 0x7f, 0x0e), 0);    // orange on the left
  EXPECT_EQ(count_colour(200, 400, 0xff, 0x7f, 0x0e), 0);
  EXPECT_GT(count_colour(200, 400, 0x1f, 0x77, 0xb4), 0);  // blue on the right
  EXPECT_EQ(count_colour(0, 200, 0x1f, 0x77, 0xb4), 0);
  EXPECT_EQ(listing(), std::set<std::string>{"scatter.png"});
}

TEST_F(IoTest, ScatterPlotWithoutGnuplotIsAFileError) {
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path ? old_path : "";
  setenv("PATH", "/nonexistent-guidiff-test", 1);
  const std::string file = path("scatter.png");
  try {
    write_scatter_plot(file, {{"p", torch::zeros({2, 2}), {}}});
    ADD_FAILURE() << "expected FileError";
  } catch (const FileError& error) {
    const std::string message = error.what();
    EXPECT_NE(message.find("gnuplot"), std::string::npos) << message;
    EXPECT_NE(message.find(file), std::string::npos) << message;
  }
  setenv("PATH", saved.c_str(), 1);
  EXPECT_TRUE(listing().empty());
}

TEST_F(IoTest, ScatterPlotRejectsBadPanels) {
  EXPECT_THROW(write_scatter_plot(path("s.png"), {{"3d", torch::zeros({4, 3}), {}}}), InputError);
  EXPECT_THROW(write_scatter_plot(path("s.png"), {{"labels", torch::zeros({4, 2}), torch::zeros({3}, torch::kLong)}}),
               InputError);
  EXPECT_THROW(write_scatter_plot(path("s.png"), {{"nan", torch::full({2, 2}, NAN), {}}}), NumericError);
  EXPECT_TRUE(listing().empty());
}

}  // namespace

// Untrusted text quoted in an error stays on one line and short (fuzz findings: a .npy header
// key and a PNG decoder's reason with raw newlines, a 1 KB JSON "last read").
TEST(ErrorText, PrintableExcerptEscapesUnprintableBytesAndTruncates) {
  EXPECT_EQ(guidiff::printable_excerpt(std::string("a\nb\x01\xff", 5), 10), "a\\x0ab\\x01\\xff");
  EXPECT_EQ(guidiff::printable_excerpt("abcdef", 3), "abc...");
  EXPECT_EQ(guidiff::printable_excerpt("abc", 3), "abc");
  EXPECT_EQ(guidiff::printable_excerpt(std::string(1000, 'x')).size(), 203u);  // 200 + "..."
}

// nlohmann's message names the library ("[json.exception.parse_error.101] ") and quotes what it
// last read, raw: a corrupt config's non-ASCII bytes and up to its whole length.
TEST(ErrorText, JsonParseErrorsLoseTheLibraryTagAndQuoteTheInputPrintably) {
  const auto parse_error_text = [](const std::string& corrupt) {
    try {
      (void)nlohmann::json::parse(corrupt);
    } catch (const nlohmann::json::exception& error) {
      EXPECT_EQ(std::string(error.what()).rfind("[json.exception.", 0), 0u) << error.what();
      return guidiff::json_error_text(error);
    }
    ADD_FAILURE() << "the corrupt text parsed";
    return std::string();
  };
  const auto non_ascii = parse_error_text("{\"a\": \"\xff\"}");
  EXPECT_EQ(non_ascii.rfind("parse error", 0), 0u) << non_ascii;
  EXPECT_NE(non_ascii.find("\\xff"), std::string::npos) << non_ascii;
  for (const char byte : non_ascii) EXPECT_TRUE(byte >= 0x20 && byte < 0x7f) << non_ascii;

  const auto long_input = parse_error_text("{\"a\": \"" + std::string(1000, 'x') + "\xff\"}");
  EXPECT_EQ(long_input.rfind("parse error", 0), 0u) << long_input;
  EXPECT_EQ(long_input.size(), 163u) << long_input;  // 160 bytes + "..."

  // Any other exception's text is only made printable.
  EXPECT_EQ(guidiff::json_error_text(std::runtime_error("short\tone")), "short\\x09one");
}
