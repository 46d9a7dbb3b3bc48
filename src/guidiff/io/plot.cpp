#include "guidiff/io/plot.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "guidiff/core/errors.hpp"
#include "guidiff/io/atomic_file.hpp"

extern char** environ;

namespace guidiff {
namespace {

// matplotlib's tab10 colours: distinguishable, and familiar from the papers' figures.
const char* const kClassColours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                     "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};

// A private temporary directory, removed with everything in it when it goes out of scope.
class TempDirectory {
 public:
  TempDirectory() {
    std::string pattern = (std::filesystem::temp_directory_path() / "guidiff-plot-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw FileError("cannot create a temporary directory for gnuplot: " + std::string(std::strerror(errno)));
    }
    path_ = pattern;
  }
  ~TempDirectory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDirectory(const TempDirectory&) = delete;
  TempDirectory& operator=(const TempDirectory&) = delete;
  std::string file(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

// gnuplot single-quoted string: the only escape is '' for a quote.
std::string quoted(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') out += "''";
    else if (c != '\n' && c != '\r') out += c;
  }
  return out + "'";
}

void validate_panel(const ScatterPanel& panel, size_t index) {
  const std::string name = "scatter panel " + std::to_string(index) + " ('" + panel.title + "')";
  if (!panel.points.defined() || panel.points.dim() != 2 || panel.points.size(1) != 2) {
    throw InputError(name + ": points must be [N, 2] (2-D data only)");
  }
  if (panel.points.size(0) == 0) throw InputError(name + ": no points");
  if (!torch::isfinite(panel.points).all().item<bool>()) throw NumericError(name + ": points contain NaN or infinity");
  if (panel.labels.defined()) {
    if (panel.labels.dim() != 1 || panel.labels.size(0) != panel.points.size(0)) {
      throw InputError(name + ": labels must be [N] with N the number of points");
    }
    if (panel.labels.min().item<int64_t>() < 0) throw InputError(name + ": labels must be >= 0");
  }
}

struct Range {
  double low, high;
};

// One range for both axes and every panel, so panels compare at a glance; 5% margin.
Range common_range(const std::vector<ScatterPanel>& panels) {
  double low = INFINITY, high = -INFINITY;
  for (const ScatterPanel& panel : panels) {
    low = std::min(low, panel.points.min().item<double>());
    high = std::max(high, panel.points.max().item<double>());
  }
  const double margin = std::max(0.05 * (high - low), 1e-3);
  return {low - margin, high + margin};
}

// Writes every (panel, class) group as one data block; returns the plot command per panel.
std::vector<std::string> write_data(const std::vector<ScatterPanel>& panels, const std::string& data_path,
                                    double point_size) {
  std::ofstream data(data_path);
  data.precision(9);
  std::vector<std::string> commands;
  int block = 0;
  for (const ScatterPanel& panel : panels) {
    const torch::Tensor points = panel.points.detach().to(torch::kCPU, torch::kFloat64).contiguous();
    const torch::Tensor labels = panel.labels.defined() ? panel.labels.detach().to(torch::kCPU, torch::kLong)
                                                        : torch::zeros({points.size(0)}, torch::kLong);
    const int64_t num_classes = labels.max().item<int64_t>() + 1;
    std::string plot = "plot ";
    bool first = true;
    for (int64_t c = 0; c < num_classes; ++c) {
      const torch::Tensor rows = points.index({labels == c});
      if (rows.size(0) == 0) continue;
      const auto accessor = rows.accessor<double, 2>();
      for (int64_t i = 0; i < rows.size(0); ++i) data << accessor[i][0] << ' ' << accessor[i][1] << '\n';
      data << "\n\n";
      std::ostringstream item;
      item << (first ? "" : ", ") << quoted(data_path) << " index " << block
           << " using 1:2 with points pt 7 ps " << point_size << " lc rgb "
           << quoted(kClassColours[c % 10]) << " "
           << (panel.labels.defined() ? "title " + quoted("class " + std::to_string(c)) : "notitle");
      plot += item.str();
      first = false;
      ++block;
    }
    commands.push_back(plot);
  }
  if (!data) throw FileError("cannot write gnuplot data file '" + data_path + "'");
  return commands;
}

std::string first_line_of(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r^") != std::string::npos) return line;
  }
  return "";
}

// Runs `gnuplot script` with stdout and stderr sent to log_path; throws FileError if it
// cannot be started or exits with an error.
void run_gnuplot(const std::string& script_path, const std::string& log_path, const std::string& output_path) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::string program = "gnuplot";
  char* argv[] = {program.data(), const_cast<char*>(script_path.c_str()), nullptr};
  pid_t pid = 0;
  const int spawn_error = posix_spawnp(&pid, "gnuplot", &actions, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawn_error != 0) {
    throw FileError("cannot draw '" + output_path + "': gnuplot could not be run (" +
                    std::strerror(spawn_error) + "); install gnuplot-nox");
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw FileError("cannot draw '" + output_path + "': lost the gnuplot process");
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
    throw FileError("cannot draw '" + output_path + "': gnuplot was not found; install gnuplot-nox");
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    const std::string why = first_line_of(log_path);
    throw FileError("cannot draw '" + output_path + "': gnuplot failed" + (why.empty() ? "" : ": " + why));
  }
}

}  // namespace

void write_scatter_plot(const std::string& path, const std::vector<ScatterPanel>& panels,
                        const ScatterPlotOptions& options) {
  if (panels.empty()) throw InputError("scatter plot '" + path + "': no panels");
  for (size_t i = 0; i < panels.size(); ++i) validate_panel(panels[i], i);
  if (options.panel_size < 64) throw InputError("scatter plot '" + path + "': panel_size must be >= 64");

  const TempDirectory temp;
  const std::string data_path = temp.file("points.dat");
  const std::string script_path = temp.file("plot.gp");
  const std::string log_path = temp.file("gnuplot.log");
  const std::vector<std::string> plot_commands = write_data(panels, data_path, options.point_size);
  const Range range = common_range(panels);
  const int64_t title_height = options.title.empty() ? 0 : 30;

  write_file_atomically_via(path, [&](const std::string& temp_png) {
    std::ofstream script(script_path);
    script << "set terminal pngcairo size " << options.panel_size * static_cast<int64_t>(panels.size()) << ","
           << options.panel_size + title_height << " font ',10' noenhanced\n"
           << "set output " << quoted(temp_png) << "\n"
           << "set multiplot layout 1," << panels.size()
           << (options.title.empty() ? std::string() : " title " + quoted(options.title)) << "\n"
           << "set xrange [" << range.low << ":" << range.high << "]\n"
           << "set yrange [" << range.low << ":" << range.high << "]\n"
           << "set size ratio -1\n"
           << "set key outside below center horizontal font ',9' samplen 1\n";
    for (size_t i = 0; i < panels.size(); ++i) {
      script << "set title " << quoted(panels[i].title) << "\n" << plot_commands[i] << "\n";
    }
    script << "unset multiplot\nset output\n";
    script.close();
    if (!script) throw FileError("cannot write gnuplot script '" + script_path + "'");
    run_gnuplot(script_path, log_path, path);
    if (std::filesystem::file_size(temp_png) == 0) {
      throw FileError("cannot draw '" + path + "': gnuplot wrote nothing");
    }
  });
}

void write_line_plot(const std::string& path, const std::vector<LineSeries>& series,
                     const LinePlotOptions& options) {
  if (series.empty()) throw InputError("line plot '" + path + "': no series");
  const TempDirectory temp;
  const std::string data_path = temp.file("lines.dat");
  const std::string script_path = temp.file("plot.gp");
  const std::string log_path = temp.file("gnuplot.log");
  std::ofstream data(data_path);
  data.precision(10);
  std::string plot = "plot ";
  for (size_t s = 0; s < series.size(); ++s) {
    const LineSeries& line = series[s];
    const std::string name = "line plot '" + path + "', series '" + line.title + "'";
    if (line.x.size() != line.y.size()) throw InputError(name + ": x and y differ in length");
    if (!line.point_labels.empty() && line.point_labels.size() != line.x.size()) {
      throw InputError(name + ": point_labels must be empty or one per point");
    }
    int64_t finite = 0;
    for (size_t i = 0; i < line.x.size(); ++i) {
      if (!std::isfinite(line.x[i]) || !std::isfinite(line.y[i])) continue;
      if (options.log_x && line.x[i] <= 0) throw InputError(name + ": log-scale x needs x > 0");
      std::string label = line.point_labels.empty() ? "" : line.point_labels[i];
      for (char& c : label) if (c == '"' || c == '\n') c = ' ';
      data << line.x[i] << ' ' << line.y[i] << " \"" << label << "\"\n";
      ++finite;
    }
    if (finite == 0) throw InputError(name + ": no finite point");
    data << "\n\n";
    const std::string colour = quoted(kClassColours[s % 10]);
    plot += (s == 0 ? "" : ", ") + quoted(data_path) + " index " + std::to_string(s) +
            " using 1:2 with linespoints pt 7 ps 1.2 lw 2 lc rgb " + colour + " title " + quoted(line.title);
    if (!line.point_labels.empty()) {
      plot += ", " + quoted(data_path) + " index " + std::to_string(s) +
              " using 1:2:3 with labels offset char 0.8,0.6 left font ',9' tc rgb " + colour + " notitle";
    }
  }
  data.close();
  if (!data) throw FileError("cannot write gnuplot data file '" + data_path + "'");
  write_file_atomically_via(path, [&](const std::string& temp_png) {
    std::ofstream script(script_path);
    script << "set terminal pngcairo size " << options.width << "," << options.height << " font ',10' noenhanced\n"
           << "set output " << quoted(temp_png) << "\n"
           << "set grid\nset key outside below center horizontal\n";
    // Room around the data for the point labels (drawn up and to the right of each point);
    // without labels the axes keep gnuplot's own range, e.g. 0-1000 for timesteps.
    const bool any_labels = std::any_of(series.begin(), series.end(),
                                        [](const LineSeries& line) { return !line.point_labels.empty(); });
    if (any_labels) script << "set offsets graph 0.08, graph 0.12, graph 0.08, graph 0.08\n";
    if (!options.title.empty()) script << "set title " << quoted(options.title) << "\n";
    if (!options.x_label.empty()) script << "set xlabel " << quoted(options.x_label) << "\n";
    if (!options.y_label.empty()) script << "set ylabel " << quoted(options.y_label) << "\n";
    if (options.log_x) script << "set logscale x\n";
    script << plot << "\nset output\n";
    script.close();
    if (!script) throw FileError("cannot write gnuplot script '" + script_path + "'");
    run_gnuplot(script_path, log_path, path);
    if (std::filesystem::file_size(temp_png) == 0) throw FileError("cannot draw '" + path + "': gnuplot wrote nothing");
  });
}

}  // namespace guidiff
