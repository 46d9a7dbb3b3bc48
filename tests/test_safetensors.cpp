// safetensors: bit-exact round trips for every dtype, the byte layout of the format, files
// written by hand, and one error (naming file and tensor) for each way a file can be bad.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/safetensors.hpp"
#include "support/test_files.hpp"

namespace fs = std::filesystem;
using namespace guidiff;
using guidiff::testing::expect_error;
using guidiff::testing::same_bytes;

namespace {

class SafetensorsTest : public guidiff::testing::TempDirTest {
 protected:
};

// A tensor of `type` whose bytes are random (so float payloads include NaNs, denormals and
// infinities); booleans stay 0/1.
torch::Tensor random_bits(torch::ScalarType type, std::vector<int64_t> shape) {
  int64_t numel = 1;
  for (const auto s : shape) numel *= s;
  if (type == torch::kBool) return torch::randint(0, 2, shape, torch::kUInt8).to(torch::kBool);
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(type));
  return torch::randint(0, 256, {bytes}, torch::kUInt8).view(type).reshape(shape);
}

// The 8-byte little-endian length prefix followed by `header` and `data`.
std::string file_bytes(const std::string& header, const std::string& data) {
  std::string out;
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string float_bytes(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

const std::vector<std::pair<torch::ScalarType, std::string>> kAllDtypes = {
    {torch::kFloat64, "F64"},   {torch::kFloat32, "F32"}, {torch::kFloat16, "F16"},
    {torch::kBFloat16, "BF16"}, {torch::kInt64, "I64"},   {torch::kInt32, "I32"},
    {torch::kInt16, "I16"},     {torch::kInt8, "I8"},     {torch::kUInt8, "U8"},
    {torch::kBool, "BOOL"}};

// ---- round trips ---------------------------------------------------------------------

TEST_F(SafetensorsTest, RoundTripIsBitExactForEveryDtypeAndShape) {
  torch::manual_seed(3);
  NamedTensors tensors;
  for (const auto& [type, name] : kAllDtypes) {
    tensors.emplace_back(name + ".matrix", random_bits(type, {3, 5}));
    tensors.emplace_back(name + ".scalar", random_bits(type, {}));
    tensors.emplace_back(name + ".empty", random_bits(type, {0, 4}));
  }
  tensors.emplace_back("transposed", torch::randn({4, 3}).t());  // non-contiguous input
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"empty", ""}, {"unicode", "λ = log SNR ✓"}, {"json", "{\"a\": [1, 2]}"}};
  save_safetensors(path("w.safetensors"), tensors, metadata);
  // The file, written tensor by tensor from their memory, holds what encode_safetensors builds.
  EXPECT_EQ(read_file_bytes(path("w.safetensors")), encode_safetensors(tensors, metadata));

  const auto loaded = load_safetensors(path("w.safetensors"));
  EXPECT_EQ(loaded.metadata, metadata);
  ASSERT_EQ(loaded.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ(loaded.tensors[i].first, tensors[i].first) << "order must be preserved";
    EXPECT_TRUE(same_bytes(loaded.tensors[i].second, tensors[i].second)) << tensors[i].first;
    EXPECT_EQ(loaded.tensors[i].second.sizes(), tensors[i].second.sizes()) << tensors[i].first;
  }
  ASSERT_NE(loaded.find("F16.matrix"), nullptr);
  EXPECT_TRUE(same_bytes(*loaded.find("F16.matrix"), tensors[6].second));
  EXPECT_EQ(loaded.find("absent"), nullptr);
}

TEST_F(SafetensorsTest, NoMetadataAndNoTensorsRoundTrip) {
  save_safetensors(path("empty.safetensors"), {});
  const auto loaded = load_safetensors(path("empty.safetensors"));
  EXPECT_TRUE(loaded.tensors.empty());
  EXPECT_TRUE(loaded.metadata.empty());
}

// ---- the byte layout -----------------------------------------------------------------

TEST_F(SafetensorsTest, WrittenBytesFollowTheFormat) {
  const auto a = torch::tensor({1.0f, 2.0f, 3.0f});
  const auto b = torch::tensor({int64_t{7}, int64_t{-8}}).reshape({1, 2});
  const std::string bytes = encode_safetensors({{"a", a}, {"b", b}}, {{"k", "v"}});

  uint64_t n = 0;
  for (int i = 0; i < 8; ++i)
    n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u) << "data should start 8-byte aligned";
  ASSERT_EQ(bytes.size(), 8 + n + 12 + 16);
  const auto header = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(header.at("__metadata__"), (nlohmann::json{{"k", "v"}}));
  EXPECT_EQ(header.at("a").at("dtype"), "F32");
  EXPECT_EQ(header.at("a").at("shape"), (nlohmann::json{3}));
  EXPECT_EQ(header.at("a").at("data_offsets"), (nlohmann::json{0, 12}));
  EXPECT_EQ(header.at("b").at("dtype"), "I64");
  EXPECT_EQ(header.at("b").at("shape"), (nlohmann::json{1, 2}));
  EXPECT_EQ(header.at("b").at("data_offsets"), (nlohmann::json{12, 28}));
  EXPECT_EQ(bytes.substr(8 + n, 12), float_bytes({1.0f, 2.0f, 3.0f}));
  int64_t second = 0;
  std::memcpy(&second, bytes.data() + 8 + n + 20, 8);
  EXPECT_EQ(second, -8);
}

TEST_F(SafetensorsTest, ReadsAHandWrittenFileInDataOrder) {
  // Header keys out of data order, a space-padded header, and an empty tensor.
  const std::string header =
      R"({"__metadata__":{"who":"hand"},"second":{"dtype":"I32","shape":[2],"data_offsets":[8,16]},)"
      R"("first":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},)"
      R"("none":{"dtype":"F64","shape":[0],"data_offsets":[16,16]}}    )";
  std::vector<int32_t> ints = {-3, 1 << 30};
  const std::string data =
      float_bytes({0.5f, -2.25f}) + std::string(reinterpret_cast<const char*>(ints.data()), 8);
  write_raw("hand.safetensors", file_bytes(header, data));

  const auto loaded = load_safetensors(path("hand.safetensors"));
  ASSERT_EQ(loaded.tensors.size(), 3u);
  EXPECT_EQ(loaded.tensors[0].first, "first");
  EXPECT_EQ(loaded.tensors[1].first, "second");
  EXPECT_EQ(loaded.tensors[2].first, "none");
  EXPECT_TRUE(
      torch::equal(loaded.tensors[0].second, torch::tensor({0.5f, -2.25f}).reshape({2, 1})));
  EXPECT_TRUE(torch::equal(loaded.tensors[1].second, torch::tensor({-3, 1 << 30}, torch::kInt32)));
  EXPECT_EQ(loaded.tensors[2].second.scalar_type(), torch::kFloat64);
  EXPECT_EQ(loaded.tensors[2].second.numel(), 0);
  EXPECT_EQ(loaded.metadata.at("who"), "hand");
}

// ---- bad files -----------------------------------------------------------------------

TEST_F(SafetensorsTest, MissingFileIsNamed) {
  expect_error<FileError>([&] { load_safetensors(path("nope.safetensors")); },
                          {"nope.safetensors"});
}

TEST_F(SafetensorsTest, TruncatedFilesAreReported) {
  save_safetensors(path("good.safetensors"), {{"weight", torch::ones({4, 4})}});
  const std::string good = read_file_bytes(path("good.safetensors"));

  write_raw("short.safetensors", good.substr(0, 5));
  expect_error<FileError>([&] { load_safetensors(path("short.safetensors")); },
                          {"short.safetensors", "truncated"});
  write_raw("header.safetensors", good.substr(0, 20));
  expect_error<FileError>([&] { load_safetensors(path("header.safetensors")); },
                          {"header.safetensors", "truncated header"});
  write_raw("data.safetensors", good.substr(0, good.size() - 4));
  expect_error<FileError>([&] { load_safetensors(path("data.safetensors")); },
                          {"data.safetensors", "'weight'", "run past the end"});
}

TEST_F(SafetensorsTest, BadHeadersNameTheTensorAtFault) {
  const std::string data = float_bytes({1, 2, 3, 4});
  const auto check = [&](const std::string& header, const std::vector<std::string>& fragments) {
    write_raw("bad.safetensors", file_bytes(header, data));
    auto expected = fragments;
    expected.insert(expected.begin(), "bad.safetensors");
    expect_error<FileError>([&] { load_safetensors(path("bad.safetensors")); }, expected);
  };
  check(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})", {"not valid JSON"});
  check(R"([1, 2])", {"not a JSON object"});
  check(R"({"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,16]}})",
        {"'w'", "unknown dtype 'F8_E4M3'"});
  check(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}})", {"'w'", "run past the end"});
  check(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}})",
        {"'w'", "end before they begin"});
  check(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", {"'w'", "needs 12 bytes"});
  check(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", {"'w'", "non-negative"});
  check(R"({"w":{"dtype":"F32","shape":[4]}})", {"'w'", "data_offsets"});
  check(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
        {"'a'", "'b'", "overlapping"});
  check(R"({"__metadata__":{"step":3}})", {"__metadata__", "'step'", "not a string"});
}

TEST_F(SafetensorsTest, ImplausibleHeaderLengthIsRejectedBeforeReading) {
  std::string bytes(8, '\0');
  bytes[7] = 0x7f;  // ~9e18 bytes
  write_raw("huge.safetensors", bytes + "{}");
  expect_error<FileError>([&] { load_safetensors(path("huge.safetensors")); },
                          {"huge.safetensors", "header length"});
}

TEST_F(SafetensorsTest, SaveRejectsBadNamesAndDtypes) {
  const auto t = torch::zeros({2});
  expect_error<InputError>(
      [&] {
        save_safetensors(path("x.safetensors"), {{"a", t}, {"a", t}});
      },
      {"'a'", "twice"});
  expect_error<InputError>(
      [&] {
        save_safetensors(path("x.safetensors"), {{"__metadata__", t}});
      },
      {"reserved"});
  expect_error<InputError>(
      [&] {
        save_safetensors(path("x.safetensors"), {{"z", torch::zeros({2}, torch::kComplexFloat)}});
      },
      {"x.safetensors", "'z'", "unsupported dtype"});
  EXPECT_FALSE(fs::exists(path("x.safetensors")));
  expect_error<FileError>(
      [&] {
        save_safetensors(path("no/such/dir/x.safetensors"), {{"a", t}});
      },
      {"x.safetensors"});
}

}  // namespace
