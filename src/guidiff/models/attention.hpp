// Softmax attention of per-head q, k, v (Vaswani et al. 2017, Eq. 1), as the ADM UNets and
// their classifiers use it (unet_blocks.cpp).
//
// Why blocked: a head's scores are a [T, S] matrix, 4 MB at 32x32 (T = S = 1024), and all
// heads' scores and probabilities are in memory at once (200 MB per 32x32 layer of the 64x64
// model at batch 4), the probabilities kept until the backward pass where gradients are
// recorded. So where a head's scores exceed a block (1 MiB: an L2 cache), each head is done a
// block of query rows at a time, and its block of scores stays in the cache from the product
// that makes it to the one that uses it. With gradients recorded, the backward pass recomputes
// each block's probabilities instead of keeping them (as FlashAttention does, Dao et al. 2022),
// with the same blocks. Peak memory of a guided 64x64 run fell by 13%; speed changed little
// forward and gained in the backward pass (docs/performance.md, "Blocked attention").
//
// The blocks depend on T and S only, never on the batch, so an image's attention is computed
// the same way whatever the batch size.
#pragma once
#include <torch/torch.h>

#include <cstdint>

namespace guidiff {

// q [B, c, T], k [B, c, S], v [B, c_v, S] -> [B, c_v, T]: softmax(q^T k / sqrt(c)) applied to v,
// with 1/sqrt(c) applied as c^(-1/4) to both q and k (as guided-diffusion does). Scores of 16-bit
// inputs are normalised in float32.
torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

// The largest score block in bytes (default 1 MiB); heads whose [T, S] scores fit are done in
// one product. For tests, which shrink it to exercise the blocks on tiny inputs.
void set_attention_block_bytes(int64_t bytes);
int64_t attention_block_bytes();
// How many attention calls took the blocked path so far (tests check that it ran).
int64_t blocked_attention_calls();

}  // namespace guidiff
