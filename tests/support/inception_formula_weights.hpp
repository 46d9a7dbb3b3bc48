// Deterministic "formula" weights for the FID Inception network, so its tests need no 95 MB
// weight file: every tensor is a function of its state-dict name and element index. The same
// formula is written in tests/fixtures/make_inception_fixture.py, which recorded what PyTorch's
// network computes with these weights (tests/data/fid_inception_formula.npz).
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "guidiff/eval/fid_inception.hpp"

namespace guidiff::testing {

// sum_i (i + 1) * byte_i of the name.
int64_t formula_name_key(const std::string& name);

// `count` float64 values in [-1, 1): 2 frac(43758.5453 sin(0.7548776662466927 j +
// 0.5698402909980532 key(name))) - 1 for j = 0..count-1.
torch::Tensor formula_uniform(const std::string& name, int64_t count);

// The float32 value of tensor `name` with `shape`: He-scaled uniform convolutions (variance
// 2 / fan_in), batch norms near the identity (gamma 1 +- 0.1, beta and mean +- 0.1, variance
// 1.1 +- 0.1), fc weights of variance 256 / 2048 and fc bias +- 0.1.
torch::Tensor formula_value(const std::string& name, const std::vector<int64_t>& shape);

// Loads formula_value into every tensor the network loads.
void load_formula_weights(FidInception& network);

// Writes `state` as Python's torch.save(dict) does: libtorch's pickler and zip writer
// (torch::pickle_save without its type tags, which torch.load strips and guidiff's reader does
// not take).
void write_torch_save_state_dict(const std::string& file, const c10::Dict<std::string, torch::Tensor>& state);

// Every formula tensor in a torch.save file at `file` (95 MB): pytorch-fid's weight file as it
// would be with the formula's values.
void write_formula_weights_file(const std::string& file);

}  // namespace guidiff::testing
