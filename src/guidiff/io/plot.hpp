// Scatter plots of 2-D points coloured by class, drawn by gnuplot (pngcairo terminal).
// One figure may hold several panels side by side (e.g. unguided vs. guided samples).
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace guidiff {

struct ScatterPanel {
  std::string title;
  torch::Tensor points;  // float [N, 2]
  torch::Tensor labels;  // int64 [N] (class of each point, >= 0), or undefined: one colour
};

struct ScatterPlotOptions {
  std::string title;        // over the whole figure; empty: none
  int64_t panel_size = 420; // pixels per panel (square panels)
  double point_size = 0.35; // gnuplot point size
};

// Writes one PNG with the panels side by side, all on the same axes ranges, atomically.
// Throws InputError for malformed panels (not [N, 2], empty, labels of the wrong length),
// NumericError for non-finite points, and FileError naming the path when gnuplot is not
// installed, fails (its first error line is quoted) or the file cannot be written.
void write_scatter_plot(const std::string& path, const std::vector<ScatterPanel>& panels,
                        const ScatterPlotOptions& options = {});

}  // namespace guidiff
