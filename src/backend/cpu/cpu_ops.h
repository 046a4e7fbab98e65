// CPU implementations of the composite backend ops that live outside cpu_backend.cpp (one file per
// concern); CpuBackend forwards to them with its thread pool.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace uma {

class ThreadPool;

// Routing of one token: the chosen experts (best first) and their final weights.
struct MoeRoute {
  std::vector<int32_t> expert;
  std::vector<float> weight;
};
// logits: the router's [n_expert] output for one token; bias: p.n_expert selection biases or nullptr.
MoeRoute moe_route(const float* logits, const float* bias, const MoeParams& p);

// Attention's softmax numerator in place: scores[p] = exp(scores[p] - max); returns their sum (in double, so
// long contexts lose nothing) for the caller to normalise the weighted values once.
inline double exp_scores(float* scores, int64_t n, float max) {
  double sum = 0;
  for (int64_t p = 0; p < n; ++p) {
    scores[p] = std::exp(scores[p] - max);
    sum += scores[p];
  }
  return sum;
}

void cpu_moe_ffn(const MoeWeights& w, const MoeParams& p, const float* x, int64_t n_tokens, float* out,
                 ThreadPool& pool);

void cpu_attention_mla(const KvCache& kv, int layer, const float* q, const Weight& wk_b, const Weight& wv_b,
                       const BatchLayout& batch, const MlaShape& s, float* out, ThreadPool& pool);

}  // namespace uma
