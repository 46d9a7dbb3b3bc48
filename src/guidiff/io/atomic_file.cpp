#include "guidiff/io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/file.h>
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

constexpr char kTempMarker[] = ".tmp-";
constexpr size_t kTempSuffixLength = 6;  // mkstemp's XXXXXX

// `.<name>.tmp-XXXXXX`, the names make_temp_beside gives.
bool is_temporary_name(const std::string& name) {
  const size_t marker = name.size() >= kTempSuffixLength + sizeof kTempMarker
                            ? name.size() - kTempSuffixLength - (sizeof kTempMarker - 1)
                            : std::string::npos;
  return !name.empty() && name[0] == '.' && marker != std::string::npos && marker > 1 &&
         name.compare(marker, sizeof kTempMarker - 1, kTempMarker) == 0;
}

// An empty temporary file `.<name>.tmp-XXXXXX` in path's directory (the dot keeps it out of
// casual listings), locked until it is closed: the lock tells remove_abandoned_temporaries
// that its writer is alive. The kernel drops the lock when the writer dies, however it dies.
struct LockedTemporary {
  std::string path;
  int fd = -1;
};

LockedTemporary make_temp_beside(const std::string& path) {
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
  ::flock(fd, LOCK_EX);  // a fresh file nobody else has opened: cannot block
  return {std::string(buffer.data()), fd};
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

// Fills the (empty) temporary through `file.write` and flushes it to disk, so a crash after the
// rename cannot leave a renamed but empty file.
void write_and_sync(const LockedTemporary& temp, const StreamedFile& file) {
  const AppendBytes append = [&](const void* data, size_t size) {
    const char* bytes = static_cast<const char*>(data);
    size_t written = 0;
    while (written < size) {
      const ssize_t n = ::write(temp.fd, bytes + written, size - written);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw FileError("cannot write '" + file.path + "': " + system_reason());
      }
      written += static_cast<size_t>(n);
    }
  };
  file.write(append);
  if (::fsync(temp.fd) != 0) throw FileError("cannot write '" + file.path + "': " + system_reason());
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& bytes) {
  // Written from `bytes` itself: a {path, bytes} pair in an initializer list would copy them
  // twice (into the pair, then into the vector), which for a file of samples is 2x its size.
  write_files_atomically({StreamedFile{
      path, [&bytes](const AppendBytes& append) { append(bytes.data(), bytes.size()); }}});
}

void write_files_atomically(const std::vector<std::pair<std::string, std::string>>& paths_and_bytes) {
  std::vector<StreamedFile> files;
  for (const auto& [path, bytes] : paths_and_bytes) {
    files.push_back({path, [&bytes = bytes](const AppendBytes& append) {
                       append(bytes.data(), bytes.size());
                     }});
  }
  write_files_atomically(files);
}

void write_files_atomically(const std::vector<StreamedFile>& files) {
  std::vector<LockedTemporary> temps;
  const auto discard = [&] {
    for (const LockedTemporary& temp : temps) {
      std::remove(temp.path.c_str());
      ::close(temp.fd);
    }
  };
  try {
    for (const StreamedFile& file : files) {
      temps.push_back(make_temp_beside(file.path));
      write_and_sync(temps.back(), file);
    }
  } catch (...) {
    discard();
    throw;
  }
  for (size_t i = 0; i < temps.size(); ++i) {
    try {
      commit(temps[i].path, files[i].path);
    } catch (...) {
      ::close(temps[i].fd);  // commit removed this one's temporary; the earlier ones are renamed
      temps.erase(temps.begin(), temps.begin() + static_cast<std::ptrdiff_t>(i) + 1);
      discard();
      throw;
    }
    ::close(temps[i].fd);
  }
}

void write_file_atomically_via(const std::string& path,
                               const std::function<void(const std::string& temp_path)>& produce) {
  const LockedTemporary temp = make_temp_beside(path);
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }
  } unlock{temp.fd};
  try {
    produce(temp.path);
  } catch (...) {
    std::remove(temp.path.c_str());
    throw;
  }
  commit(temp.path, path);
}

AbandonedTemporaries remove_abandoned_temporaries(const std::string& dir, bool recursive) {
  namespace fs = std::filesystem;
  AbandonedTemporaries removed;
  std::error_code error;
  if (!fs::is_directory(dir, error)) return removed;
  std::vector<fs::path> candidates;
  const auto consider = [&](const fs::directory_entry& entry) {
    if (entry.is_regular_file(error) && is_temporary_name(entry.path().filename().string())) {
      candidates.push_back(entry.path());
    }
  };
  if (recursive) {
    for (fs::recursive_directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) consider(*it);
  } else {
    for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) consider(*it);
  }
  for (const fs::path& candidate : candidates) {
    const int fd = ::open(candidate.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat info {};
    // Only an unlocked temporary is abandoned; a locked one belongs to a live writer.
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0 && ::fstat(fd, &info) == 0 && ::unlink(candidate.c_str()) == 0) {
      removed.files += 1;
      removed.bytes += static_cast<int64_t>(info.st_size);
    }
    ::close(fd);
  }
  return removed;
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
