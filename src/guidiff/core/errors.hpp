// Error families. Every message names the flag, file or tensor at fault; the CLI prints
// `guidiff: error: <message>` as one line and exits non-zero.
#pragma once
#include <stdexcept>
#include <string>

namespace guidiff {

// Base of every error guidiff reports to the user.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad option or argument value (unknown sampler, steps > T, class out of range, ...).
class InputError : public Error {
 public:
  using Error::Error;
};

// A missing, unreadable, truncated or malformed file.
class FileError : public Error {
 public:
  using Error::Error;
};

// A model or classifier whose signature, outputs or configuration do not fit the request.
class ModelError : public Error {
 public:
  using Error::Error;
};

// NaN or infinity where finite numbers are required.
class NumericError : public Error {
 public:
  using Error::Error;
};

// A data-parallel run that cannot go on: a process that failed, died, never arrived or stopped
// taking part, or a launch environment that does not add up. The message names the rank.
class DistributedError : public Error {
 public:
  using Error::Error;
};

}  // namespace guidiff
