// This process's memory, as the operating system counts it, and what it can still take.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace guidiff {

// The peak resident set size so far, in bytes (getrusage's ru_maxrss; 0 where unavailable).
int64_t peak_resident_bytes();

// The bytes this process can still fill without being killed: the kernel's MemAvailable (free
// memory and the page cache it can drop) plus free swap, and no more than the memory cgroup's
// limit leaves (a container's --memory, a systemd slice; v1 and v2). nullopt where
// /proc/meminfo cannot be read (not Linux).
std::optional<int64_t> available_memory_bytes();

// What the memory cgroup limits leave this process: limit - usage for its cgroup and, under
// cgroup v2, every cgroup above it (v1 reports the tightest as hierarchical_memory_limit), with
// the usage's inactive file pages counted as free (the kernel drops them before it kills).
// Read from `self_cgroup` (/proc/self/cgroup's format) and the hierarchy mounted at `root`
// (v1's controller at <root>/memory); nullopt where no limit is set.
std::optional<int64_t> cgroup_memory_headroom(const std::string& self_cgroup = "/proc/self/cgroup",
                                              const std::string& root = "/sys/fs/cgroup");

// A byte count computed in double (sizes from flags and configs can overflow int64) as int64,
// INT64_MAX where it does not fit: for check_fits_in_memory.
int64_t saturated_bytes(double bytes);

// A byte count for messages: "512 KiB", "37.4 MiB", "1.50 GiB", "2.00 TiB".
std::string memory_text(int64_t bytes);

// Throws InputError "<what> need <bytes> of memory, but only <available> is
// available<advice>" when `bytes` exceed `available`. Linux hands out memory it does not have
// and kills the process when the pages are touched, so a request too large for the machine
// must be refused before it is filled, with a message instead of a SIGKILL. Nothing is checked
// when `available` is unknown.
void check_fits_in_memory(int64_t bytes, const std::string& what, const std::string& advice,
                          std::optional<int64_t> available = available_memory_bytes());

}  // namespace guidiff
