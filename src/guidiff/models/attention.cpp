#include "guidiff/models/attention.hpp"

#include <torch/csrc/autograd/functions/utils.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "guidiff/core/autocast.hpp"

namespace guidiff {
namespace {

std::atomic<int64_t> g_block_bytes{int64_t{1} << 20};
std::atomic<int64_t> g_blocked_calls{0};

// The softmax's type: float32 at least (guided-diffusion normalises 16-bit scores in float32).
c10::ScalarType softmax_type(c10::ScalarType scores) {
  return at::promote_types(scores, torch::kFloat32);
}

// softmax over the keys of scores [..., T, S], in softmax_type.
torch::Tensor wide_probabilities(const torch::Tensor& scores) {
  return torch::softmax(scores.to(softmax_type(scores.scalar_type())), -1);
}

// The same, returned in the scores' own type.
torch::Tensor probabilities(const torch::Tensor& scores) {
  return wide_probabilities(scores).to(scores.scalar_type());
}

// One block's scores, [n, S], from its scaled queries [c, n] and a head's scaled keys [c, S].
torch::Tensor block_scores(const torch::Tensor& scaled_queries, const torch::Tensor& scaled_keys) {
  return torch::mm(scaled_queries.t(), scaled_keys);
}

// The type attention's products compute in: CPU autocast's lower type where it is on and would
// lower these operands (floating, not float64), else the inputs' own type; nullopt for inputs
// of different types outside autocast (the one-piece form reports them).
c10::optional<c10::ScalarType> products_type(const torch::Tensor& q, const torch::Tensor& k,
                                             const torch::Tensor& v) {
  const auto lowered = [](const torch::Tensor& t) {
    return at::isFloatingType(t.scalar_type()) && t.scalar_type() != torch::kFloat64;
  };
  const auto autocast = cpu_autocast_type();
  if (autocast && lowered(q) && lowered(k) && lowered(v)) return *autocast;
  if (q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type())
    return q.scalar_type();
  return c10::nullopt;
}

// Calls body(first, count) for every block of `rows` of a head's `length` queries (first to
// first + count).
template <typename Body>
void for_each_block(int64_t length, int64_t rows, const Body& body) {
  for (int64_t first = 0; first < length; first += rows) body(first, std::min(rows, length - first));
}

torch::Tensor blocked_forward(const torch::Tensor& scaled_q, const torch::Tensor& scaled_k,
                              const torch::Tensor& v, int64_t rows) {
  ++g_blocked_calls;
  const auto q_heads = scaled_q.unbind(), k_heads = scaled_k.unbind(), v_heads = v.unbind();
  torch::Tensor output;  // typed by the first block: autocast may have lowered the products
  std::vector<torch::Tensor> output_heads;
  for (int64_t head = 0; head < scaled_q.size(0); ++head) {
    for_each_block(scaled_q.size(2), rows, [&](int64_t first, int64_t count) {
      const auto p = probabilities(block_scores(q_heads[head].narrow(1, first, count), k_heads[head]));
      const auto block = torch::mm(v_heads[head], p.t());  // [c_v, count]
      if (!output.defined()) {
        output = torch::empty({scaled_q.size(0), block.size(0), scaled_q.size(2)}, block.options());
        output_heads = output.unbind();
      }
      output_heads[head].narrow(1, first, count).copy_(block);
    });
  }
  return output;
}

// The recorded form: the forward keeps q, k and v, not the probabilities; the backward
// recomputes each block's probabilities and takes its gradients while they are in the cache.
// For p = softmax(w), w = q_b^T k, out_b = v p^T and the output gradient g_b [c_v, n]:
//   dv += g_b p,  dp = g_b^T v,  dw = p (.) (dp - rowsum(dp (.) p)),  dq_b = k dw^T,
//   dk += q_b dw.
// float32 and float64 inputs add each block's shares of dv and dk in their own type. 16-bit
// inputs (bf16 sampling's classifier gradient) take the products in their own type and the
// softmax's gradient dw in float32, as the one-piece form's recorded casts around the softmax
// do; they keep a head's p and dw for all its blocks (P and dW [T, S] in the inputs' type, one
// head's at a time) and take dv = g P and dk = q dW as one product each over all the queries,
// rounded once as the one-piece form's are. Summing the blocks' shares instead would round
// each share to 16 bits, or (as until stop 40) widen them and multiply in float32.
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
    const auto type = saved[0].scalar_type();
    // The gradient is taken outside the forward's autocast scope; bf16 products run under it
    // again, so that they keep float32 accumulation on CPUs whose libtorch kernels lack it
    // (core/bf16_kernels.hpp), as the forward's did.
    const AutocastScope autocast(type == torch::kBFloat16, torch::kCPU);
    const auto q_heads = saved[0].unbind(), k_heads = saved[1].unbind(),
               v_heads = saved[2].unbind(), g_heads = gradients[0].to(type).unbind();
    const bool in_blocks = type == softmax_type(type);  // float32, float64
    const auto sums = [&](const torch::Tensor& t) {
      return in_blocks ? torch::zeros_like(t) : torch::empty_like(t);
    };
    auto q_gradient = torch::empty_like(saved[0]), k_gradient = sums(saved[1]),
         v_gradient = sums(saved[2]);
    auto dq_heads = q_gradient.unbind(), dk_heads = k_gradient.unbind(),
         dv_heads = v_gradient.unbind();
    const int64_t length = saved[0].size(2), keys = saved[1].size(2);
    torch::Tensor all_probabilities, all_score_gradients;  // one head's, for 16-bit inputs
    if (!in_blocks) {
      all_probabilities = torch::empty({length, keys}, saved[0].options());
      all_score_gradients = torch::empty({length, keys}, saved[0].options());
    }
    for (int64_t head = 0; head < saved[0].size(0); ++head) {
      for_each_block(length, context->saved_data["rows"].toInt(), [&](int64_t first, int64_t count) {
        const auto queries = q_heads[head].narrow(1, first, count);  // [c, n]
        const auto p_wide = wide_probabilities(block_scores(queries, k_heads[head]));
        const auto p = in_blocks ? p_wide : all_probabilities.narrow(0, first, count).copy_(p_wide);
        const auto g = g_heads[head].narrow(1, first, count);  // [c_v, n]
        auto score_gradient = torch::mm(g.t(), v_heads[head]).to(p_wide.scalar_type());  // dp, then dw
        score_gradient.sub_((score_gradient * p_wide).sum(1, true)).mul_(p_wide);
        const auto dw =
            in_blocks ? score_gradient : all_score_gradients.narrow(0, first, count).copy_(score_gradient);
        dq_heads[head].narrow(1, first, count).copy_(torch::mm(k_heads[head], dw.t()));
        if (in_blocks) {
          dv_heads[head].addmm_(g, p);
          dk_heads[head].addmm_(queries, dw);
        }
      });
      if (!in_blocks) {
        dv_heads[head].copy_(torch::mm(g_heads[head], all_probabilities));
        dk_heads[head].copy_(torch::mm(q_heads[head], all_score_gradients));
      }
    }
    return {q_gradient, k_gradient, v_gradient, torch::Tensor()};
  }
};

}  // namespace

void set_attention_block_bytes(int64_t bytes) { g_block_bytes = std::max<int64_t>(1, bytes); }
int64_t attention_block_bytes() { return g_block_bytes; }
int64_t blocked_attention_calls() { return g_blocked_calls; }

torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  const double scale = 1.0 / std::sqrt(std::sqrt(static_cast<double>(q.size(1))));
  const int64_t length = q.size(2), keys = k.size(2);
  const int64_t score_bytes = static_cast<int64_t>(c10::elementSize(softmax_type(q.scalar_type())));
  // Query rows per block: a block's scores fill at most attention_block_bytes().
  const int64_t rows = std::max<int64_t>(1, attention_block_bytes() / (keys * score_bytes));
  const auto type = products_type(q, k, v);
  if (rows < length && q.device().is_cpu() && type) {
    // q, k and v in the products' type up front (what autocast's casts around each product
    // would make of them), so the recorded form computes in one type. Recording the one-piece
    // form instead under bf16 autocast, for the classifier's gradient, kept every head's [T, S]
    // float32 probabilities and cast them and their gradients back and forth: a guided 64x64
    // bf16 run took 1.2-1.4x as long that way (docs/performance.md, "Blocked attention").
    const auto scaled_q = q.to(*type) * scale, scaled_k = k.to(*type) * scale;
    const auto typed_v = v.to(*type);
    if (!torch::autograd::compute_requires_grad(q, k, v))
      return blocked_forward(scaled_q, scaled_k, typed_v, rows);
    return BlockedAttention::apply(scaled_q, scaled_k, typed_v, rows);
  }
  const auto scaled_q = q * scale, scaled_k = k * scale;
  const auto scores = torch::bmm(scaled_q.transpose(1, 2), scaled_k);  // [B, T, S]
  return torch::bmm(v, probabilities(scores).transpose(1, 2));         // [B, c_v, T]
}

}  // namespace guidiff
