// guided-diffusion's reference batches (evaluations/README: VIRTUAL_imagenet64_labeled.npz and
// the others): an .npz holding
//   arr_0    uint8 [N, H, W, 3]  the reference images (NHWC, RGB)
//   arr_1    int64 [N]           their classes (optional)
//   mu       float64 [2048], sigma   float64 [2048, 2048]   pool3 statistics (optional)
//   mu_s     float64 [2023], sigma_s float64 [2023, 2023]   spatial (sFID) statistics (optional)
// guided-diffusion's evaluator uses mu/sigma/mu_s/sigma_s when present and arr_0's features
// otherwise; precision/recall always come from arr_0. guidiff reads and writes the same layout.
#pragma once
#include <torch/torch.h>

#include <string>

#include "guidiff/data/dataset.hpp"
#include "guidiff/eval/evaluator.hpp"
#include "guidiff/eval/feature_statistics.hpp"

namespace guidiff {

struct ReferenceBatch {
  torch::Tensor images;                  // uint8 [N, H, W, C], or undefined (statistics only)
  torch::Tensor labels;                  // int64 [N], or undefined
  FeatureStatistics pool_statistics;     // mean undefined when the file has none; count 0 = unknown
  FeatureStatistics spatial_statistics;  // likewise
};

// True for a --reference that names a reference batch (an .npz file) rather than a data set.
bool is_reference_batch(const std::string& spec);

// Reads a reference batch. Throws FileError naming the file (and the array) when it is not a
// readable .npz, has neither arr_0 nor mu/sigma, has arr_0 that is not uint8 [N, H, W, 1 or 3],
// arr_1 that is not integer [N], or mu/sigma (mu_s/sigma_s) that come without each other, are
// not [D] and [D, D], or are not finite.
ReferenceBatch read_reference_batch(const std::string& path);

// Writes `batch` in the layout above, atomically (write_npz): arr_0 as given (grey images are
// replicated to 3 channels, which guided-diffusion's evaluator requires), arr_1 when defined,
// statistics when their mean is defined (as float64). Throws InputError for a malformed batch.
void write_reference_batch(const std::string& path, const ReferenceBatch& batch);

// A data set's reference batch: its images as uint8 NHWC (RGB), its labels, and, with an
// `inception` network (may be null), their pool3 and spatial statistics. Throws InputError
// for a data set without images.
ReferenceBatch make_reference_batch(const Dataset& data, FeatureNetwork* inception,
                                    Communicator& communicator = single_process_communicator());

}  // namespace guidiff
