// Plots drawn by gnuplot (pngcairo terminal): scatter plots of 2-D points coloured by class
// (several panels side by side, e.g. unguided vs. guided samples), and line plots of
// metric curves (e.g. FID against IS as guidance grows), with a label at every point.
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

// One curve: points (x[i], y[i]) joined in order, point i labelled point_labels[i] (optional).
struct LineSeries {
  std::string title;
  std::vector<double> x, y;
  std::vector<std::string> point_labels;  // empty, or one per point
};

struct LinePlotOptions {
  std::string title, x_label, y_label;
  bool log_x = false;  // log-scale x axis (x must then be > 0)
  int64_t width = 640, height = 460;
};

// Writes one PNG with every series on the same axes, atomically. Non-finite points are left
// out (a metric that could not be computed). Throws InputError for no series, x and y (or
// labels) of different lengths, a series with no finite point, or log_x with x <= 0; and
// FileError as write_scatter_plot.
void write_line_plot(const std::string& path, const std::vector<LineSeries>& series,
                     const LinePlotOptions& options = {});

}  // namespace guidiff
