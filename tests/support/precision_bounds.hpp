// Tolerances derived from the arithmetic a test exercises, in one place, so every test
// states its bound the same way and no bound is fitted to one CPU's kernels.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace guidiff::testing {

// Unit roundoff: the largest relative change that rounding a value to the format can make.
// float32 keeps 24 significant bits, bf16 keeps 8.
constexpr double float32_unit_roundoff = 5.9604644775390625e-08;  // 2^-24
constexpr double bf16_unit_roundoff = 0.00390625;                 // 2^-8

// Layers whose result bf16 autocast rounds: convolutions and linear layers, and the two
// matrix products of every attention block and attention pool.
int64_t bf16_rounded_layers(const torch::nn::Module& network);

// The expected relative error of a network's output under bf16 autocast (with float32
// accumulation, as every native bf16 kernel and guidiff's autocast do), against float32.
// Each of the D rounded layers rounds its two operands and its result to 8 bits: three
// roundings whose relative errors are spread over [-u, u] with u = 2^-8 (RMS u/sqrt(3)
// each), so about u RMS per layer. Roundings in different layers are independent, so they
// add in quadrature, and the network's normalisations keep each layer's gain near 1: the
// output's RMS relative error is about u * sqrt(D). A mean absolute error is at most the
// RMS one, so tests compare mean |bf16 - float32| / mean |float32| with this.
double bf16_network_relative_error(const torch::nn::Module& network);

}  // namespace guidiff::testing
