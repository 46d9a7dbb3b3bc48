#include "guidiff/io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "guidiff/core/errors.hpp"

namespace guidiff {
namespace {

std::string system_reason() { return std::strerror(errno); }

// Creates an empty temporary file named `.<name>.tmp-XXXXXX` in path's directory and
// returns its path. The dot keeps it out of casual listings while it exists.
std::string make_temp_beside(const std::string& path) {
  const std::filesystem::path target(path);
  if (target.filename().empty()) throw FileError("cannot write '" + path + "': not a file name");
  std::filesystem::path dir = target.parent_path();
  if (dir.empty()) dir = ".";
  std::string pattern = (dir / ("." + target.filename().string() + ".tmp-XXXXXX")).string();
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  const int fd = ::mkstemp(buffer.data());
  if (fd < 0) {
    throw FileError("cannot write '" + path + "': " + system_reason() +
                    (std::filesystem::is_directory(dir) ? "" : " (directory does not exist)"));
  }
  ::close(fd);
  return std::string(buffer.data());
}

// mkstemp creates files with mode 0600; give the result the usual rw-r--r-- (reading the
// umask would mean changing it, which races with other threads).
void apply_default_mode(const std::string& temp_path) { ::chmod(temp_path.c_str(), 0644); }

void commit(const std::string& temp_path, const std::string& path) {
  apply_default_mode(temp_path);
  if (std::rename(temp_path.c_str(), path.c_str()) != 0) {
    const std::string reason = system_reason();
    std::remove(temp_path.c_str());
    throw FileError("cannot write '" + path + "': " + reason);
  }
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_file_atomically_via(path, [&](const std::string& temp_path) {
    const int fd = ::open(temp_path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) throw FileError("cannot write '" + path + "': " + system_reason());
    size_t written = 0;
    while (written < bytes.size()) {
      const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        const std::string reason = system_reason();
        ::close(fd);
        throw FileError("cannot write '" + path + "': " + reason);
      }
      written += static_cast<size_t>(n);
    }
    // Flush to disk before the rename so a crash cannot leave a renamed but empty file.
    if (::fsync(fd) != 0 || ::close(fd) != 0) {
      throw FileError("cannot write '" + path + "': " + system_reason());
    }
  });
}

void write_file_atomically_via(const std::string& path,
                               const std::function<void(const std::string& temp_path)>& produce) {
  const std::string temp_path = make_temp_beside(path);
  try {
    produce(temp_path);
  } catch (...) {
    std::remove(temp_path.c_str());
    throw;
  }
  commit(temp_path, path);
}

std::string read_file_bytes(const std::string& path) {
  if (std::filesystem::is_directory(path)) throw FileError("cannot read '" + path + "': it is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw FileError("cannot read '" + path + "': " +
                    (std::filesystem::exists(path) ? system_reason() : std::string("no such file")));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) throw FileError("cannot read '" + path + "': read error");
  return contents.str();
}

}  // namespace guidiff
