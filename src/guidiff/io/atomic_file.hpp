// Atomic file writes: the bytes go to a temporary file in the destination's directory,
// which is renamed over the destination only once it is complete. A reader never sees a
// half-written file, and a failed write leaves the old file (if any) untouched.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace guidiff {

// Appends `size` bytes at `data` to the file being written; throws FileError naming the file.
using AppendBytes = std::function<void(const void* data, size_t size)>;

// A file to write atomically, given as what writes its bytes in pieces through the AppendBytes
// it is handed, so a large file (a model's weights) goes from the tensors' memory to the file
// without first being built in memory.
struct StreamedFile {
  std::string path;
  std::function<void(const AppendBytes& append)> write;
};

// Writes `bytes` to `path` atomically. Throws FileError naming the path on any failure
// (missing directory, no permission, disk full, file size limit); no temporary file is left
// behind.
void write_file_atomically(const std::string& path, const std::string& bytes);

// Replaces several files as one checkpoint: every temporary is written and synced before the
// first rename, so a failure while writing (disk full, I/O error) leaves all the old files as
// they were and no temporary behind. (A crash during the renames themselves can leave some
// files new and some old; readers must not rely on the files agreeing, only on each being
// whole.) Renames happen in the order given. Throws FileError naming the file at fault.
void write_files_atomically(const std::vector<std::pair<std::string, std::string>>& paths_and_bytes);
// The same for files written in pieces: each is written and synced in turn before any rename.
void write_files_atomically(const std::vector<StreamedFile>& files);

// For producers that write files themselves (e.g. an external program): `produce` is
// given the path of a fresh, empty temporary file beside `path` and must fill it; the
// temporary then replaces `path`. If `produce` throws, the temporary is removed and the
// exception propagates.
void write_file_atomically_via(const std::string& path,
                               const std::function<void(const std::string& temp_path)>& produce);

// What remove_abandoned_temporaries removed.
struct AbandonedTemporaries {
  int64_t files = 0;
  int64_t bytes = 0;
};

// Removes the temporary files of atomic writes that never finished because their process was
// killed (kill -9, power loss) from `dir` (and its sub-directories when `recursive`). A
// writer holds a lock on its temporary file until the rename, so the temporary of a write in
// progress, in this or another process, is never touched. Missing directories are fine.
AbandonedTemporaries remove_abandoned_temporaries(const std::string& dir, bool recursive = false);

// Reads a whole file. Throws FileError naming the path if it cannot be opened or read.
std::string read_file_bytes(const std::string& path);

}  // namespace guidiff
