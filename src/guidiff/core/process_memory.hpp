// This process's memory, as the operating system counts it.
#pragma once
#include <cstdint>

namespace guidiff {

// The peak resident set size so far, in bytes (getrusage's ru_maxrss; 0 where unavailable).
int64_t peak_resident_bytes();

}  // namespace guidiff
