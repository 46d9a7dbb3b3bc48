// What the safetensors and resume targets load into, shared with the seed maker so that the
// committed seeds fit: a tiny MLP denoiser on 2-D mixture points and its training options.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "guidiff/data/dataset.hpp"
#include "guidiff/models/model_files.hpp"
#include "guidiff/training/trainer.hpp"

namespace guidiff::fuzz {

// {"kind": "mlp_denoiser", data_dim 2, hidden 8, one block}: a few hundred parameters.
nlohmann::json tiny_model_config();
// Seeded, so every process builds the same initial weights.
Model tiny_model();
// 16 points of the demo mixture.
const Dataset& tiny_dataset();
// Training options of the resume seed: batch 4, 2 steps, a checkpoint every step.
TrainingOptions tiny_training_options(const std::string& out_dir);

}  // namespace guidiff::fuzz
