#include "guidiff/data/dataset.hpp"

#include <sstream>

#include "guidiff/core/errors.hpp"

namespace guidiff {

void Dataset::validate() const {
  const std::string where = "dataset '" + name + "': ";
  if (!images.defined() || (images.dim() != 4 && images.dim() != 2) ||
      images.scalar_type() != torch::kFloat32) {
    throw InputError(where + "images must be float32 [N, C, H, W] or [N, D]");
  }
  if (!labels.defined() || labels.dim() != 1 || labels.scalar_type() != torch::kInt64) {
    throw InputError(where + "labels must be int64 [N]");
  }
  if (labels.size(0) != images.size(0)) {
    std::ostringstream message;
    message << where << images.size(0) << " images but " << labels.size(0) << " labels";
    throw InputError(message.str());
  }
  if (labels.size(0) == 0) throw InputError(where + "holds no samples");
  if (num_classes < 1) throw InputError(where + "num_classes must be >= 1");
  const int64_t lowest = labels.min().item<int64_t>(), highest = labels.max().item<int64_t>();
  if (lowest < 0 || highest >= num_classes) {
    std::ostringstream message;
    message << where << "labels must lie in [0, " << num_classes << "), found "
            << (lowest < 0 ? lowest : highest);
    throw InputError(message.str());
  }
  if (!class_names.empty() && static_cast<int64_t>(class_names.size()) != num_classes) {
    std::ostringstream message;
    message << where << class_names.size() << " class names for " << num_classes << " classes";
    throw InputError(message.str());
  }
}

}  // namespace guidiff
