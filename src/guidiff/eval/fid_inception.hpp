// The FID Inception-v3 network: Inception-v3 (Szegedy et al. 2016, "Rethinking the Inception
// Architecture for Computer Vision") as frozen in TensorFlow's 2015-12-05 graph, the network
// behind FID (Heusel et al. 2017), sFID (Nash et al. 2021), the Inception Score (Salimans et
// al. 2016) and improved precision/recall (Kynkaanniemi et al. 2019) as papers report them.
//
// It is torchvision's Inception-v3 with the changes that reproduce that graph (as pytorch-fid
// describes them): 1008 logits; the 3x3 average pools of the A, C and first E blocks divide by
// the pixels inside the image only (TensorFlow's SAME-padded AvgPool); the last E block pools
// its pool branch with a 3x3 max. Parameter and buffer names are pytorch-fid's, so its weight
// file pt_inception-2015-12-05-6726825d.pth (a torch.save state dict) loads as it is.
//
// Preprocessing (fid_inception_input) follows pytorch-fid: images in [-1, 1] (x_uint8 / 127.5
// - 1, the same affine map as pytorch-fid's 2 (x / 255) - 1), grey replicated to 3 channels,
// bilinear resize to 299 x 299 with align_corners = false. docs/evaluation.md says where the
// TensorFlow graph's own resize differs.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace guidiff {

constexpr int64_t kFidInceptionSize = 299;          // input side
constexpr int64_t kFidInceptionPoolDim = 2048;      // pool3
constexpr int64_t kFidInceptionClasses = 1008;      // logits
constexpr int64_t kFidInceptionSpatialChannels = 7; // sFID: channels of mixed_6/conv kept
constexpr int64_t kFidInceptionSpatialSide = 17;
constexpr int64_t kFidInceptionSpatialDim =
    kFidInceptionSpatialChannels * kFidInceptionSpatialSide * kFidInceptionSpatialSide;  // 2023

struct FidInceptionOutputs {
  // pool3 (TF "pool_3:0"): the global average of the last block, float32 [N, 2048]. FID and
  // precision/recall features.
  torch::Tensor pool3;
  // sFID features (TF "mixed_6/conv:0"[..., :7]): channels 0..6 of the ReLU output of the 1x1
  // branch of the fourth 17x17 block (TF mixed_6 = torchvision Mixed_6d; its branch1x1 is the
  // first slice of the block's concatenated output), flattened in (H, W, C) order, the order of
  // TF's NHWC tensor, so statistics compare with guided-diffusion's mu_s / sigma_s. float32
  // [N, 2023].
  torch::Tensor spatial;
  // fc(pool3) with its bias, float32 [N, 1008].
  torch::Tensor logits;
};

namespace fid_inception_detail {

// Convolution without bias, batch norm (eps 1e-3) and ReLU: torchvision's BasicConv2d,
// submodules "conv" and "bn".
class ConvBnReluImpl : public torch::nn::Module {
 public:
  ConvBnReluImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, std::vector<int64_t> stride = {1, 1},
                 std::vector<int64_t> padding = {0, 0});
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d conv_{nullptr};
  torch::nn::BatchNorm2d bn_{nullptr};
};
TORCH_MODULE(ConvBnRelu);

// How a block's pool branch pools (3x3, stride 1, padding 1).
enum class PoolBranch { average_excluding_padding, max };

// Mixed_5b/5c/5d (torchvision InceptionA, FID average pool).
class BlockAImpl : public torch::nn::Module {
 public:
  BlockAImpl(int64_t in, int64_t pool_features);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  ConvBnRelu branch1x1_{nullptr}, branch5x5_1_{nullptr}, branch5x5_2_{nullptr}, branch3x3dbl_1_{nullptr},
      branch3x3dbl_2_{nullptr}, branch3x3dbl_3_{nullptr}, branch_pool_{nullptr};
};
TORCH_MODULE(BlockA);

// Mixed_6a (InceptionB): 35x35 -> 17x17.
class BlockBImpl : public torch::nn::Module {
 public:
  explicit BlockBImpl(int64_t in);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  ConvBnRelu branch3x3_{nullptr}, branch3x3dbl_1_{nullptr}, branch3x3dbl_2_{nullptr}, branch3x3dbl_3_{nullptr};
};
TORCH_MODULE(BlockB);

// Mixed_6b..6e (InceptionC, FID average pool); output channels 0..191 are branch1x1's.
class BlockCImpl : public torch::nn::Module {
 public:
  BlockCImpl(int64_t in, int64_t channels_7x7);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  ConvBnRelu branch1x1_{nullptr}, branch7x7_1_{nullptr}, branch7x7_2_{nullptr}, branch7x7_3_{nullptr},
      branch7x7dbl_1_{nullptr}, branch7x7dbl_2_{nullptr}, branch7x7dbl_3_{nullptr}, branch7x7dbl_4_{nullptr},
      branch7x7dbl_5_{nullptr}, branch_pool_{nullptr};
};
TORCH_MODULE(BlockC);

// Mixed_7a (InceptionD): 17x17 -> 8x8.
class BlockDImpl : public torch::nn::Module {
 public:
  explicit BlockDImpl(int64_t in);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  ConvBnRelu branch3x3_1_{nullptr}, branch3x3_2_{nullptr}, branch7x7x3_1_{nullptr}, branch7x7x3_2_{nullptr},
      branch7x7x3_3_{nullptr}, branch7x7x3_4_{nullptr};
};
TORCH_MODULE(BlockD);

// Mixed_7b (average pool, FID) and Mixed_7c (max pool) (InceptionE).
class BlockEImpl : public torch::nn::Module {
 public:
  BlockEImpl(int64_t in, PoolBranch pool);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  PoolBranch pool_;
  ConvBnRelu branch1x1_{nullptr}, branch3x3_1_{nullptr}, branch3x3_2a_{nullptr}, branch3x3_2b_{nullptr},
      branch3x3dbl_1_{nullptr}, branch3x3dbl_2_{nullptr}, branch3x3dbl_3a_{nullptr}, branch3x3dbl_3b_{nullptr},
      branch_pool_{nullptr};
};
TORCH_MODULE(BlockE);

}  // namespace fid_inception_detail

class FidInceptionImpl : public torch::nn::Module {
 public:
  // Built in eval mode with uninitialised-looking default weights: load a state dict before use.
  FidInceptionImpl();
  // x: float32 [N, 3, 299, 299] in [-1, 1] (fid_inception_input's output).
  FidInceptionOutputs forward(const torch::Tensor& x);
  // The Inception Score's class probabilities: softmax(pool3 W^T) with the fc weight W and no
  // bias, as the original IS code (Salimans et al. 2016) and guided-diffusion's evaluator
  // compute them from TF's "softmax/logits/MatMul". float32 [N, 1008].
  torch::Tensor score_probabilities(const torch::Tensor& pool3);

 private:
  fid_inception_detail::ConvBnRelu conv1a_{nullptr}, conv2a_{nullptr}, conv2b_{nullptr}, conv3b_{nullptr},
      conv4a_{nullptr};
  fid_inception_detail::BlockA mixed5b_{nullptr}, mixed5c_{nullptr}, mixed5d_{nullptr};
  fid_inception_detail::BlockB mixed6a_{nullptr};
  fid_inception_detail::BlockC mixed6b_{nullptr}, mixed6c_{nullptr}, mixed6d_{nullptr}, mixed6e_{nullptr};
  fid_inception_detail::BlockD mixed7a_{nullptr};
  fid_inception_detail::BlockE mixed7b_{nullptr}, mixed7c_{nullptr};
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(FidInception);

// pytorch-fid's preprocessing of images float [N, C, H, W] in [-1, 1], C in {1, 3}, any size:
// grey replicated to RGB, bilinear resize to 299 x 299 (align_corners = false; the identity at
// 299). Returns float32 [N, 3, 299, 299] on the images' device. Throws InputError naming the
// shape for anything else.
torch::Tensor fid_inception_input(const torch::Tensor& images);

// The (name, shape) of every tensor the network loads, in its order: pytorch-fid's state-dict
// names (BatchNorm's num_batches_tracked counters excluded; they do not affect inference).
std::vector<std::pair<std::string, std::vector<int64_t>>> fid_inception_tensor_shapes(FidInception& network);

// Fills the network from `lookup(name)` (an undefined tensor: absent), converting floating
// tensors to float32. Throws FileError "<source>: ..." naming the first tensor that is missing,
// misshaped (both shapes quoted), not floating point, or not finite. Extra tensors in the
// source are ignored.
void load_fid_inception_tensors(FidInception& network, const std::function<torch::Tensor(const std::string&)>& lookup,
                                const std::string& source);

// The network with pytorch-fid's weights read from `path` (a torch.save state dict), in eval
// mode on the CPU. Throws FileError naming the file: missing, unreadable, or not holding the
// FID Inception's tensors (load_fid_inception_tensors' messages).
FidInception load_fid_inception(const std::string& path);

}  // namespace guidiff
