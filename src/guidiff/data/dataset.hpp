// A labelled dataset held in memory, the common result of every reader under data/.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace guidiff {

struct Dataset {
  std::string name;      // e.g. "fashion-mnist-train", shown in reports
  torch::Tensor images;  // float32 [N, C, H, W] in [-1, 1], or [N, D] vectors (2-D data)
  torch::Tensor labels;  // int64 [N], each in [0, num_classes)
  int64_t num_classes = 0;
  std::vector<std::string> class_names;  // num_classes names, or empty when the source has none

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
  bool holds_images() const { return images.defined() && images.dim() == 4; }

  // Throws InputError naming the dataset and the field that is inconsistent: images not
  // float32 [N, C, H, W] or [N, D], labels not int64 [N] in [0, num_classes), N == 0,
  // num_classes < 1, or class_names neither empty nor num_classes long.
  void validate() const;
};

}  // namespace guidiff
