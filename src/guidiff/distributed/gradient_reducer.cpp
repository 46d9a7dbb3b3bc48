// Bucketed gradient all-reduce overlapped with backward (see gradient_reducer.hpp).
#include "guidiff/distributed/gradient_reducer.hpp"

#include <chrono>

#include "guidiff/core/errors.hpp"

namespace guidiff {

GradientReducer::GradientReducer(Communicator& communicator, std::vector<torch::Tensor> parameters,
                                 int64_t bucket_bytes)
    : communicator_(communicator), parameters_(std::move(parameters)) {
  if (!communicator_.distributed()) return;
  if (bucket_bytes < 1) throw InputError("gradient buckets need bucket_bytes >= 1");
  if (parameters_.empty()) return;
  const auto dtype = parameters_.front().scalar_type();
  const auto device = parameters_.front().device();
  for (const auto& parameter : parameters_) {
    if (parameter.scalar_type() != dtype || parameter.device() != device || !parameter.is_floating_point()) {
      throw InputError("data-parallel training needs every parameter of one floating dtype and device");
    }
  }
  const auto element_bytes = static_cast<int64_t>(parameters_.front().element_size());
  bucket_of_.resize(parameters_.size());
  position_of_.resize(parameters_.size());
  arrived_.assign(parameters_.size(), false);
  // Reverse registration order: the output layers' gradients come first in backward.
  for (size_t k = parameters_.size(); k-- > 0;) {
    if (buckets_.empty() || buckets_.back().gradient_elements * element_bytes >= bucket_bytes) buckets_.emplace_back();
    Bucket& bucket = buckets_.back();
    bucket_of_[k] = buckets_.size() - 1;
    position_of_[k] = bucket.members.size();
    bucket.members.push_back(k);
    bucket.offsets.push_back(bucket.gradient_elements);
    bucket.gradient_elements += parameters_[k].numel();
  }
  // The buffers live where the backend works (the GPU for NCCL, the CPU for Gloo).
  for (Bucket& bucket : buckets_) {
    const auto elements = bucket.gradient_elements + static_cast<int64_t>(bucket.members.size());
    bucket.flat = torch::zeros({elements}, torch::TensorOptions().dtype(dtype).device(communicator_.device()));
  }
  for (size_t k = 0; k < parameters_.size(); ++k) {
    if (!parameters_[k].requires_grad()) continue;
    hooks_.push_back(parameters_[k].register_hook([this, k](torch::Tensor gradient) { on_gradient(k, gradient); }));
  }
}

GradientReducer::~GradientReducer() {
  size_t hook = 0;
  for (size_t k = 0; k < parameters_.size() && hook < hooks_.size(); ++k) {
    if (parameters_[k].requires_grad()) parameters_[k].remove_hook(hooks_[hook++]);
  }
}

void GradientReducer::prepare() {
  if (buckets_.empty()) return;
  std::lock_guard<std::mutex> lock(mutex_);
  for (Bucket& bucket : buckets_) {
    bucket.flat.zero_();
    bucket.waiting = static_cast<int64_t>(bucket.members.size());
  }
  std::fill(arrived_.begin(), arrived_.end(), false);
  next_to_start_ = 0;
  active_ = true;
}

void GradientReducer::on_gradient(size_t parameter, const torch::Tensor& gradient) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!active_ || arrived_[parameter]) return;  // outside a prepared step, or a second backward
  arrived_[parameter] = true;
  Bucket& bucket = buckets_[bucket_of_[parameter]];
  const size_t position = position_of_[parameter];
  const int64_t numel = parameters_[parameter].numel();
  {
    torch::NoGradGuard no_grad;
    bucket.flat.narrow(0, bucket.offsets[position], numel).copy_(gradient.reshape({-1}));
    bucket.flat[bucket.gradient_elements + static_cast<int64_t>(position)].fill_(1);
  }
  if (--bucket.waiting == 0) start_ready_buckets();
}

void GradientReducer::start_ready_buckets() {
  while (next_to_start_ < buckets_.size() && buckets_[next_to_start_].waiting == 0) start(buckets_[next_to_start_++]);
}

void GradientReducer::start(Bucket& bucket) {
  bucket.reduction = communicator_.all_reduce_sum_async(bucket.flat, "the gradient all-reduce");
}

void GradientReducer::finish() {
  if (buckets_.empty()) return;
  const auto started = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    // Buckets with a parameter that got no gradient here: start them now, in order (their
    // missing gradients count as zero).
    for (Bucket& bucket : buckets_) bucket.waiting = 0;
    start_ready_buckets();
    active_ = false;
  }
  for (Bucket& bucket : buckets_) bucket.reduction.wait();
  last_wait_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  torch::NoGradGuard no_grad;
  const double world = static_cast<double>(communicator_.world_size());
  for (Bucket& bucket : buckets_) {
    const torch::Tensor users = bucket.flat.narrow(0, bucket.gradient_elements, static_cast<int64_t>(bucket.members.size()))
                                    .to(torch::kCPU);
    bucket.flat.narrow(0, 0, bucket.gradient_elements).div_(world);
    for (size_t position = 0; position < bucket.members.size(); ++position) {
      torch::Tensor& parameter = parameters_[bucket.members[position]];
      if (users[static_cast<int64_t>(position)].item<double>() == 0.0) {
        parameter.mutable_grad().reset();  // no rank had a gradient: as in a single process
        continue;
      }
      const torch::Tensor mean = bucket.flat.narrow(0, bucket.offsets[position], parameter.numel()).view_as(parameter);
      if (parameter.grad().defined()) {
        parameter.mutable_grad().copy_(mean);
      } else {
        parameter.mutable_grad() = mean.to(parameter.device(), /*non_blocking=*/false, /*copy=*/true);
      }
    }
  }
}

}  // namespace guidiff
