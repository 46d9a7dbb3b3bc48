#include "guidiff/models/attention.hpp"

#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

namespace guidiff {
namespace {

std::atomic<int64_t> g_block_bytes{int64_t{1} << 20};
std::atomic<int64_t> g_blocked_calls{0};

// The softmax's type: float32 at least (guided-diffusion normalises 16-bit scores in float32).
c10::ScalarType softmax_type(c10::ScalarType scores) {
  return at::promote_types(scores, torch::kFloat32);
}

// softmax over the keys of scores [..., T, S], returned in the scores' own type.
torch::Tensor probabilities(const torch::Tensor& scores) {
  return torch::softmax(scores.to(softmax_type(scores.scalar_type())), -1).to(scores.scalar_type());
}

// One block's probabilities, [n, S], from its scaled queries [c, n] and a head's scaled keys
// [c, S].
torch::Tensor block_probabilities(const torch::Tensor& scaled_queries,
                                  const torch::Tensor& scaled_keys) {
  return probabilities(torch::mm(scaled_queries.t(), scaled_keys));
}

// Calls body(head, first, count) for every block of `rows` queries (first to first + count) of
// every head.
template <typename Body>
void for_each_block(int64_t heads, int64_t length, int64_t rows, const Body& body) {
  for (int64_t head = 0; head < heads; ++head)
    for (int64_t first = 0; first < length; first += rows)
      body(head, first, std::min(rows, length - first));
}

torch::Tensor blocked_forward(const torch::Tensor& scaled_q, const torch::Tensor& scaled_k,
                              const torch::Tensor& v, int64_t rows) {
  ++g_blocked_calls;
  const auto q_heads = scaled_q.unbind(), k_heads = scaled_k.unbind(), v_heads = v.unbind();
  torch::Tensor output;  // typed by the first block: autocast may have lowered the products
  std::vector<torch::Tensor> output_heads;
  for_each_block(
      scaled_q.size(0), scaled_q.size(2), rows, [&](int64_t head, int64_t first, int64_t count) {
        const auto p = block_probabilities(q_heads[head].narrow(1, first, count), k_heads[head]);
        const auto block = torch::mm(v_heads[head], p.t());  // [c_v, count]
        if (!output.defined()) {
          output =
              torch::empty({scaled_q.size(0), block.size(0), scaled_q.size(2)}, block.options());
          output_heads = output.unbind();
        }
        output_heads[head].narrow(1, first, count).copy_(block);
      });
  return output;
}

// The recorded form: the forward keeps q, k and v, not the probabilities; the backward
// recomputes each block's probabilities and takes its gradients while they are in the cache.
// For p = softmax(w), w = q_b^T k, out_b = v p^T and the output gradient g_b [c_v, n]:
//   dv += g_b p,  dp = g_b^T v,  dw = p (.) (dp - rowsum(dp (.) p)),  dq_b = k dw^T,
//   dk += q_b dw.
class BlockedAttention : public torch::autograd::Function<BlockedAttention> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context,
                               const torch::Tensor& scaled_q, const torch::Tensor& scaled_k,
                               const torch::Tensor& v, int64_t rows) {
    context->save_for_backward({scaled_q, scaled_k, v});
    context->saved_data["rows"] = rows;
    return blocked_forward(scaled_q, scaled_k, v, rows);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list gradients) {
    const auto saved = context->get_saved_variables();  // scaled q, scaled k, v
    const auto q_heads = saved[0].unbind(), k_heads = saved[1].unbind(),
               v_heads = saved[2].unbind(), g_heads = gradients[0].unbind();
    auto q_gradient = torch::empty_like(saved[0]);
    auto k_gradient = torch::zeros_like(saved[1]);
    auto v_gradient = torch::zeros_like(saved[2]);
    const auto dq_heads = q_gradient.unbind(), dk_heads = k_gradient.unbind(),
               dv_heads = v_gradient.unbind();
    for_each_block(saved[0].size(0), saved[0].size(2), context->saved_data["rows"].toInt(),
                   [&](int64_t head, int64_t first, int64_t count) {
                     const auto queries = q_heads[head].narrow(1, first, count);  // [c, n]
                     const auto p = block_probabilities(queries, k_heads[head]);  // [n, S]
                     const auto g = g_heads[head].narrow(1, first, count);        // [c_v, n]
                     dv_heads[head].addmm_(g, p);
                     auto score_gradient = torch::mm(g.t(), v_heads[head]);  // dp, then dw
                     score_gradient.sub_((score_gradient * p).sum(1, true)).mul_(p);
                     dq_heads[head]
                         .narrow(1, first, count)
                         .copy_(torch::mm(k_heads[head], score_gradient.t()));
                     dk_heads[head].addmm_(queries, score_gradient);
                   });
    return {q_gradient, k_gradient, v_gradient, torch::Tensor()};
  }
};

}  // namespace

void set_attention_block_bytes(int64_t bytes) { g_block_bytes = std::max<int64_t>(1, bytes); }
int64_t attention_block_bytes() { return g_block_bytes; }
int64_t blocked_attention_calls() { return g_blocked_calls; }

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(q.size(1))));
  const auto scaled_q = q * scale, scaled_k = k * scale;
  const int64_t length = q.size(2), keys = k.size(2);
  const int64_t score_bytes = static_cast<int64_t>(c10::elementSize(softmax_type(q.scalar_type())));
  // Query rows per block: a block's scores fill at most attention_block_bytes().
  const int64_t rows = std::max<int64_t>(1, attention_block_bytes() / (keys * score_bytes));
  if (rows < length && q.device().is_cpu()) {
    if (!torch::autograd::compute_requires_grad(q, k, v))
      return blocked_forward(scaled_q, scaled_k, v, rows);
    // The recorded form computes in the inputs' type; 16-bit and autocast runs record the
    // plain form below.
    const bool wide = q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type() &&
                      (q.scalar_type() == torch::kFloat32 || q.scalar_type() == torch::kFloat64);
    if (wide && !at::autocast::is_cpu_enabled())
      return BlockedAttention::apply(scaled_q, scaled_k, v, rows);
  }
  const auto scores = torch::bmm(scaled_q.transpose(1, 2), scaled_k);  // [B, T, S]
  return torch::bmm(v, probabilities(scores).transpose(1, 2));         // [B, c_v, T]
}

}  // namespace guidiff
