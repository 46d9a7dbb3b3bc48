#include "support/test_files.hpp"

#include <cstdlib>
#include <cstring>
#include <fstream>

namespace guidiff::testing {

namespace fs = std::filesystem;

void TempDirTest::SetUp() {
  std::string pattern = (fs::temp_directory_path() / "guidiff-test-XXXXXX").string();
  ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
  dir_ = pattern;
}

void TempDirTest::TearDown() { fs::remove_all(dir_); }

std::string TempDirTest::path(const std::string& name) const { return (dir_ / name).string(); }

std::set<std::string> TempDirTest::listing() const {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir_)) names.insert(entry.path().filename().string());
  return names;
}

void TempDirTest::write_raw(const std::string& name, const std::string& bytes) const {
  std::ofstream(path(name), std::ios::binary) << bytes;
}

bool same_bytes(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  if (a.numel() == 0) return true;  // memcmp's pointers must not be null, even for no bytes
  const auto ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.numel() * ca.element_size()) == 0;
}

}  // namespace guidiff::testing
