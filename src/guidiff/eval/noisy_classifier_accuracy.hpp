// How often a noise-aware classifier p_phi(y | x_t, t) names the right class of a labelled
// image set at every noise level: the accuracy-against-t curve of a classifier for classifier
// guidance, measured on held-out images (the training log's figures are training batches).
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "guidiff/models/denoiser.hpp"
#include "guidiff/schedule/discrete_schedule.hpp"
#include "guidiff/training/losses.hpp"

namespace guidiff {

struct NoisyAccuracyOptions {
  int64_t buckets = 10;     // [0, max_t) cut into this many equal ranges of t
  int64_t max_t = 0;        // 0: the schedule's T
  uint64_t seed = 0;
  int64_t batch_size = 500;  // never changes the result
  torch::Device device = torch::kCPU;  // where the classifier lives
};

// For every bucket b, every image x0 (float [N, C, H, W] in [-1, 1], labels int64 [N]) is
// noised once, x_t = q_sample(x0, t, eps) (DDPM eq. 4), with t uniform over bucket b's range
// and eps ~ N(0, I), both drawn for the whole set from a generator seeded by (seed, b), and
// classified by argmax of the logits. Returns the counts per bucket. Throws InputError for
// images and labels of different lengths, options out of range, and ModelError for a
// classifier that takes log-SNR time.
BucketAccuracy noisy_classifier_accuracy(Classifier& classifier, const DiscreteSchedule& schedule,
                                         const torch::Tensor& images, const torch::Tensor& labels,
                                         const NoisyAccuracyOptions& options = {});

}  // namespace guidiff
