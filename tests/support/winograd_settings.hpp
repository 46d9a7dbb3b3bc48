// Sets the process-wide Winograd switches (src/guidiff/models/winograd_conv.hpp) for one test
// and restores them when it ends.
#pragma once
#include <cstdint>

#include "guidiff/models/winograd_conv.hpp"

namespace guidiff::testing {

class WinogradSettings {
 public:
  // enabled: whether Conv3x3 layers may take the Winograd path; min_pixels: from what image size.
  WinogradSettings(bool enabled, int64_t min_pixels) {
    set_winograd_enabled(enabled);
    set_winograd_min_pixels(min_pixels);
  }
  ~WinogradSettings() {
    set_winograd_enabled(enabled_);
    set_winograd_min_pixels(min_pixels_);
  }
  WinogradSettings(const WinogradSettings&) = delete;
  WinogradSettings& operator=(const WinogradSettings&) = delete;

 private:
  bool enabled_ = winograd_enabled();
  int64_t min_pixels_ = winograd_min_pixels();
};

}  // namespace guidiff::testing
