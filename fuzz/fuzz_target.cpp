#include "fuzz_target.hpp"

#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <new>
#include <stdexcept>

#include "guidiff/core/errors.hpp"

namespace guidiff::fuzz {
namespace {

namespace fs = std::filesystem;

class ScratchDirectory {
 public:
  ScratchDirectory() {
    std::error_code error;
    fs::path base = "/dev/shm";  // tmpfs: file round trips cost microseconds
    if (!fs::is_directory(base, error) || ::access(base.c_str(), W_OK) != 0) base = fs::temp_directory_path();
    root_ = base / ("guidiff-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(root_);
  }
  ~ScratchDirectory() {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }
  const fs::path& root() const { return root_; }

 private:
  fs::path root_;
};

const fs::path& scratch_root() {
  static ScratchDirectory directory;
  return directory.root();
}

std::string check_message(const std::string& message) {
  if (message.empty()) return "guidiff::Error with an empty message";
  if (message.find('\n') != std::string::npos) return "guidiff::Error message spans lines: " + message;
  if (message.size() > kMaxMessageBytes) {
    return "guidiff::Error message of " + std::to_string(message.size()) + " bytes: " + message.substr(0, 300) + "...";
  }
  return "";
}

}  // namespace

const Target* find_target(std::string_view name) {
  for (const Target& target : all_targets()) {
    if (name == target.name) return &target;
  }
  return nullptr;
}

Outcome run_input(const Target& target, std::string_view input) {
  Outcome outcome;
  try {
    target.run(input);
  } catch (const guidiff::Error& error) {
    outcome.what = error.what();
    const std::string problem = check_message(outcome.what);
    if (!problem.empty()) {
      outcome.finding = true;
      outcome.what = problem;
    }
  } catch (const std::bad_alloc& error) {
    outcome = {true, std::string("std::bad_alloc escaped the reader: ") + error.what()};
  } catch (const std::exception& error) {
    // c10::Error's what() carries a backtrace after the first line; the first line says enough.
    std::string what = error.what();
    outcome = {true, "a non-guidiff exception escaped the reader: " + what.substr(0, what.find('\n'))};
  } catch (...) {
    outcome = {true, "an exception of unknown type escaped the reader"};
  }
  return outcome;
}

std::string scratch_path(const std::string& name) { return (scratch_root() / name).string(); }

void write_scratch_file(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("fuzz harness: cannot write scratch file " + path);
}

void reset_scratch_dir(const std::string& dir) {
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  fs::create_directories(dir);
}

}  // namespace guidiff::fuzz
