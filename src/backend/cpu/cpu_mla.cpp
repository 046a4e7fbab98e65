// Multi-head latent attention on the CPU, absorbed form (see MlaShape in backend.h). Per layer and token the
// cache holds kv_lora + n_rot floats instead of n_head * (qk + v): decode reads 1/(n_head * ...) of the
// bytes a full K/V cache would, at the cost of scoring in the kv_lora-wide latent space.
#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul.h"
#include "kv/kv_cache.h"
#include "runtime/thread_pool.h"
#include "uma/error.h"

namespace uma {
namespace {

// Head h of a stacked [cols, rows, n_head] weight.
WeightView head_view(const Weight& w, int64_t h) {
  const size_t stride = row_bytes(w.type, w.ne[0]) * w.ne[1];
  return WeightView{w.type, w.host + h * stride, w.ne[1], w.ne[0]};
}

// y[t, h, :] = W_h x[t, h, :] for every head: gathers the head's columns of x (row stride x_stride, offset
// x_off) into a dense matrix so that each head is one blocked matrix product over all tokens.
void per_head_matmul(const Weight& w, const float* x, int64_t n, int n_head, int64_t x_stride, int64_t x_off,
                     float* y, int64_t y_stride, ThreadPool& pool) {
  const int64_t cols = w.ne[0], rows = w.ne[1];
  std::vector<float> xh(n * cols), yh(n * rows);
  for (int h = 0; h < n_head; ++h) {
    for (int64_t t = 0; t < n; ++t)
      std::copy_n(x + (t * n_head + h) * x_stride + x_off, cols, xh.data() + t * cols);
    matmul(head_view(w, h), xh.data(), n, yh.data(), pool);
    for (int64_t t = 0; t < n; ++t) std::copy_n(yh.data() + t * rows, rows, y + (t * n_head + h) * y_stride);
  }
}

}  // namespace

void cpu_attention_mla(const KvCache& kv, int layer, const float* q, const Weight& wk_b, const Weight& wv_b,
                       const BatchLayout& batch, const MlaShape& s, float* out, ThreadPool& pool) {
  const int64_t n = batch.n_tokens, L = s.kv_lora, R = s.n_rot, qw = s.head_dim_nope + s.n_rot;
  if (kv.options().k_width != L || kv.options().v_width != R)
    fail("attention_mla: the cache stores {} + {} floats per token, the model needs latent {} + rope {}",
         kv.options().k_width, kv.options().v_width, L, R);
  if (wk_b.ne[0] != s.head_dim_nope || wk_b.ne[1] != L || wk_b.ne[2] != s.n_head || wv_b.ne[0] != L ||
      wv_b.ne[1] != s.head_dim_v || wv_b.ne[2] != s.n_head)
    fail("attention_mla: '{}' / '{}' do not match the MLA shape", wk_b.name, wv_b.name);

  // 1. Absorb: q_lat[t, h] = W_uk,h^T q_nope[t, h]  ([n, n_head, kv_lora]).
  std::vector<float> q_lat(n * s.n_head * L), o_lat(n * s.n_head * L);
  per_head_matmul(wk_b, q, n, s.n_head, qw, 0, q_lat.data(), L, pool);

  // 2. Scores against latent + rope key, softmax, weighted sum of latents.
  const float* C = kv.k(layer);
  const float* KR = kv.v(layer);
  pool.parallel_for(n * s.n_head, 1, [&](int, int64_t i0, int64_t i1) {
    std::vector<float> scores;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / s.n_head;
      const int seq = batch.seq[t];
      const int64_t n_ctx = batch.pos[t] + 1;
      const float* ql = q_lat.data() + i * L;
      const float* qr = q + i * qw + s.head_dim_nope;
      scores.resize(n_ctx);
      float mx = -INFINITY;
      for (int64_t p = 0; p < n_ctx; ++p) {
        const int64_t c = kv.cell(seq, p);
        const float* cp = C + c * L;
        const float* rp = KR + c * R;
        float d = 0;
        for (int64_t j = 0; j < L; ++j) d += ql[j] * cp[j];
        for (int64_t j = 0; j < R; ++j) d += qr[j] * rp[j];
        scores[p] = d * s.scale;
        mx = std::max(mx, scores[p]);
      }
      const double sum = exp_scores(scores.data(), n_ctx, mx);
      float* o = o_lat.data() + i * L;
      std::fill(o, o + L, 0.0f);
      for (int64_t p = 0; p < n_ctx; ++p) {
        const float* cp = C + kv.cell(seq, p) * L;
        const float wp = scores[p];
        for (int64_t j = 0; j < L; ++j) o[j] += wp * cp[j];
      }
      const float inv = static_cast<float>(1.0 / sum);
      for (int64_t j = 0; j < L; ++j) o[j] *= inv;
    }
  });

  // 3. Values: out[t, h] = W_uv,h o_lat[t, h]  ([n, n_head, head_dim_v]).
  per_head_matmul(wv_b, o_lat.data(), n, s.n_head, L, 0, out, s.head_dim_v, pool);
}

}  // namespace uma
