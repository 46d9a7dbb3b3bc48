// The `.pt` state-dict reader: files written by torch.save in its zip and its legacy format
// (tests/data/guided_diffusion/pt, made by tests/fixtures/make_guided_diffusion_fixtures.py),
// storages saved on "cuda:0" mapped to the CPU, and untrusted input: hand-made bad files and a
// mutation loop over good ones, each ending in a one-line FileError and never a crash.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <random>
#include <string>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"
#include "guidiff/io/pt_file.hpp"
#include "guidiff/io/state_dict_pickle.hpp"
#include "support/test_files.hpp"

using namespace guidiff;
using namespace std::string_literals;  // pickles hold NUL bytes
using guidiff::testing::expect_error;

namespace {

std::string pt_path(const std::string& name) {
  return std::string(GUIDIFF_TEST_DATA_DIR) + "/guided_diffusion/pt/" + name;
}

// The values small.pt holds (the fixture script's `state`).
void expect_small_state(const std::string& file) {
  const PtStateDict dict(file);
  std::vector<std::string> names;
  for (const auto& info : dict.tensors()) names.push_back(info.name);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "half", "row", "transposed", "empty", "scalar"}));
  const auto base = torch::arange(12, torch::kFloat32).reshape({3, 4}) / 8;
  EXPECT_TRUE(torch::equal(dict.read(*dict.find("weight")), base));
  const auto half = dict.read(*dict.find("half"));
  EXPECT_EQ(half.scalar_type(), torch::kFloat16);
  EXPECT_TRUE(torch::equal(half.to(torch::kFloat32), torch::tensor({0.5f, -1.25f, 3.0f})));
  // A view sharing "weight"'s storage at an offset, and a transposed one.
  const auto* row = dict.find("row");
  EXPECT_EQ(row->storage_offset, 4);
  EXPECT_EQ(row->storage_key, dict.find("weight")->storage_key);
  EXPECT_TRUE(torch::equal(dict.read(*row), base[1]));
  const auto transposed = dict.read(*dict.find("transposed"));
  EXPECT_TRUE(transposed.is_contiguous());
  EXPECT_TRUE(torch::equal(transposed, base.t()));
  EXPECT_EQ(dict.read(*dict.find("empty")).sizes(), (std::vector<int64_t>{0, 3}));
  const auto scalar = dict.read(*dict.find("scalar"));
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.item<double>(), 2.5);
  // Storages counted once: weight's 12 floats, half's 3 halves, scalar's double.
  EXPECT_EQ(dict.storage_bytes(), 12 * 4 + 3 * 2 + 8);
}

}  // namespace

TEST(PtFile, ReadsEveryConstructOfATorchSaveStateDict) { expect_small_state(pt_path("small.pt")); }

// pytorch-fid's Inception weights are saved in the format torch.save wrote before 1.6.
TEST(PtFile, ReadsTheLegacyFormatWithTheSameMeaning) {
  const std::string bytes = read_file_bytes(pt_path("legacy_small.pt"));
  ASSERT_EQ(bytes.compare(0, 4, "\x80\x02\x8a\x0a"), 0);  // a pickled magic number, not a zip
  expect_small_state(pt_path("legacy_small.pt"));
  EXPECT_NE(read_file_bytes(pt_path("legacy_small_cuda.pt")).find("cuda:0"), std::string::npos);
  expect_small_state(pt_path("legacy_small_cuda.pt"));
  const auto tensors = load_pt_state_dict(pt_path("legacy_plain_dict.pt"));
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors[0].first, "only");
  EXPECT_TRUE(torch::equal(tensors[0].second, torch::ones({2})));
}

TEST(PtFile, ReadsALegacyPickleLongerThanTheFirstRead) {
  // 500 entries make a state dict pickle of about 90 KB: the head is read again, longer.
  const auto tensors = load_pt_state_dict(pt_path("legacy_long_pickle.pt"));
  ASSERT_EQ(tensors.size(), 500u);
  for (const int i : {0, 123, 499}) {
    char name[96];
    std::snprintf(name, sizeof name, "block.%04d.a.name.long.enough.that.the.pickle.needs.more.than.one.read", i);
    EXPECT_EQ(tensors[i].first, name);
    EXPECT_EQ(tensors[i].second.item<float>(), static_cast<float>(i));
  }
}

TEST(PtFile, MapsCudaStoragesToTheCpu) {
  // The released checkpoints' storages say "cuda:0"; torch.load without map_location fails
  // on a CPU machine, guidiff maps them as map_location="cpu" does.
  const std::string bytes = read_file_bytes(pt_path("small_cuda.pt"));
  EXPECT_NE(bytes.find("cuda:0"), std::string::npos);
  expect_small_state(pt_path("small_cuda.pt"));
}

TEST(PtFile, ReadsSingleEntryDictsPlainDictsAndHandWrittenArchives) {
  for (const char* name : {"single.pt", "plain_dict.pt"}) {
    const auto tensors = load_pt_state_dict(pt_path(name));
    ASSERT_EQ(tensors.size(), 1u) << name;
    EXPECT_EQ(tensors[0].first, "only");
    EXPECT_TRUE(torch::equal(tensors[0].second, torch::ones({2})));
  }
  const auto handmade = load_pt_state_dict(pt_path("handmade.pt"));
  ASSERT_EQ(handmade.size(), 1u);
  EXPECT_TRUE(torch::equal(handmade[0].second, torch::arange(6, torch::kFloat32).reshape({2, 3})));
}

TEST(PtFile, BadFilesGiveOneLineErrorsNamingTheProblem) {
  const auto bad = [](const std::string& name, std::vector<std::string> fragments) {
    SCOPED_TRACE(name);
    fragments.insert(fragments.begin(), name);
    expect_error<FileError>([&] { load_pt_state_dict(pt_path(name)); }, fragments);
  };
  bad("missing.pt", {"cannot open"});
  bad("bad_not_zip.pt", {"not a torch.save file", "neither a zip archive nor the legacy format"});
  bad("bad_legacy_protocol.pt", {"pickle protocol 4"});
  bad("bad_legacy_truncated_data.pt", {"truncated: storage '", "but the file has", "interrupted download"});
  bad("bad_legacy_truncated_pickle.pt", {"truncated", "the state dict pickle byte"});
  bad("bad_legacy_trailing.pt", {"5 bytes follow the last storage's data"});
  bad("bad_legacy_count.pt", {"elements but the pickle says"});
  bad("bad_legacy_big_endian.pt", {"big-endian"});
  bad("bad_legacy_unused_key.pt", {"names '999', which no tensor uses"});
  bad("bad_legacy_missing_key.pt", {"is used by a tensor but has no data"});
  bad("bad_truncated.pt", {"is truncated", "no end-of-central-directory record"});
  bad("bad_list.pt", {"data.pkl byte", "opcode"});
  bad("bad_tensor.pt", {"a tensor, not a dict of tensors"});
  bad("bad_int_value.pt", {"key 'step'", "not a tensor"});
  bad("bad_nested.pt", {"not a tensor"});
  // It once said "a BUILD result cannot be used as a dict value".
  bad("bad_nested_state_dict.pt",
      {"a state dict nested in a dict", "torch.save(model.state_dict(), path)"});
  bad("bad_numpy_global.pt", {"global 'numpy."});
  bad("bad_protocol.pt", {"protocol 4"});
  bad("bad_view_outside_storage.pt", {"outside its storage"});
  bad("bad_missing_record.pt", {"data/0 is missing"});
  bad("bad_record_size.pt", {"has 16 bytes but the pickle says 24"});
  bad("bad_location.pt", {"location 'xla:1'"});
}

class PtFileTemp : public guidiff::testing::TempDirTest {};

// A fuzz finding: libtorch's archive reader allocates a record's declared size before reading
// it, so 528 bytes could ask for 4 GiB. small.pt with its data.pkl's central-directory sizes
// raised past the file's is refused, naming the record, before libtorch sees it.
TEST_F(PtFileTemp, ARecordDeclaringMoreThanTheFileHoldsIsRefusedBeforeLibtorchReadsIt) {
  std::string bytes = read_file_bytes(pt_path("small.pt"));
  const size_t name_at = bytes.rfind("/data.pkl");  // the central directory comes after the data
  ASSERT_NE(name_at, std::string::npos);
  const size_t entry = bytes.rfind("PK\x01\x02", name_at);
  ASSERT_NE(entry, std::string::npos);
  for (const size_t field : {entry + 20, entry + 24}) {  // compressed and uncompressed sizes
    for (int i = 0; i < 4; ++i) bytes[field + i] = static_cast<char>(0xEF);  // 0xEFEFEFEF, about 4 GB
  }
  write_raw("huge_record.pt", bytes);
  expect_error<FileError>([&] { load_pt_state_dict(path("huge_record.pt")); },
                          {"huge_record.pt", "not a valid torch.save archive", "data.pkl'", "declares 4025479151 bytes"});
}

TEST(PtFile, NormalisedPickleKeepsPlainBytesAndRewritesOrderedDicts) {
  // An OrderedDict() call (GLOBAL collections.OrderedDict, EMPTY_TUPLE, REDUCE) becomes
  // EMPTY_DICT; BUILD at the top becomes TUPLE2.
  const std::string pickle = "\x80\x02"s + "ccollections\nOrderedDict\nq\x00)Rq\x01"s + "}q\x02"s + "b.";
  const auto normalised = normalise_state_dict_pickle(pickle, "test");
  EXPECT_EQ(normalised.bytes, "\x80\x02"s + "}q\x01"s + "}q\x02"s + "\x86"s + ".");
  EXPECT_TRUE(normalised.top_level_is_built_tuple);
  // Malformed programs are refused before libtorch sees them.
  const auto refused = [](const std::string& bytes, const std::string& fragment) {
    expect_error<FileError>([&] { normalise_state_dict_pickle(bytes, "p"); }, {"p: data.pkl byte", fragment});
  };
  refused("\x80\x02"s + "t.", "needs a MARK");
  refused("\x80\x02"s + "\x85.", "fewer values");
  refused("\x80\x02"s + "}h\x05.", "never stored");
  refused("\x80\x02"s + "}r\xff\xff\xff\x7f.", "skips ahead");
  refused("\x80\x02"s + "X\xff\xff\xff\x7f", "a string of");
  refused("\x80\x02"s + "}(X\x01\x00\x00\x00ku."s, "odd number");
  refused("\x80\x02"s + "}", "truncated");
  // A pickle that ends early is a PickleTruncated, so a reader of a file's head can read more.
  EXPECT_THROW(normalise_state_dict_pickle("\x80\x02"s + "}", "p"), PickleTruncated);
  EXPECT_THROW(normalise_state_dict_pickle("\x80\x02"s + "X\x05\x00\x00\x00"s + "ab", "p"), PickleTruncated);
  refused("\x80\x02"s + "}.junk", "after STOP");
  refused("\x80\x02"s + "}}.", "2 values on the stack");
  std::string deep = "\x80\x02";
  for (int i = 0; i < 70; ++i) deep += "(";  // more than 4 x 16
  refused(deep, "too many open MARKs");
  std::string nested = "\x80\x02"s + "}q\x00"s + "X\x01\x00\x00\x00k"s + "K\x01";
  for (int i = 0; i < 20; ++i) nested += "\x85";  // ((((1,),),),)... 20 deep
  refused(nested + "s.", "nest deeper");
}

TEST(PtFile, PlainValuePicklesOfTheLegacyFormatAreCheckedAndNormalised) {
  PickleSource source;
  source.name_for_errors = "f";
  source.label = "the key pickle";
  source.first_byte = 100;
  source.content = PickleContent::plain_values;
  source.more_follows = true;
  // ["k"] by APPEND, then bytes of whatever follows: APPEND becomes MARK ... APPENDS.
  const std::string list = "\x80\x02"s + "]q\x00"s + "X\x01\x00\x00\x00k"s + "a.";
  const auto normalised = normalise_state_dict_pickle(list + "\x01\x02"s, source);
  EXPECT_EQ(normalised.consumed, list.size());
  EXPECT_EQ(normalised.bytes, "\x80\x02"s + "]q\x00"s + "(X\x01\x00\x00\x00k"s + "e.");
  EXPECT_FALSE(normalised.top_level_is_built_tuple);
  // Plain values hold no code and no storages; offsets count from first_byte.
  expect_error<FileError>([&] { normalise_state_dict_pickle("\x80\x02"s + "ctorch\nFloatStorage\n.", source); },
                          {"f: the key pickle byte 102", "global 'torch.FloatStorage' where only plain values belong"});
  expect_error<FileError>([&] { normalise_state_dict_pickle("\x80\x02"s + "]Q.", source); },
                          {"persistent id", "where only plain values belong"});
  // A state dict never holds a list.
  expect_error<FileError>([&] { normalise_state_dict_pickle("\x80\x02"s + "].", "p"); }, {"p: data.pkl byte 2", "a list"});
}

class PtFileMutation : public guidiff::testing::TempDirTest {};

TEST_F(PtFileMutation, MutatedFilesNeverCrash) {
  // Random byte flips, overwritten runs and truncations of good files: every outcome is a
  // successful read (a flip inside tensor data is not detectable) or a one-line FileError.
  // Anything else (another exception type, a crash, a hang) fails the test.
  std::mt19937 random(12345);
  int errors = 0, reads = 0;
  for (const char* name : {"small.pt", "small_cuda.pt", "handmade.pt", "legacy_small.pt", "legacy_small_cuda.pt"}) {
    const std::string good = read_file_bytes(pt_path(name));
    for (int iteration = 0; iteration < 150; ++iteration) {
      std::string bytes = good;
      switch (random() % 4) {
        case 0: bytes[random() % bytes.size()] ^= static_cast<char>(1 << (random() % 8)); break;
        case 1: bytes.resize(random() % bytes.size()); break;
        case 2: bytes[random() % bytes.size()] = static_cast<char>(random()); break;
        default: {
          const size_t start = random() % bytes.size();
          for (size_t i = start; i < std::min(bytes.size(), start + 8); ++i) bytes[i] = static_cast<char>(random());
        }
      }
      const std::string mutated = path("mutated.pt");
      write_file_atomically(mutated, bytes);
      try {
        const PtStateDict dict(mutated);
        for (const auto& info : dict.tensors()) dict.read(info);
        ++reads;
      } catch (const FileError& error) {
        const std::string message = error.what();
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
        ++errors;
      } catch (const std::exception& error) {
        ADD_FAILURE() << name << " iteration " << iteration << ": " << error.what();
      }
    }
  }
  // Most mutations of such small files hit the archive's structure or the pickles.
  EXPECT_GT(errors, 350);
  EXPECT_EQ(errors + reads, 750);
}
