// The FID Inception-v3 network (see fid_inception.hpp). Layer shapes follow Szegedy et al. 2016
// (Figures 5-7 and Table 1) as torchvision lays them out, under pytorch-fid's names.
#include "guidiff/eval/fid_inception.hpp"

#include <cmath>

#include "guidiff/core/errors.hpp"
#include "guidiff/core/text.hpp"
#include "guidiff/io/pt_file.hpp"

namespace guidiff {
namespace fid_inception_detail {
namespace {

namespace F = torch::nn::functional;

// 3x3, stride 1, padding 1: the pool branches of the A, C and E blocks. TensorFlow's
// SAME-padded average pool divides each window by the pixels it covers inside the image.
torch::Tensor pool_branch_input(const torch::Tensor& x, PoolBranch pool) {
  if (pool == PoolBranch::max) return F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(1).padding(1));
  return F::avg_pool2d(x, F::AvgPool2dFuncOptions(3).stride(1).padding(1).count_include_pad(false));
}

// 3x3, stride 2, no padding: the stem's pools and the grid reductions' pool branches.
torch::Tensor reduce_max_pool(const torch::Tensor& x) { return F::max_pool2d(x, F::MaxPool2dFuncOptions(3).stride(2)); }

}  // namespace

ConvBnReluImpl::ConvBnReluImpl(int64_t in, int64_t out, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                               std::vector<int64_t> padding) {
  conv_ = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, torch::IntArrayRef(kernel))
                                                        .stride(torch::IntArrayRef(stride))
                                                        .padding(torch::IntArrayRef(padding))
                                                        .bias(false)));
  bn_ = register_module("bn", torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(out).eps(0.001)));
}

torch::Tensor ConvBnReluImpl::forward(const torch::Tensor& x) { return torch::relu(bn_(conv_(x))); }

BlockAImpl::BlockAImpl(int64_t in, int64_t pool_features) {
  branch1x1_ = register_module("branch1x1", ConvBnRelu(in, 64, std::vector<int64_t>{1, 1}));
  branch5x5_1_ = register_module("branch5x5_1", ConvBnRelu(in, 48, std::vector<int64_t>{1, 1}));
  branch5x5_2_ = register_module("branch5x5_2", ConvBnRelu(48, 64, std::vector<int64_t>{5, 5}, std::vector<int64_t>{1, 1}, std::vector<int64_t>{2, 2}));
  branch3x3dbl_1_ = register_module("branch3x3dbl_1", ConvBnRelu(in, 64, std::vector<int64_t>{1, 1}));
  branch3x3dbl_2_ = register_module("branch3x3dbl_2", ConvBnRelu(64, 96, std::vector<int64_t>{3, 3}, std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}));
  branch3x3dbl_3_ = register_module("branch3x3dbl_3", ConvBnRelu(96, 96, std::vector<int64_t>{3, 3}, std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}));
  branch_pool_ = register_module("branch_pool", ConvBnRelu(in, pool_features, std::vector<int64_t>{1, 1}));
}

torch::Tensor BlockAImpl::forward(const torch::Tensor& x) {
  return torch::cat({branch1x1_(x), branch5x5_2_(branch5x5_1_(x)), branch3x3dbl_3_(branch3x3dbl_2_(branch3x3dbl_1_(x))),
                     branch_pool_(pool_branch_input(x, PoolBranch::average_excluding_padding))},
                    1);
}

BlockBImpl::BlockBImpl(int64_t in) {
  branch3x3_ = register_module("branch3x3", ConvBnRelu(in, 384, std::vector<int64_t>{3, 3}, std::vector<int64_t>{2, 2}));
  branch3x3dbl_1_ = register_module("branch3x3dbl_1", ConvBnRelu(in, 64, std::vector<int64_t>{1, 1}));
  branch3x3dbl_2_ = register_module("branch3x3dbl_2", ConvBnRelu(64, 96, std::vector<int64_t>{3, 3}, std::vector<int64_t>{1, 1}, std::vector<int64_t>{1, 1}));
  branch3x3dbl_3_ = register_module("branch3x3dbl_3", ConvBnRelu(96, 96, std::vector<int64_t>{3, 3}, std::vector<int64_t>{2, 2}));
}

torch::Tensor BlockBImpl::forward(const torch::Tensor& x) {
  return torch::cat({branch3x3_(x), branch3x3dbl_3_(branch3x3dbl_2_(branch3x3dbl_1_(x))), reduce_max_pool(x)}, 1);
}

BlockCImpl::BlockCImpl(int64_t in, int64_t c7) {
  const std::vector<int64_t> one{1, 1}, row{1, 7}, column{7, 1}, row_pad{0, 3}, column_pad{3, 0};
  branch1x1_ = register_module("branch1x1", ConvBnRelu(in, 192, one));
  branch7x7_1_ = register_module("branch7x7_1", ConvBnRelu(in, c7, one));
  branch7x7_2_ = register_module("branch7x7_2", ConvBnRelu(c7, c7, row, one, row_pad));
  branch7x7_3_ = register_module("branch7x7_3", ConvBnRelu(c7, 192, column, one, column_pad));
  branch7x7dbl_1_ = register_module("branch7x7dbl_1", ConvBnRelu(in, c7, one));
  branch7x7dbl_2_ = register_module("branch7x7dbl_2", ConvBnRelu(c7, c7, column, one, column_pad));
  branch7x7dbl_3_ = register_module("branch7x7dbl_3", ConvBnRelu(c7, c7, row, one, row_pad));
  branch7x7dbl_4_ = register_module("branch7x7dbl_4", ConvBnRelu(c7, c7, column, one, column_pad));
  branch7x7dbl_5_ = register_module("branch7x7dbl_5", ConvBnRelu(c7, 192, row, one, row_pad));
  branch_pool_ = register_module("branch_pool", ConvBnRelu(in, 192, one));
}

torch::Tensor BlockCImpl::forward(const torch::Tensor& x) {
  const torch::Tensor seven = branch7x7_3_(branch7x7_2_(branch7x7_1_(x)));
  const torch::Tensor double_seven =
      branch7x7dbl_5_(branch7x7dbl_4_(branch7x7dbl_3_(branch7x7dbl_2_(branch7x7dbl_1_(x)))));
  return torch::cat(
      {branch1x1_(x), seven, double_seven, branch_pool_(pool_branch_input(x, PoolBranch::average_excluding_padding))},
      1);
}

BlockDImpl::BlockDImpl(int64_t in) {
  const std::vector<int64_t> one{1, 1}, three{3, 3}, two{2, 2};
  branch3x3_1_ = register_module("branch3x3_1", ConvBnRelu(in, 192, one));
  branch3x3_2_ = register_module("branch3x3_2", ConvBnRelu(192, 320, three, two));
  branch7x7x3_1_ = register_module("branch7x7x3_1", ConvBnRelu(in, 192, one));
  branch7x7x3_2_ = register_module("branch7x7x3_2", ConvBnRelu(192, 192, std::vector<int64_t>{1, 7}, one, std::vector<int64_t>{0, 3}));
  branch7x7x3_3_ = register_module("branch7x7x3_3", ConvBnRelu(192, 192, std::vector<int64_t>{7, 1}, one, std::vector<int64_t>{3, 0}));
  branch7x7x3_4_ = register_module("branch7x7x3_4", ConvBnRelu(192, 192, three, two));
}

torch::Tensor BlockDImpl::forward(const torch::Tensor& x) {
  return torch::cat({branch3x3_2_(branch3x3_1_(x)), branch7x7x3_4_(branch7x7x3_3_(branch7x7x3_2_(branch7x7x3_1_(x)))),
                     reduce_max_pool(x)},
                    1);
}

BlockEImpl::BlockEImpl(int64_t in, PoolBranch pool) : pool_(pool) {
  const std::vector<int64_t> one{1, 1}, row{1, 3}, column{3, 1};
  branch1x1_ = register_module("branch1x1", ConvBnRelu(in, 320, one));
  branch3x3_1_ = register_module("branch3x3_1", ConvBnRelu(in, 384, one));
  branch3x3_2a_ = register_module("branch3x3_2a", ConvBnRelu(384, 384, row, one, std::vector<int64_t>{0, 1}));
  branch3x3_2b_ = register_module("branch3x3_2b", ConvBnRelu(384, 384, column, one, std::vector<int64_t>{1, 0}));
  branch3x3dbl_1_ = register_module("branch3x3dbl_1", ConvBnRelu(in, 448, one));
  branch3x3dbl_2_ = register_module("branch3x3dbl_2", ConvBnRelu(448, 384, std::vector<int64_t>{3, 3}, one, one));
  branch3x3dbl_3a_ = register_module("branch3x3dbl_3a", ConvBnRelu(384, 384, row, one, std::vector<int64_t>{0, 1}));
  branch3x3dbl_3b_ = register_module("branch3x3dbl_3b", ConvBnRelu(384, 384, column, one, std::vector<int64_t>{1, 0}));
  branch_pool_ = register_module("branch_pool", ConvBnRelu(in, 192, one));
}

torch::Tensor BlockEImpl::forward(const torch::Tensor& x) {
  const torch::Tensor three = branch3x3_1_(x);
  const torch::Tensor double_three = branch3x3dbl_2_(branch3x3dbl_1_(x));
  return torch::cat({branch1x1_(x), torch::cat({branch3x3_2a_(three), branch3x3_2b_(three)}, 1),
                     torch::cat({branch3x3dbl_3a_(double_three), branch3x3dbl_3b_(double_three)}, 1),
                     branch_pool_(pool_branch_input(x, pool_))},
                    1);
}

}  // namespace fid_inception_detail

using namespace fid_inception_detail;

FidInceptionImpl::FidInceptionImpl() {
  const std::vector<int64_t> one{1, 1}, three{3, 3}, two{2, 2};
  conv1a_ = register_module("Conv2d_1a_3x3", ConvBnRelu(3, 32, three, two));
  conv2a_ = register_module("Conv2d_2a_3x3", ConvBnRelu(32, 32, three));
  conv2b_ = register_module("Conv2d_2b_3x3", ConvBnRelu(32, 64, three, one, one));
  conv3b_ = register_module("Conv2d_3b_1x1", ConvBnRelu(64, 80, one));
  conv4a_ = register_module("Conv2d_4a_3x3", ConvBnRelu(80, 192, three));
  mixed5b_ = register_module("Mixed_5b", BlockA(192, 32));
  mixed5c_ = register_module("Mixed_5c", BlockA(256, 64));
  mixed5d_ = register_module("Mixed_5d", BlockA(288, 64));
  mixed6a_ = register_module("Mixed_6a", BlockB(288));
  mixed6b_ = register_module("Mixed_6b", BlockC(768, 128));
  mixed6c_ = register_module("Mixed_6c", BlockC(768, 160));
  mixed6d_ = register_module("Mixed_6d", BlockC(768, 160));
  mixed6e_ = register_module("Mixed_6e", BlockC(768, 192));
  mixed7a_ = register_module("Mixed_7a", BlockD(768));
  mixed7b_ = register_module("Mixed_7b", BlockE(1280, PoolBranch::average_excluding_padding));
  mixed7c_ = register_module("Mixed_7c", BlockE(2048, PoolBranch::max));
  fc_ = register_module("fc", torch::nn::Linear(kFidInceptionPoolDim, kFidInceptionClasses));
  eval();
}

FidInceptionOutputs FidInceptionImpl::forward(const torch::Tensor& input) {
  torch::Tensor x = conv2b_(conv2a_(conv1a_(input)));       // 147 x 147
  x = conv4a_(conv3b_(reduce_max_pool(x)));            // 71 x 71
  x = mixed5d_(mixed5c_(mixed5b_(reduce_max_pool(x))));  // 35 x 35
  x = mixed6d_(mixed6c_(mixed6b_(mixed6a_(x))));            // 17 x 17
  FidInceptionOutputs outputs;
  // Channels 0..6 of Mixed_6d are its branch1x1's (TF mixed_6/conv); NCHW -> (H, W, C) order.
  outputs.spatial = x.slice(1, 0, kFidInceptionSpatialChannels).permute({0, 2, 3, 1}).reshape({x.size(0), -1});
  x = mixed7c_(mixed7b_(mixed7a_(mixed6e_(x))));  // 8 x 8
  outputs.pool3 = x.mean({2, 3});
  outputs.logits = fc_(outputs.pool3);
  return outputs;
}

torch::Tensor FidInceptionImpl::score_probabilities(const torch::Tensor& pool3) {
  return torch::softmax(pool3.mm(fc_->weight.t()), 1);
}

torch::Tensor fid_inception_input(const torch::Tensor& images) {
  if (!images.defined() || images.dim() != 4 || images.size(0) == 0 || (images.size(1) != 1 && images.size(1) != 3) ||
      !images.is_floating_point()) {
    throw InputError("the FID Inception network takes floating images [N, C, H, W] with C = 1 or 3, got " +
                     shape_string(images));
  }
  torch::Tensor x = images.to(torch::kFloat32);
  if (x.size(1) == 1) x = x.expand({-1, 3, -1, -1});
  namespace F = torch::nn::functional;
  return F::interpolate(x, F::InterpolateFuncOptions()
                               .size(std::vector<int64_t>{kFidInceptionSize, kFidInceptionSize})
                               .mode(torch::kBilinear)
                               .align_corners(false))
      .contiguous();
}

namespace {

bool loaded_by_name(const std::string& name) {
  const std::string skipped = "num_batches_tracked";
  return name.size() < skipped.size() || name.compare(name.size() - skipped.size(), skipped.size(), skipped) != 0;
}

std::vector<std::pair<std::string, torch::Tensor>> loaded_tensors(FidInception& network) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& item : network->named_parameters()) tensors.emplace_back(item.key(), item.value());
  for (const auto& item : network->named_buffers()) {
    if (loaded_by_name(item.key())) tensors.emplace_back(item.key(), item.value());
  }
  return tensors;
}

}  // namespace

std::vector<std::pair<std::string, std::vector<int64_t>>> fid_inception_tensor_shapes(FidInception& network) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes;
  for (const auto& [name, tensor] : loaded_tensors(network)) shapes.emplace_back(name, tensor.sizes().vec());
  return shapes;
}

void load_fid_inception_tensors(FidInception& network, const std::function<torch::Tensor(const std::string&)>& lookup,
                                const std::string& source) {
  torch::NoGradGuard no_grad;
  for (auto& [name, target] : loaded_tensors(network)) {
    const torch::Tensor value = lookup(name);
    if (!value.defined()) {
      throw FileError(source + ": tensor '" + name +
                      "' is missing (not pytorch-fid's FID Inception weights pt_inception-2015-12-05-6726825d.pth?)");
    }
    if (value.sizes() != target.sizes()) {
      throw FileError(source + ": tensor '" + name + "' has shape " + c10::str(value.sizes()) +
                      " but the FID Inception network needs " + c10::str(target.sizes()));
    }
    if (!value.is_floating_point()) {
      throw FileError(source + ": tensor '" + name + "' is " + c10::toString(value.scalar_type()) +
                      ", not floating point");
    }
    if (!torch::isfinite(value).all().item<bool>()) {
      throw FileError(source + ": tensor '" + name + "' holds NaN or infinity");
    }
    target.copy_(value.to(torch::kFloat32));
  }
  network->eval();
}

FidInception load_fid_inception(const std::string& path) {
  const PtStateDict file(path);  // FileError naming the file
  FidInception network;
  load_fid_inception_tensors(
      network,
      [&file](const std::string& name) {
        const PtTensorInfo* info = file.find(name);
        return info == nullptr ? torch::Tensor() : file.read(*info);
      },
      "FID Inception weights '" + path + "'");
  return network;
}

}  // namespace guidiff
