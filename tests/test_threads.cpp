// Start-up checks: thread count selection, which BLAS is really loaded, and the order the
// shared libraries are searched in.
#include <gtest/gtest.h>
#include <link.h>
#include <torch/torch.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/threads.hpp"

namespace {

// Sets an environment variable for one scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) setenv(name, value, 1); else unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1); else unsetenv(name_);
  }

 private:
  const char* name_;
  std::optional<std::string> old_;
};

TEST(Threads, ExplicitRequestWins) {
  ScopedEnv env("GUIDIFF_THREADS", "3");
  EXPECT_EQ(guidiff::configure_threads(1), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
}

TEST(Threads, EnvironmentOverridesDefault) {
  ScopedEnv env("GUIDIFF_THREADS", "3");
  EXPECT_EQ(guidiff::configure_threads(0), 3);
}

TEST(Threads, DefaultIsAllCores) {
  ScopedEnv env("GUIDIFF_THREADS", nullptr);
  EXPECT_EQ(guidiff::configure_threads(0), static_cast<int>(std::thread::hardware_concurrency()));
}

TEST(Threads, MalformedEnvironmentIsAnInputError) {
  for (const char* bad : {"zero", "0", "-2", "4x"}) {
    ScopedEnv env("GUIDIFF_THREADS", bad);
    try {
      guidiff::configure_threads(0);
      FAIL() << "accepted GUIDIFF_THREADS=" << bad;
    } catch (const guidiff::InputError& e) {
      EXPECT_NE(std::string(e.what()).find("GUIDIFF_THREADS"), std::string::npos);
    }
  }
  guidiff::configure_threads(0);
}

// The project requires libopenblas0-openmp: with the reference BLAS matmul is ~30x slower.
TEST(Blas, OptimisedBlasIsLoaded) {
  // Force libtorch to touch BLAS so the library is mapped.
  auto a = torch::ones({8, 8}, torch::kFloat64);
  (void)torch::mm(a, a);
  const guidiff::BlasInfo blas = guidiff::loaded_blas();
  EXPECT_FALSE(blas.path.empty());
  // Debian's libtorch calls libblas.so.3, which must be OpenBLAS; pip's has MKL linked in.
  EXPECT_TRUE(blas.name == "openblas" || blas.name == "mkl")
      << blas.name << ": libblas.so.3 resolves to " << blas.path;
  EXPECT_FALSE(blas.is_reference());
}

// pip's libtorch exports its own copies of libstdc++'s std::filesystem functions, and a
// program that searched libtorch first crashed in them (docs/gpu.md). guidiff's link option
// puts libstdc++ first: the dynamic linker then loads it, and searches it, before libtorch.
TEST(SharedLibraries, LibstdcxxIsSearchedBeforeLibtorch) {
  std::vector<std::string> names;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        static_cast<std::vector<std::string>*>(data)->push_back(info->dlpi_name ? info->dlpi_name
                                                                                : "");
        return 0;
      },
      &names);
  const auto first = [&](const std::string& part) {
    for (size_t i = 0; i < names.size(); ++i)
      if (names[i].find(part) != std::string::npos) return static_cast<int64_t>(i);
    return int64_t{-1};
  };
  const int64_t libstdcxx = first("libstdc++"), libtorch = first("libtorch");
  if (libstdcxx < 0) GTEST_SKIP() << "libstdc++ is linked statically into this program";
  ASSERT_GE(libtorch, 0) << "no libtorch among the loaded libraries";
  EXPECT_LT(libstdcxx, libtorch) << names[libstdcxx] << " comes after " << names[libtorch];
}

}  // namespace
