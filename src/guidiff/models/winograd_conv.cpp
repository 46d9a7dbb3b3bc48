#include "guidiff/models/winograd_conv.hpp"

#include <dlfcn.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "guidiff/core/autocast.hpp"
#include "guidiff/core/cpu_features.hpp"
#include "guidiff/core/errors.hpp"
#include "guidiff/models/winograd_kernels.hpp"

namespace guidiff {
namespace {

std::atomic<int> g_enabled{-1};  // -1: not configured yet, resolved as auto on first use
std::atomic<int64_t> g_min_pixels{32 * 32};
std::atomic<int64_t> g_calls{0};
std::atomic<int64_t> g_onednn_product_calls{0};
// -1: not configured yet, resolved as auto (oneDNN where it is there) on first use.
std::atomic<int> g_products{-1};
thread_local bool t_input_gradients_only = false;
std::string g_choice;  // what configure_convolutions was given (resolved), empty before

// U for `weight` (winograd::transform_filter), as a float32 tensor.
torch::Tensor transformed_filter(const torch::Tensor& weight, bool for_input_gradient) {
  const auto taps = weight.detach().contiguous();
  const int64_t out_channels = taps.size(0), in_channels = taps.size(1);
  auto transformed = torch::empty(
      for_input_gradient ? std::vector<int64_t>{winograd::kPositions, out_channels, in_channels}
                         : std::vector<int64_t>{winograd::kPositions, in_channels, out_channels},
      taps.options());
  winograd::transform_filter(taps.data_ptr<float>(), out_channels, in_channels, for_input_gradient,
                             transformed.data_ptr<float>());
  return transformed;
}

// oneDNN's matrix product dnnl_sgemm (its C API: row-major, int64_t sizes, 0 on success), from
// the oneDNN that libtorch itself loads, looked up at run time so that a libtorch which does not
// export it (pip's may not: its oneDNN is linked in statically; not checked) still links; null
// there.
using OneDnnSgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t);
OneDnnSgemm onednn_sgemm() {
  static const auto function = reinterpret_cast<OneDnnSgemm>(dlsym(RTLD_DEFAULT, "dnnl_sgemm"));
  return function;
}

// The 36 products [36, tiles, C_in] x [36, C_in, C_out], one threaded matrix product each.
torch::Tensor winograd_products(const torch::Tensor& transformed_input,
                                const torch::Tensor& transformed_filter) {
  if (winograd_products_backend() != WinogradProducts::OneDnn)
    return torch::bmm(transformed_input, transformed_filter);
  ++g_onednn_product_calls;
  const int64_t positions = transformed_input.size(0), rows = transformed_input.size(1),
                inner = transformed_input.size(2), columns = transformed_filter.size(2);
  auto products = torch::empty({positions, rows, columns}, transformed_input.options());
  const float* left = transformed_input.data_ptr<float>();
  const float* right = transformed_filter.data_ptr<float>();
  float* out = products.data_ptr<float>();
  const OneDnnSgemm sgemm = onednn_sgemm();
  for (int64_t position = 0; position < positions; ++position) {
    const int status = sgemm('N', 'N', rows, columns, inner, 1.0F, left + position * rows * inner,
                             inner, right + position * inner * columns, columns, 0.0F,
                             out + position * rows * columns, columns);
    TORCH_CHECK(status == 0, "oneDNN's dnnl_sgemm failed with status ", status);
  }
  return products;
}

// The convolution of `input` with a transformed filter [36, C_in, C_out], plus bias.
torch::Tensor convolve(const torch::Tensor& input, const torch::Tensor& transformed,
                       const torch::Tensor& bias) {
  ++g_calls;
  const int64_t in_channels = input.size(1), out_channels = transformed.size(2);
  const winograd::TileGrid grid{input.size(0), input.size(2), input.size(3)};
  const auto contiguous_input = input.contiguous();
  auto transformed_input =
      torch::empty({winograd::kPositions, grid.tiles(), in_channels}, input.options());
  winograd::transform_input(contiguous_input.data_ptr<float>(), grid, in_channels,
                            transformed_input.data_ptr<float>());
  const auto products = winograd_products(transformed_input, transformed);
  transformed_input = torch::Tensor();  // freed before the output is allocated
  auto output = torch::empty({grid.batch, out_channels, grid.height, grid.width}, input.options());
  const auto bias_values =
      bias.defined() ? bias.detach().to(torch::kFloat32).contiguous() : torch::Tensor();
  winograd::transform_output(products.data_ptr<float>(), grid, out_channels,
                             bias_values.defined() ? bias_values.data_ptr<float>() : nullptr,
                             output.data_ptr<float>());
  return output;
}

// The recorded form: forward by Winograd; the input gradient (a convolution of the output
// gradient with the reversed, channel-swapped filter) by Winograd; weight and bias gradients,
// should anything ask for them, by libtorch's convolution backward.
// The bias is an optional (absent for a layer without one): Function::apply refuses an
// undefined tensor argument.
class WinogradConvolution : public torch::autograd::Function<WinogradConvolution> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context,
                               const torch::Tensor& input, const torch::Tensor& weight,
                               const c10::optional<torch::Tensor>& bias) {
    context->save_for_backward({input, weight});
    context->saved_data["has_bias"] = bias.has_value();
    return convolve(input, transformed_filter(weight, false), bias.value_or(torch::Tensor()));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list output_gradients) {
    const auto saved = context->get_saved_variables();
    const auto &input = saved[0], &weight = saved[1];
    const auto gradient = output_gradients[0].contiguous();
    torch::Tensor input_gradient, weight_gradient, bias_gradient;
    if (context->needs_input_grad(0))
      input_gradient = convolve(gradient, transformed_filter(weight, true), {});
    const bool has_bias = context->saved_data["has_bias"].toBool();
    const bool wants_weight = context->needs_input_grad(1),
               wants_bias = has_bias && context->needs_input_grad(2);
    if (wants_weight || wants_bias) {
      const auto parts = at::convolution_backward(
          gradient, input, weight, std::vector<int64_t>{weight.size(0)}, {1, 1}, {1, 1}, {1, 1},
          false, {0, 0}, 1, {false, wants_weight, wants_bias});
      weight_gradient = std::get<1>(parts);
      bias_gradient = std::get<2>(parts);
    }
    return {input_gradient, weight_gradient, bias_gradient};
  }
};

}  // namespace

// auto's choice: Winograd where oneDNN's convolutions are at most AVX2 wide, and on wider CPUs
// where the products run on oneDNN's matrix product (at the CPU's full width, as its
// convolutions do: the BLAS libtorch is given may be held to narrower kernels).
bool winograd_by_default(const std::string& onednn_isa) {
  return onednn_isa == "sse41" || onednn_isa == "avx" || onednn_isa == "avx2" ||
         onednn_isa == "avx2_vnni" || winograd_products_backend() == WinogradProducts::OneDnn;
}

void set_winograd_enabled(bool enabled) { g_enabled = enabled ? 1 : 0; }
bool winograd_enabled() {
  if (g_enabled < 0) set_winograd_enabled(winograd_by_default(onednn_cpu_isa()));
  return g_enabled == 1;
}

bool onednn_products_available() { return onednn_sgemm() != nullptr; }
void set_winograd_products_backend(WinogradProducts backend) {
  if (backend == WinogradProducts::OneDnn && !onednn_products_available())
    throw InputError("oneDNN's dnnl_sgemm is not exported by this libtorch");
  g_products = static_cast<int>(backend);
}
WinogradProducts winograd_products_backend() {
  if (g_products < 0)
    g_products = static_cast<int>(onednn_products_available() ? WinogradProducts::OneDnn
                                                              : WinogradProducts::Blas);
  return static_cast<WinogradProducts>(g_products.load());
}
void set_winograd_min_pixels(int64_t pixels) { g_min_pixels = pixels; }
int64_t winograd_min_pixels() { return g_min_pixels; }
int64_t winograd_calls() { return g_calls; }
int64_t winograd_onednn_product_calls() { return g_onednn_product_calls; }

void configure_convolutions(const std::string& requested) {
  const char* products = std::getenv("GUIDIFF_WINOGRAD_PRODUCTS");
  const std::string products_choice = products != nullptr && *products != '\0' ? products : "auto";
  if (products_choice == "auto") {
    g_products = -1;  // resolved on first use
  } else if (products_choice == "onednn") {
    set_winograd_products_backend(WinogradProducts::OneDnn);
  } else if (products_choice == "blas") {
    set_winograd_products_backend(WinogradProducts::Blas);
  } else {
    throw InputError("GUIDIFF_WINOGRAD_PRODUCTS must be auto, onednn or blas, got '" +
                     products_choice + "'");
  }
  const char* variable = std::getenv("GUIDIFF_CONV");
  const bool from_flag = !requested.empty();
  const std::string choice = from_flag                                  ? requested
                             : variable != nullptr && *variable != '\0' ? variable
                                                                        : "auto";
  if (choice != "winograd" && choice != "direct" && choice != "auto") {
    throw InputError(std::string(from_flag ? "--conv" : "GUIDIFF_CONV") +
                     " must be auto, winograd or direct, got '" + choice + "'");
  }
  set_winograd_enabled(choice == "winograd" ||
                       (choice == "auto" && winograd_by_default(onednn_cpu_isa())));
  g_choice = choice;
}

std::string convolution_summary() {
  const std::string what =
      winograd_enabled()
          ? "Winograd F(4x4,3x3) for float32 3x3 sampling convolutions on images from " +
                std::to_string(winograd_min_pixels()) +
                " pixels, and on smaller ones in calls of " +
                std::to_string(kWinogradMinTilesPerCall) + " tiles or more with " +
                std::to_string(kWinogradMinChannelsPerCall) + " channels or more"
          : std::string("libtorch's convolutions");
  const std::string products = winograd_enabled()
                                   ? (winograd_products_backend() == WinogradProducts::OneDnn
                                          ? ", products by oneDNN's sgemm"
                                          : ", products by libtorch's BLAS")
                                   : "";
  if (g_choice.empty()) return what + products + " (not configured: the library's auto choice)";
  return g_choice + ": " + what + products +
         (g_choice == "auto" ? " (oneDNN runs " + onednn_cpu_isa() + " kernels)" : "");
}

InputGradientsOnly::InputGradientsOnly() : previous_(t_input_gradients_only) {
  t_input_gradients_only = true;
}
InputGradientsOnly::~InputGradientsOnly() { t_input_gradients_only = previous_; }

torch::Tensor winograd_conv3x3(const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias) {
  TORCH_CHECK(input.dim() == 4 && input.scalar_type() == torch::kFloat32 && input.device().is_cpu(),
              "winograd_conv3x3 needs a float32 CPU [N, C, H, W] input");
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(1) == input.size(1) && weight.size(2) == 3 &&
          weight.size(3) == 3 && weight.scalar_type() == torch::kFloat32,
      "winograd_conv3x3 needs a float32 [C_out, C_in, 3, 3] filter matching the input's channels");
  TORCH_CHECK(weight.size(0) % winograd::kLanes == 0 && weight.size(1) % winograd::kLanes == 0,
              "winograd_conv3x3 needs channel counts that are multiples of ", winograd::kLanes);
  torch::NoGradGuard no_grad;
  return convolve(input, transformed_filter(weight, false), bias);
}

bool winograd_applies(const torch::Tensor& input, const torch::Tensor& weight) {
  if (!winograd_enabled()) return false;
  if (input.dim() != 4 || !input.device().is_cpu() || input.scalar_type() != torch::kFloat32 ||
      weight.scalar_type() != torch::kFloat32 || !weight.device().is_cpu())
    return false;
  if (cpu_autocast_type()) return false;
  if (torch::autograd::compute_requires_grad(input, weight) && !t_input_gradients_only)
    return false;
  const int64_t in_channels = weight.size(1), out_channels = weight.size(0);
  if (input.size(1) != in_channels || in_channels % winograd::kLanes != 0 ||
      out_channels % winograd::kLanes != 0)
    return false;
  if (input.size(2) * input.size(3) >= winograd_min_pixels()) return true;
  const winograd::TileGrid grid{input.size(0), input.size(2), input.size(3)};
  return grid.tiles() >= kWinogradMinTilesPerCall &&
         std::min(in_channels, out_channels) >= kWinogradMinChannelsPerCall;
}

Conv3x3Impl::Conv3x3Impl(int64_t in_channels, int64_t out_channels, bool with_bias)
    : torch::nn::Conv2dImpl(
          torch::nn::Conv2dOptions(in_channels, out_channels, 3).padding(1).bias(with_bias)) {}

torch::Tensor Conv3x3Impl::forward(const torch::Tensor& input) {
  if (!winograd_applies(input, weight)) return torch::nn::Conv2dImpl::forward(input);
  if (torch::autograd::compute_requires_grad(input, weight, bias))
    return WinogradConvolution::apply(
        input, weight, bias.defined() ? c10::optional<torch::Tensor>(bias) : c10::nullopt);
  return convolve(input, transformed_filter(weight, false), bias);
}

}  // namespace guidiff
