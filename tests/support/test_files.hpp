// What many test files need: a temporary directory per test, a check that a call fails with
// a one-line error naming what is wrong, and byte-for-byte tensor comparison.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <set>
#include <string>
#include <vector>

namespace guidiff::testing {

// A fresh directory per test, removed afterwards.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
  // <dir>/<name>
  std::string path(const std::string& name) const;
  // The names directly inside the directory.
  std::set<std::string> listing() const;
  // Writes `bytes` to <dir>/<name> as they are.
  void write_raw(const std::string& name, const std::string& bytes) const;

  std::filesystem::path dir_;
};

// Expects `call` to throw E whose message is one line and contains every fragment.
template <typename E, typename F>
void expect_error(F&& call, const std::vector<std::string>& fragments) {
  try {
    call();
    FAIL() << "expected an exception mentioning " << fragments.front();
  } catch (const E& error) {
    const std::string message = error.what();
    for (const auto& fragment : fragments) EXPECT_NE(message.find(fragment), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << "message must be one line: " << message;
  }
}

// Same dtype, shape and bytes (so NaN payloads compare equal).
bool same_bytes(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace guidiff::testing
