// `guidiff info`: versions, threads, the BLAS really loaded, and the devices.
#include <torch/torch.h>
#include <torch/version.h>

#include <cstdio>

#include "guidiff/cli/commands.hpp"
#include "guidiff/core/allocator.hpp"
#include "guidiff/core/threads.hpp"

namespace guidiff::cli {

Command add_info_command(CLI::App& app, const GlobalOptions& global) {
  CLI::App* command = app.add_subcommand("info", "print versions, thread count, BLAS library and devices");
  return {command, [] {
            const BlasInfo blas = loaded_blas();
            std::printf("guidiff  %s\n", GUIDIFF_VERSION);
            std::printf("libtorch %s\n", TORCH_VERSION);
            std::printf("threads  %d\n", at::get_num_threads());
            std::printf("blas     %s %s\n", blas.name.c_str(), blas.path.empty() ? "(none mapped)" : blas.path.c_str());
            std::printf("malloc   %s\n", configure_allocator().c_str());  // idempotent: reports main's set-up
            if (torch::cuda::is_available()) {
              std::printf("devices  cpu, cuda (%d device%s)\n", static_cast<int>(torch::cuda::device_count()),
                          torch::cuda::device_count() == 1 ? "" : "s");
            } else {
              std::printf("devices  cpu\n");
            }
            std::fflush(stdout);
            if (blas.is_reference()) {
              std::fprintf(stderr,
                           "WARNING: the reference BLAS (%s) is active: matrix products are many times slower. "
                           "Install libopenblas0-openmp (scripts/setup.sh does).\n",
                           blas.path.c_str());
            }
          }};
}

}  // namespace guidiff::cli
