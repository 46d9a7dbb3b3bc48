// Ctrl-C during training: the first SIGINT only raises a flag, which the training loop polls
// between steps to save a checkpoint and stop cleanly; a second SIGINT kills the process as
// usual (the handler is installed with SA_RESETHAND).
#pragma once

namespace guidiff {

class InterruptFlag {
 public:
  // Installs the handler (and lowers the flag); the destructor restores the previous one.
  // Only one InterruptFlag may exist at a time (InputError otherwise).
  InterruptFlag();
  ~InterruptFlag();
  InterruptFlag(const InterruptFlag&) = delete;
  InterruptFlag& operator=(const InterruptFlag&) = delete;

  // Whether SIGINT arrived since construction.
  bool raised() const;
};

}  // namespace guidiff
