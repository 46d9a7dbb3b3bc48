// 3x3 convolutions (stride 1, padding 1) by Winograd's minimal filtering algorithm F(4x4, 3x3)
// (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks", Eq. 8-10, with the
// interpolation points 0, 1, -1, 2, -2 and infinity). Each 4x4 output tile is
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A
// summed over input channels, where d is the 6x6 input tile and g the 3x3 filter. The sum over
// channels is one matrix product per tile position (36 of them), so a layer costs 36 products
// of [tiles x C_in] by [C_in x C_out]: 36 multiplications per output tile and channel pair
// instead of 9 * 16 = 144, done by the BLAS at its matrix-product speed.
//
// Why: at the released guided-diffusion models' sizes nearly all of a forward is 3x3
// convolutions that libtorch's direct (oneDNN) kernels already run near the CPU's peak; the
// only way to be faster is less arithmetic. The price is rounding: the transforms' constants
// (up to 8 and 1/24) make the float32 error a few times that of a direct convolution
// (tests/test_winograd_conv.cpp bounds it from the arithmetic). The filter is transformed at
// every call (a few ms, against the hundreds the layer takes), so no second copy of the weights
// is kept. Only where nothing needs weight gradients: sampling, and the classifier guidance
// gradient (InputGradientsOnly); training and autocast keep libtorch's convolution.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>

namespace guidiff {

// Whether Conv3x3 layers may use the Winograd path. Until set (or configure_convolutions
// runs, as the CLI's start-up does) it is auto's choice below. Off, results are bit for bit
// libtorch's convolution.
void set_winograd_enabled(bool enabled);
bool winograd_enabled();

// Where the 36 matrix products of a Winograd convolution run. OneDnn: oneDNN's sgemm, from the
// oneDNN libtorch loads, which runs at the CPU's full vector width (as oneDNN's convolutions do;
// Debian's OpenBLAS may be held to AVX2 kernels by OPENBLAS_CORETYPE on newer CPUs): Winograd
// layers ran 1.5-1.7x as fast as on libtorch's bmm with AVX-512, and the whole 64x64 model 1.08x
// as fast with AVX2 kernels (docs/performance.md, "Products on oneDNN's sgemm"). Blas:
// torch::bmm, libtorch's BLAS. The default is OneDnn where libtorch exports dnnl_sgemm.
enum class WinogradProducts { Blas = 0, OneDnn = 1 };
// Throws InputError for OneDnn where dnnl_sgemm is not there.
void set_winograd_products_backend(WinogradProducts backend);
WinogradProducts winograd_products_backend();
bool onednn_products_available();

// Sets winograd_enabled() from `requested` ("winograd", "direct" or "auto"), else from the
// GUIDIFF_CONV environment variable, else "auto", and the products' backend from
// GUIDIFF_WINOGRAD_PRODUCTS (onednn, blas or auto). auto takes Winograd where oneDNN runs its
// convolutions at AVX2 width or narrower (Winograd layers ran 1.4-2x as fast as oneDNN's there),
// and on wider CPUs where the products run on oneDNN's sgemm (1.45-2.16x as fast as oneDNN's
// AVX-512 convolutions); with AVX-512 convolutions and the products on a BLAS held to AVX2, the
// gain was at most 1.5x and sometimes a loss, so auto keeps libtorch's convolution there
// (docs/performance.md, "Winograd convolutions"). Throws InputError naming any other value.
void configure_convolutions(const std::string& requested);
// The choice configure_convolutions made, and why, in one line (`guidiff info`).
std::string convolution_summary();

// The smallest image (height * width) a layer always takes the Winograd path for. Below it the
// transforms cost about what the multiplications save (docs/performance.md, "Winograd
// convolutions"). Tests lower it to exercise the path on tiny models.
void set_winograd_min_pixels(int64_t pixels);
int64_t winograd_min_pixels();

// Smaller images (the 64x64 model's 16x16 and 8x8 layers) take the Winograd path where one call
// holds at least this many 4x4 output tiles over its batch and both channel counts are at least
// kWinogradMinChannelsPerCall. The filter transform is paid once per call, so what decides is
// the tiles it is spread over: with AVX2 kernels a 576-channel 16x16 layer ran 1.7x as fast at
// batch 4 (64 tiles) and lost at batch 1 (16 tiles), as did a 768-channel 8x8 layer at batch 4
// (16 tiles). The input and output transforms cost per channel what the products save per
// channel pair, so narrow layers gain little: 0.99-1.16x at 64 and 128 channels, which keeps
// the default Fashion-MNIST models (28x28, 64-128 channels) on libtorch's convolution.
// The choice then depends on the batch: an image's outputs at batch 1 and batch 4 agree to
// float32 rounding, not bit for bit, as they already do when oneDNN or the BLAS picks its
// blocking by shape (docs/formats.md).
constexpr int64_t kWinogradMinTilesPerCall = 64;
constexpr int64_t kWinogradMinChannelsPerCall = 256;

// How many convolutions have taken the Winograd path in this process, and how many of them ran
// their products on oneDNN's sgemm (tests check that each ran).
int64_t winograd_calls();
int64_t winograd_onednn_product_calls();

// While one lives, autograd on this thread will only be asked for gradients with respect to
// network inputs, never weights (the classifier guidance gradient, d log p(y | x_t) / d x_t), so
// Conv3x3 layers may record Winograd convolutions, whose backward pass is a Winograd
// convolution too. Weight gradients, if asked for after all, still come out right (from
// libtorch's convolution backward).
class InputGradientsOnly {
 public:
  InputGradientsOnly();
  ~InputGradientsOnly();
  InputGradientsOnly(const InputGradientsOnly&) = delete;
  InputGradientsOnly& operator=(const InputGradientsOnly&) = delete;

 private:
  bool previous_;
};

// conv2d(input, weight, bias, stride 1, padding 1) for a float32 CPU [N, C_in, H, W] input and
// [C_out, C_in, 3, 3] weight, channel counts multiples of 8; bias may be undefined. Returns a
// contiguous [N, C_out, H, W] tensor. Records no autograd history.
torch::Tensor winograd_conv3x3(const torch::Tensor& input, const torch::Tensor& weight,
                               const torch::Tensor& bias);

// Whether a Conv3x3 layer runs conv2d(input, weight) by Winograd here: enabled, float32 on the
// CPU, no autocast, channel counts multiples of 8 (the transforms' vector width), an image of at
// least winograd_min_pixels() or a call of at least kWinogradMinTilesPerCall tiles with at least
// kWinogradMinChannelsPerCall channels, and either no gradient to record or an
// InputGradientsOnly scope.
bool winograd_applies(const torch::Tensor& input, const torch::Tensor& weight);

// A 3x3, stride 1, padding 1 convolution with torch::nn::Conv2d's parameters (and names, so
// checkpoints are unchanged) that runs by Winograd where winograd_applies. Without a bias its
// state holds the weight alone, as torch::nn::Conv2d with bias(false).
class Conv3x3Impl : public torch::nn::Conv2dImpl {
 public:
  Conv3x3Impl(int64_t in_channels, int64_t out_channels, bool with_bias = true);
  torch::Tensor forward(const torch::Tensor& input);
};
TORCH_MODULE(Conv3x3);

}  // namespace guidiff
