// `guidiff info`: versions, threads, the BLAS really loaded, the CPU's vector features and
// the kernel levels libtorch and oneDNN run at, bf16 accumulation, and the devices.
#include <torch/torch.h>
#include <torch/version.h>

#include <cstdio>

#include "guidiff/cli/commands.hpp"
#include "guidiff/core/allocator.hpp"
#include "guidiff/core/bf16_kernels.hpp"
#include "guidiff/core/cpu_features.hpp"
#include "guidiff/core/threads.hpp"
#include "guidiff/models/winograd_conv.hpp"
#include "guidiff/version.hpp"

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
            const CpuFeatures& cpu = cpu_features();
            std::printf("cpu      %s\n", cpu.summary().c_str());
            std::printf("kernels  libtorch %s, oneDNN %s\n", aten_cpu_capability().c_str(), onednn_cpu_isa().c_str());
            std::printf("conv     %s\n", convolution_summary().c_str());
            const Bf16KernelReport& bf16 = cpu_bf16_kernel_report();
            const auto accumulation = [](bool fails, bool float32) {
              return fails ? "nothing: they fail at this oneDNN level" : float32 ? "float32" : "bf16";
            };
            std::printf("bf16     %s; libtorch's CPU kernels accumulate in %s (convolution), %s (matrix products)%s\n",
                        cpu.native_bf16() ? "native" : "emulated (no avx512_bf16 or amx_bf16)",
                        accumulation(bf16.convolution_fails, bf16.convolution_accumulates_in_float32),
                        accumulation(bf16.matrix_product_fails, bf16.matrix_product_accumulates_in_float32),
                        bf16.all_float32()            ? ""
                        : keep_libtorch_bf16_kernels() ? "; GUIDIFF_BF16_ACCUMULATION=libtorch keeps them"
                                                       : "; guidiff's bf16 autocast widens those to float32");
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
