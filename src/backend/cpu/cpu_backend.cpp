// The CPU backend: host memory, the thread pool, and the kernels in matmul.h. Element-wise ops are plain
// loops the compiler vectorises; they move O(n_embd) bytes per token, nothing next to the weights.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <unordered_set>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/matmul.h"
#include "backend/rope_tables.h"
#include "kv/kv_cache.h"
#include "quant/quant.h"
#include "runtime/thread_pool.h"
#include "uma/error.h"

namespace uma {
namespace {

// UMA_CPU_PROFILE=1: wall time per op (matmuls per type and shape) and the thread pool's busy share, printed
// to stderr when the backend dies. Costs two clock reads per op when on, one branch when off.
class OpProfile {
 public:
  struct Stat {
    uint64_t calls = 0;
    double seconds = 0, bytes = 0, parallel = 0;  // parallel: seconds inside the pool's parallel regions
  };
  bool on = false;
  const ThreadPool* pool = nullptr;
  std::map<std::string, Stat> ops;

  void print(const ThreadPool& pool) const {
    std::vector<std::pair<std::string, Stat>> rows(ops.begin(), ops.end());
    std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.seconds > b.second.seconds; });
    double total = 0;
    for (auto& [k, v] : rows) total += v.seconds;
    std::fprintf(stderr, "\n== UMA_CPU_PROFILE (%d threads): wall time per op\n", pool.size());
    std::fprintf(stderr, "%-34s %9s %10s %9s %6s %8s %9s\n", "op", "calls", "total ms", "us/call", "share", "GB/s",
                 "serial us");
    for (auto& [k, v] : rows)
      std::fprintf(stderr, "%-34s %9llu %10.1f %9.1f %5.1f%% %8.1f %9.1f\n", k.c_str(), (unsigned long long)v.calls,
                   v.seconds * 1e3, v.seconds * 1e6 / double(v.calls), 100 * v.seconds / total,
                   v.seconds > 0 ? v.bytes / v.seconds / 1e9 : 0.0,
                   (v.seconds - v.parallel) * 1e6 / double(v.calls));
    const ThreadPool::Stats s = pool.stats();
    if (s.regions)
      std::fprintf(stderr, "pool: %llu parallel regions, %.1f ms wall, threads busy %.1f %% of threads x wall, "
                   "%.1f %% of %llu chunks run by workers, mean worker wake-up %.2f us\n",
                   (unsigned long long)s.regions, s.wall_s * 1e3, 100 * s.busy_s / (s.wall_s * pool.size()),
                   100.0 * double(s.worker_chunks) / double(std::max<uint64_t>(1, s.chunks)),
                   (unsigned long long)s.chunks, s.wakes ? s.wake_s * 1e6 / double(s.wakes) : 0.0);
  }
};

// Times one op into the profile (no-op when profiling is off).
class OpTimer {
 public:
  OpTimer(OpProfile& p, const char* name) : p_(p), name_(name) {
    if (p_.on) start();
  }
  OpTimer(OpProfile& p, const Weight& w) : p_(p) {
    if (!p_.on) return;
    key_ = "matmul " + std::string(type_name(w.type)) + " " + std::to_string(w.rows()) + "x" +
           std::to_string(w.cols());
    bytes_ = static_cast<double>(w.nbytes);
    start();
  }
  void set_key(std::string k, double bytes) {
    key_ = std::move(k);
    bytes_ = bytes;
  }
  ~OpTimer() {
    if (!p_.on) return;
    auto& s = p_.ops[key_.empty() ? std::string(name_) : key_];
    s.calls++;
    s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    s.bytes += bytes_;
    s.parallel += p_.pool->stats().wall_s - par0_;
  }

 private:
  void start() {
    par0_ = p_.pool->stats().wall_s;
    t0_ = std::chrono::steady_clock::now();
  }
  OpProfile& p_;
  const char* name_ = "";
  std::string key_;
  double bytes_ = 0, par0_ = 0;
  std::chrono::steady_clock::time_point t0_;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int n_threads) : pool_(n_threads) {
    const char* v = std::getenv("UMA_CPU_PROFILE");
    prof_.on = v && *v && *v != '0';
    prof_.pool = &pool_;
    pool_.enable_stats(prof_.on);
  }
  ~CpuBackend() override {
    if (prof_.on) prof_.print(pool_);
    for (float* p : buffers_) std::free(p);
  }

  std::string name() const override { return "cpu"; }
  bool supports(GgmlType type) const override { return traits(type).supported; }

  float* alloc(size_t n) override {
    // 64-byte alignment: one cache line, and the widest SIMD load.
    const size_t bytes = (std::max<size_t>(n, 1) * sizeof(float) + 63) / 64 * 64;
    auto* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) fail("out of host memory allocating {} MiB of activations", bytes >> 20);
    std::lock_guard lock(mutex_);
    buffers_.insert(p);
    return p;
  }
  void free_buffer(float* p) override {
    std::lock_guard lock(mutex_);
    if (buffers_.erase(p)) std::free(p);
  }
  void upload(float* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * sizeof(float)); }
  void download(float* dst, const float* src, size_t n) override { std::memcpy(dst, src, n * sizeof(float)); }

  void get_rows(const Weight& table, const int32_t* ids, int64_t n, float* out) override {
    OpTimer timer(prof_, "get_rows");
    const int64_t dim = table.cols();
    const size_t stride = row_bytes(table.type, dim);
    for (int64_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || ids[i] >= table.rows())
        fail("token id {} is outside the vocabulary of {} tokens", ids[i], table.rows());
      dequantize_row(table.type, table.host + stride * ids[i], out + i * dim, dim);
    }
  }

  void rms_norm(const float* x, const Weight& w, int64_t n_rows, int64_t dim, float eps, float* out) override {
    const auto* g = reinterpret_cast<const float*>(w.host);
    if (w.type != GgmlType::F32) fail("norm weight '{}' must be F32, got {}", w.name, type_name(w.type));
    OpTimer timer(prof_, "rms_norm");
    pool_.parallel_for(n_rows, 16, [&](int, int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = x + r * dim;
        double ss = 0;
        for (int64_t i = 0; i < dim; ++i) ss += double(xr[i]) * xr[i];
        const float scale = static_cast<float>(1.0 / std::sqrt(ss / dim + eps));
        float* o = out + r * dim;
        for (int64_t i = 0; i < dim; ++i) o[i] = (xr[i] * scale) * g[i];
      }
    });
  }

  void matmul(const Weight& w, const float* x, int64_t n_tokens, float* y, const Weight* bias) override {
    OpTimer timer(prof_, w);
    uma::matmul(WeightView{w.type, w.host, w.rows(), w.cols()}, x, n_tokens, y, pool_);
    add_bias(w, bias, n_tokens, y);
  }
  static void add_bias(const Weight& w, const Weight* bias, int64_t n_tokens, float* y) {
    if (!bias || !*bias) return;
    const auto* b = reinterpret_cast<const float*>(bias->host);
    for (int64_t t = 0; t < n_tokens; ++t)
      for (int64_t r = 0; r < w.rows(); ++r) y[t * w.rows() + r] += b[r];
  }

  // Products sharing their input (q/k/v, gate/up): one parallel region for a decoded token (matmul_many).
  void matmul_many(const float* x, int64_t n_tokens, const MatmulTarget* targets, size_t n) override {
    OpTimer timer(prof_, "matmul_many");
    if (prof_.on) {
      std::string key = "matmul_many";
      double bytes = 0;
      for (size_t i = 0; i < n; ++i) {
        key += (i ? "+" : " ") + std::string(type_name(targets[i].w->type)) + " " +
               std::to_string(targets[i].w->rows()) + "x" + std::to_string(targets[i].w->cols());
        bytes += static_cast<double>(targets[i].w->nbytes);
      }
      timer.set_key(std::move(key), bytes);
    }
    if (n > 8) return Backend::matmul_many(x, n_tokens, targets, n);  // the decoder groups 2 or 3
    WeightView views[8];
    float* ys[8];
    for (size_t i = 0; i < n; ++i) {
      const Weight& w = *targets[i].w;
      views[i] = WeightView{w.type, w.host, w.rows(), w.cols()};
      ys[i] = targets[i].y;
    }
    uma::matmul_many(views, ys, n, x, n_tokens, pool_);
    for (size_t i = 0; i < n; ++i) add_bias(*targets[i].w, targets[i].bias, n_tokens, targets[i].y);
  }

  void gather_rows(const float* src, int64_t dim, const int32_t* rows, int64_t n, float* dst) override {
    for (int64_t i = 0; i < n; ++i) std::memmove(dst + i * dim, src + rows[i] * dim, dim * sizeof(float));
  }

  void add(float* y, const float* x, int64_t n) override {
    OpTimer timer(prof_, "add");
    for (int64_t i = 0; i < n; ++i) y[i] += x[i];
  }

  void swiglu(const float* gate, const float* up, int64_t n, float* out) override {
    OpTimer timer(prof_, "swiglu");
    // One exp per value (~60 us for a 11008-wide FFN on one core): split over the pool like a small matmul.
    pool_.parallel_for(n, 2048, [&](int, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
    });
  }

  void rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
            const RopeParams& p) override;

  void store_kv(KvCache& kv, int layer, const float* k, const float* v, const BatchLayout& batch) override {
    OpTimer timer(prof_, "store_kv");
    const int kw = kv.options().k_width, vw = kv.options().v_width;
    for (int64_t t = 0; t < batch.n_tokens; ++t) {
      const int64_t c = kv.cell(batch.seq[t], batch.pos[t]);
      std::memcpy(kv.k(layer) + c * kw, k + t * kw, kw * sizeof(float));
      if (vw) std::memcpy(kv.v(layer) + c * vw, v + t * vw, vw * sizeof(float));
    }
  }

  void attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch,
                 const AttentionShape& s, float* out) override;

  // Composite ops, implemented in cpu_moe.cpp and cpu_mla.cpp.
  void moe_ffn(const MoeWeights& w, const MoeParams& p, const float* x, int64_t n, float* out) override {
    OpTimer timer(prof_, "moe_ffn");
    cpu_moe_ffn(w, p, x, n, out, pool_);
  }
  void attention_mla(const KvCache& kv, int layer, const float* q, const Weight& wk_b, const Weight& wv_b,
                     const BatchLayout& batch, const MlaShape& s, float* out) override {
    OpTimer timer(prof_, "attention_mla");
    cpu_attention_mla(kv, layer, q, wk_b, wv_b, batch, s, out, pool_);
  }

 private:
  ThreadPool pool_;
  OpProfile prof_;
  std::mutex mutex_;
  std::unordered_set<float*> buffers_;
};

// Rotation angle of pair i at position pos, following the reference implementation's f32 arithmetic
// (inv_freq in f32, angle = pos * inv_freq in f32) so positions far into the context agree bit-closely.
void CpuBackend::rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
                      const RopeParams& p) {
  OpTimer timer(prof_, "rope");
  const int half = p.n_rot / 2;
  const RopeTables tables = rope_tables(p);
  const std::vector<float>& inv_freq = tables.inv_freq;
  const std::vector<float>& ramp_mix = tables.ramp_mix;
  pool_.parallel_for(n_tokens, 1, [&](int, int64_t t0, int64_t t1) {
    std::vector<float> cs(half), sn(half);
    for (int64_t t = t0; t < t1; ++t) {
      const float pos = static_cast<float>(batch.pos[t]);
      for (int i = 0; i < half; ++i) {
        float theta;
        if (p.ext_factor > 0) {
          const float interp = pos * (inv_freq[i] * p.freq_scale), extrap = pos * inv_freq[i];
          theta = interp * (1 - ramp_mix[i]) + extrap * ramp_mix[i];
        } else {
          theta = pos * (inv_freq[i] * p.freq_scale);
        }
        cs[i] = std::cos(theta) * p.attn_factor;
        sn[i] = std::sin(theta) * p.attn_factor;
      }
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_stride;
        for (int i = 0; i < half; ++i) {
          const int a = p.neox ? i : 2 * i, b = p.neox ? i + half : 2 * i + 1;
          const float x0 = v[a], x1 = v[b];
          v[a] = x0 * cs[i] - x1 * sn[i];
          v[b] = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  });
}

void CpuBackend::attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch,
                           const AttentionShape& s, float* out) {
  OpTimer timer(prof_, "attention");
  const int kw = kv.options().k_width, vw = kv.options().v_width;
  const int group = s.n_head / s.n_head_kv;  // query heads sharing one KV head (GQA)
  const float* K = kv.k(layer);
  const float* V = kv.v(layer);
  // Grain: (token, head) pairs per unit so that each reads at least ~16 KB of cache (a wake-up costs ~2 us,
  // and the pool's chunks are several units until the tail).
  const int64_t ctx = batch.n_tokens ? batch.pos[batch.n_tokens - 1] + 1 : 1;
  const int64_t per_pair = ctx * (s.head_dim_k + s.head_dim_v) * int64_t(sizeof(float));
  const int64_t grain = std::max<int64_t>(1, (int64_t(16) << 10) / std::max<int64_t>(1, per_pair));
  pool_.parallel_for(batch.n_tokens * s.n_head, grain, [&](int, int64_t i0, int64_t i1) {
    std::vector<float> scores;
    std::vector<float> acc(s.head_dim_v);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t t = i / s.n_head;
      const int h = static_cast<int>(i % s.n_head), hk = h / group;
      const int seq = batch.seq[t];
      const int64_t n_ctx = batch.pos[t] + 1;  // causal: positions 0..pos
      const float* qh = q + (t * s.n_head + h) * s.head_dim_k;
      scores.resize(n_ctx);
      float mx = -INFINITY;
      for (int64_t p = 0; p < n_ctx; ++p) {
        const float* kp = K + kv.cell(seq, p) * kw + hk * s.head_dim_k;
        float d = 0;
        for (int j = 0; j < s.head_dim_k; ++j) d += qh[j] * kp[j];
        scores[p] = d * s.scale;
        mx = std::max(mx, scores[p]);
      }
      const double sum = exp_scores(scores.data(), n_ctx, mx);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t p = 0; p < n_ctx; ++p) {
        const float* vp = V + kv.cell(seq, p) * vw + hk * s.head_dim_v;
        const float w = scores[p];
        for (int j = 0; j < s.head_dim_v; ++j) acc[j] += w * vp[j];
      }
      float* o = out + (t * s.n_head + h) * s.head_dim_v;
      const float inv = static_cast<float>(1.0 / sum);
      for (int j = 0; j < s.head_dim_v; ++j) o[j] = acc[j] * inv;
    }
  });
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int n_threads) { return std::make_unique<CpuBackend>(n_threads); }

}  // namespace uma
