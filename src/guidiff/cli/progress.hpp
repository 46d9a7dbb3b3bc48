// A one-line progress bar with ETA on stderr, drawn only when stderr is a terminal, so logs
// and captured output stay clean.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace guidiff::cli {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label);
  ~ProgressBar();  // ends the line if anything was drawn
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Redraws (at most ~10 times a second, and always at the end) for done of total steps,
  // with `status` (e.g. the loss) after the ETA.
  void update(int64_t done, int64_t total, const std::string& status = "");
  // Prints a whole line on stderr (terminal or not) without breaking the bar.
  void print_line(const std::string& line);

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace guidiff::cli
