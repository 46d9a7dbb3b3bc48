// Sets the process-wide Winograd switches (src/guidiff/models/winograd_conv.hpp) for one test
// and restores them when it ends.
#pragma once
#include <cstdint>
#include <vector>

#include "guidiff/models/winograd_conv.hpp"

namespace guidiff::testing {

class WinogradSettings {
 public:
  // enabled: whether Conv3x3 layers may take the Winograd path; min_pixels: from what image size.
  // The products' backend is restored too.
  WinogradSettings(bool enabled, int64_t min_pixels) {
    set_winograd_enabled(enabled);
    set_winograd_min_pixels(min_pixels);
  }
  ~WinogradSettings() {
    set_winograd_enabled(enabled_);
    set_winograd_min_pixels(min_pixels_);
    set_winograd_products_backend(products_);
  }
  WinogradSettings(const WinogradSettings&) = delete;
  WinogradSettings& operator=(const WinogradSettings&) = delete;

 private:
  bool enabled_ = winograd_enabled();
  int64_t min_pixels_ = winograd_min_pixels();
  WinogradProducts products_ = winograd_products_backend();
};

// The products' backends this libtorch offers: libtorch's BLAS, and oneDNN's sgemm where exported.
inline std::vector<WinogradProducts> available_products_backends() {
  std::vector<WinogradProducts> backends{WinogradProducts::Blas};
  if (onednn_products_available()) backends.push_back(WinogradProducts::OneDnn);
  return backends;
}

}  // namespace guidiff::testing
