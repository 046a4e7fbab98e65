// Mixture-of-experts feed-forward on the CPU: route every token, then run each selected expert once over
// all the tokens that chose it (prefill batches them into one matrix product per expert; decode reads
// only top-k experts' rows), and combine with the routing weights.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul.h"
#include "runtime/thread_pool.h"
#include "uma/error.h"

namespace uma {
namespace {

// Expert e of a stacked [cols, rows, n_expert] weight.
WeightView expert_view(const Weight& w, int64_t e) {
  const size_t stride = row_bytes(w.type, w.ne[0]) * w.ne[1];
  return WeightView{w.type, w.host + e * stride, w.ne[1], w.ne[0]};
}

// Indices of the k largest values (ties: lower index first), largest first.
std::vector<int32_t> top_k(const std::vector<float>& v, int k) {
  std::vector<int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
  idx.resize(k);
  return idx;
}

}  // namespace

MoeRoute moe_route(const float* logits, const float* bias, const MoeParams& p) {
  const int E = p.n_expert;
  std::vector<float> prob(E);
  if (p.gating == MoeGating::softmax) {
    const float mx = *std::max_element(logits, logits + E);
    double sum = 0;
    for (int e = 0; e < E; ++e) sum += prob[e] = std::exp(logits[e] - mx);
    for (int e = 0; e < E; ++e) prob[e] = static_cast<float>(prob[e] / sum);
  } else {
    for (int e = 0; e < E; ++e) prob[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  }
  // Selection scores: the probabilities plus the load-balancing bias (it steers the choice only).
  std::vector<float> choice(prob);
  if (bias)
    for (int e = 0; e < E; ++e) choice[e] += bias[e];
  if (p.n_group > 1 && p.n_group_used < p.n_group) {
    // Keep the experts of the n_group_used best groups; a group scores the sum of its two best choices.
    const int per = E / p.n_group;
    std::vector<float> group_score(p.n_group);
    for (int g = 0; g < p.n_group; ++g) {
      std::vector<float> members(choice.begin() + g * per, choice.begin() + (g + 1) * per);
      float s = 0;
      for (int32_t i : top_k(members, std::min(2, per))) s += members[i];
      group_score[g] = s;
    }
    std::vector<uint8_t> keep(p.n_group, 0);
    for (int32_t g : top_k(group_score, p.n_group_used)) keep[g] = 1;
    for (int e = 0; e < E; ++e)
      if (!keep[e / per]) choice[e] = -INFINITY;
  }
  MoeRoute r;
  r.expert = top_k(choice, p.n_expert_used);
  double sum = 0;
  for (int32_t e : r.expert) {
    r.weight.push_back(prob[e]);
    sum += prob[e];
  }
  for (float& w : r.weight) {
    if (p.norm_weights) w = static_cast<float>(w / sum);
    w *= p.weights_scale;
  }
  return r;
}

void cpu_moe_ffn(const MoeWeights& w, const MoeParams& p, const float* x, int64_t n, float* out,
                 ThreadPool& pool) {
  const int64_t E = w.router->ne[0], F = w.gate->ne[1], K = p.n_expert_used;
  if (w.router->ne[1] != p.n_expert || w.gate->ne[2] != p.n_expert || K <= 0 || K > p.n_expert)
    fail("moe_ffn: router '{}' / experts '{}' do not match {} experts, top {}", w.router->name, w.gate->name,
         p.n_expert, K);
  // 1. Router logits [n, n_expert] and routes.
  std::vector<float> logits(n * p.n_expert);
  matmul(WeightView{w.router->type, w.router->host, w.router->rows(), w.router->cols()}, x, n, logits.data(),
         pool);
  const float* bias = w.select_bias && *w.select_bias ? reinterpret_cast<const float*>(w.select_bias->host)
                                                      : nullptr;
  std::vector<MoeRoute> routes(n);
  for (int64_t t = 0; t < n; ++t) routes[t] = moe_route(logits.data() + t * p.n_expert, bias, p);

  // 2. Tokens per expert: (token, slot) pairs, so each expert's rows are read once for all its tokens.
  std::vector<std::vector<int64_t>> users(p.n_expert);
  for (int64_t t = 0; t < n; ++t)
    for (int k = 0; k < K; ++k) users[routes[t].expert[k]].push_back(t * K + k);

  // 3. Each used expert over its tokens; results per (token, slot) in ys [n, K, E].
  std::vector<float> ys(n * K * E), xg, gate, up, down;
  for (int e = 0; e < p.n_expert; ++e) {
    const auto& u = users[e];
    const int64_t m = static_cast<int64_t>(u.size());
    if (m == 0) continue;
    xg.resize(m * E);
    gate.resize(m * F);
    up.resize(m * F);
    down.resize(m * E);
    for (int64_t i = 0; i < m; ++i) std::copy_n(x + (u[i] / K) * E, E, xg.data() + i * E);
    matmul(expert_view(*w.gate, e), xg.data(), m, gate.data(), pool);
    matmul(expert_view(*w.up, e), xg.data(), m, up.data(), pool);
    for (int64_t i = 0; i < m * F; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];  // SwiGLU
    matmul(expert_view(*w.down, e), gate.data(), m, down.data(), pool);
    for (int64_t i = 0; i < m; ++i) std::copy_n(down.data() + i * E, E, ys.data() + u[i] * E);
  }

  // 4. Weighted sum in routing order (best expert first), as the reference implementations add them.
  pool.parallel_for(n, 4, [&](int, int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      float* o = out + t * E;
      for (int64_t i = 0; i < E; ++i) o[i] = ys[(t * K) * E + i] * routes[t].weight[0];
      for (int k = 1; k < K; ++k) {
        const float* y = ys.data() + (t * K + k) * E;
        const float wk = routes[t].weight[k];
        for (int64_t i = 0; i < E; ++i) o[i] += y[i] * wk;
      }
    }
  });
}

}  // namespace uma
