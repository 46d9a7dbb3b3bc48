// The accuracy of a noise-aware classifier per noise level (see noisy_classifier_accuracy.hpp).
#include "guidiff/eval/noisy_classifier_accuracy.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include "guidiff/core/errors.hpp"
#include "guidiff/data/random_order.hpp"
#include "guidiff/diffusion/gaussian_diffusion.hpp"

namespace guidiff {
namespace {

// The data_random_bits domain of these draws (the data layer uses 1 and 2, training 16).
constexpr uint64_t kNoisyAccuracyDomain = 17;

}  // namespace

BucketAccuracy noisy_classifier_accuracy(Classifier& classifier, const DiscreteSchedule& schedule,
                                         const torch::Tensor& images, const torch::Tensor& labels,
                                         const NoisyAccuracyOptions& options) {
  if (classifier.time_kind() != TimeKind::discrete_timestep) {
    throw ModelError("the accuracy per timestep needs a discrete-time classifier (time_input discrete_timestep)");
  }
  if (!images.defined() || images.dim() < 2 || images.size(0) == 0 || !images.is_floating_point()) {
    throw InputError("noisy classifier accuracy needs a non-empty floating image tensor [N, ...]");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.size(0) != images.size(0)) {
    throw InputError("there are " + std::to_string(images.size(0)) + " images but the labels have shape " +
                     (labels.defined() ? c10::str(labels.sizes()) : std::string("nothing")));
  }
  const int64_t max_t = options.max_t > 0 ? options.max_t : schedule.num_steps();
  if (options.max_t < 0 || max_t > schedule.num_steps()) {
    throw InputError("max_t must lie in [0, " + std::to_string(schedule.num_steps()) + "] (0: all of T), got " +
                     std::to_string(options.max_t));
  }
  if (options.batch_size < 1) throw InputError("batch size must be >= 1");
  if (options.buckets > max_t) {
    throw InputError("buckets must be at most the " + std::to_string(max_t) +
                     " noise levels scored, got " + std::to_string(options.buckets));
  }
  BucketAccuracy accuracy(max_t, options.buckets);  // InputError for buckets < 1
  const int64_t n = images.size(0);
  const torch::Tensor x0 = images.to(torch::kFloat32);
  const torch::Tensor y = labels.to(torch::kLong);
  torch::NoGradGuard no_grad;
  for (int64_t bucket = 0; bucket < accuracy.buckets(); ++bucket) {
    // Bucket b holds the t with floor(t B / max_t) = b (BucketAccuracy::bucket_of).
    const int64_t t_min = (bucket * max_t + accuracy.buckets() - 1) / accuracy.buckets();
    const int64_t t_end = ((bucket + 1) * max_t + accuracy.buckets() - 1) / accuracy.buckets();
    if (t_end <= t_min) continue;  // more buckets than timesteps: an empty range
    torch::Generator generator =
        at::detail::createCPUGenerator(data_random_bits(options.seed, kNoisyAccuracyDomain, static_cast<uint64_t>(bucket), 0));
    const torch::Tensor t = torch::randint(t_min, t_end, {n}, generator, torch::TensorOptions().dtype(torch::kInt64));
    const torch::Tensor noise = torch::randn(x0.sizes(), generator, torch::TensorOptions().dtype(torch::kFloat32));
    for (int64_t begin = 0; begin < n; begin += options.batch_size) {
      const int64_t end = std::min(begin + options.batch_size, n);
      const torch::Tensor t_batch = t.slice(0, begin, end);
      const torch::Tensor x_t = q_sample(schedule, x0.slice(0, begin, end), t_batch, noise.slice(0, begin, end));
      const torch::Tensor predicted =
          classifier.logits(x_t.to(options.device), t_batch.to(options.device)).argmax(1).to(torch::kCPU);
      accuracy.add(t_batch, predicted == y.slice(0, begin, end));
    }
  }
  return accuracy;
}

}  // namespace guidiff
