// The shape of one sample a network built by build_model works on.
#pragma once
#include <cstdint>
#include <vector>

#include "guidiff/models/model_files.hpp"

namespace guidiff {

// {in_channels, image_size, image_size} for unet / encoder_unet, {data_dim} for the MLPs,
// read from the model's (complete) config.
std::vector<int64_t> model_sample_shape(const Model& model);

}  // namespace guidiff
