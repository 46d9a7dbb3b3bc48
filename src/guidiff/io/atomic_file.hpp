// Atomic file writes: the bytes go to a temporary file in the destination's directory,
// which is renamed over the destination only once it is complete. A reader never sees a
// half-written file, and a failed write leaves the old file (if any) untouched.
#pragma once
#include <functional>
#include <string>

namespace guidiff {

// Writes `bytes` to `path` atomically. Throws FileError naming the path on any failure
// (missing directory, no permission, disk full); no temporary file is left behind.
void write_file_atomically(const std::string& path, const std::string& bytes);

// For producers that write files themselves (e.g. an external program): `produce` is
// given the path of a fresh, empty temporary file beside `path` and must fill it; the
// temporary then replaces `path`. If `produce` throws, the temporary is removed and the
// exception propagates.
void write_file_atomically_via(const std::string& path,
                               const std::function<void(const std::string& temp_path)>& produce);

// Reads a whole file. Throws FileError naming the path if it cannot be opened or read.
std::string read_file_bytes(const std::string& path);

}  // namespace guidiff
