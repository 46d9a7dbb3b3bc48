#include "guidiff/cli/progress.hpp"

#include <unistd.h>

#include <cstdio>

namespace guidiff::cli {
namespace {

std::string clock_text(double seconds) {
  const long total = static_cast<long>(seconds + 0.5);
  char buffer[32];
  if (total >= 3600) {
    std::snprintf(buffer, sizeof buffer, "%ld:%02ld:%02ld", total / 3600, total / 60 % 60, total % 60);
  } else {
    std::snprintf(buffer, sizeof buffer, "%ld:%02ld", total / 60, total % 60);
  }
  return buffer;
}

}  // namespace

ProgressBar::ProgressBar(std::string label)
    : label_(std::move(label)), enabled_(::isatty(STDERR_FILENO) == 1), start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  if (drawn_) std::fputc('\n', stderr);
}

void ProgressBar::update(int64_t done, int64_t total, const std::string& status) {
  if (!enabled_ || total <= 0) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  drawn_ = true;

  constexpr int kWidth = 30;
  const double fraction = static_cast<double>(done) / static_cast<double>(total);
  const int filled = static_cast<int>(fraction * kWidth);
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const std::string eta = done > 0 ? clock_text(elapsed * (total - done) / done) : "--:--";
  std::fprintf(stderr, "\r%s [%s%s] %3d%% %lld/%lld  elapsed %s  ETA %s  %s\x1b[K", label_.c_str(),
               std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
               static_cast<int>(fraction * 100), static_cast<long long>(done), static_cast<long long>(total),
               clock_text(elapsed).c_str(), eta.c_str(), status.c_str());
  std::fflush(stderr);
}

void ProgressBar::print_line(const std::string& line) {
  if (drawn_) std::fputs("\r\x1b[K", stderr);
  std::fprintf(stderr, "%s\n", line.c_str());
  drawn_ = false;  // redrawn by the next update
  last_draw_ = start_;
}

}  // namespace guidiff::cli
