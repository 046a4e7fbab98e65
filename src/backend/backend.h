// The narrow interface between model code and compute devices. Model families are written once against
// these ops; the CPU backend runs them on host memory with the thread pool, the CUDA backend on the GPU.
// Activation buffers are opaque float pointers owned by the backend (host or device memory); the model
// never dereferences them, it only passes them between ops and downloads the final logits.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "quant/types.h"
#include "sampling/top_k.h"
#include "uma/error.h"

namespace uma {

class KvCache;

// A weight tensor as the model sees it: the bytes in the mmap plus whatever the backend made of them.
struct Weight {
  std::string name;
  GgmlType type = GgmlType::F32;
  int64_t ne[4] = {1, 1, 1, 1};  // ne[0]: input features (contiguous), ne[1]: output features
  const uint8_t* host = nullptr;
  size_t nbytes = 0;
  void* device = nullptr;        // backend copy, when the backend keeps one
  int64_t cols() const { return ne[0]; }
  int64_t rows() const { return ne[1]; }
  explicit operator bool() const { return host != nullptr; }
};

// Rotary position embedding. NORM rotates adjacent pairs (x[2i], x[2i+1]) — GGUF llama weights are permuted
// for it; NEOX rotates (x[i], x[i + n_rot/2]) as HF's rotate_half does.
struct RopeParams {
  int n_rot = 0;                 // leading dims of each head that rotate
  float freq_base = 10000.0f;
  bool neox = false;
  std::vector<float> freq_factors;  // per pair divisor of the frequency (Llama-3 scaling), empty = none
  // Round each pair's frequency to bf16, as transformers does when it runs a bf16 checkpoint (its
  // inv_freq buffer is cast with the model). Off by default: exact f32 frequencies are the model as
  // trained; on, uma reproduces transformers' logits to ~1e-6 instead of ~1e-3 at position 100.
  bool freq_bf16 = false;
  // YaRN (DeepSeek): frequencies blend between interpolated and extrapolated by a ramp over dims.
  float freq_scale = 1.0f;       // 1 / scaling factor
  float ext_factor = 0.0f;       // > 0 enables the YaRN ramp
  float attn_factor = 1.0f;      // multiplies cos/sin (YaRN mscale)
  float beta_fast = 32.0f, beta_slow = 1.0f;
  int n_ctx_orig = 0;
};

// Which tokens of a step belong to which sequence and position.
struct BatchLayout {
  const int32_t* pos = nullptr;  // [n_tokens]
  const int32_t* seq = nullptr;  // [n_tokens] KV-cache sequence slot
  int64_t n_tokens = 0;
};

// One product of a group that shares its input (Backend::matmul_many): y = W x (+ bias).
struct MatmulTarget {
  const Weight* w = nullptr;
  float* y = nullptr;
  const Weight* bias = nullptr;  // optional
};

struct AttentionShape {
  int n_head = 0, n_head_kv = 0;
  int head_dim_k = 0, head_dim_v = 0;
  float scale = 1.0f;            // applied to q·k
};

// Mixture-of-experts routing: how a token's router logits [n_expert] become the top-k experts and their
// weights. Mixtral/Qwen3-MoE: softmax, top-k, renormalise. DeepSeek-V3: sigmoid, add the selection bias
// (exp_probs_b) to choose — but weigh with the unbiased scores —, keep only the best n_group_used of n_group
// groups (a group's score: the sum of its two best biased scores), renormalise, scale by weights_scale.
enum class MoeGating { softmax, sigmoid };

struct MoeParams {
  int n_expert = 0;          // routed experts
  int n_expert_used = 0;     // top-k per token
  MoeGating gating = MoeGating::softmax;
  bool norm_weights = false;  // divide the selected weights by their sum
  float weights_scale = 1.0f; // multiplies the final weights (DeepSeek routed_scaling_factor)
  int n_group = 1, n_group_used = 1;  // group-limited routing; 1/1 = off
};

// The tensors of one MoE block. Stacked experts: a Weight with ne[2] = n_expert whose expert e starts at
// host + e * row_bytes(type, ne[0]) * ne[1].
struct MoeWeights {
  const Weight* router = nullptr;      // [n_embd, n_expert] (ffn_gate_inp)
  const Weight* select_bias = nullptr; // [n_expert] added to the scores for selection only (optional)
  const Weight* gate = nullptr;        // [n_embd, n_ff, n_expert]
  const Weight* up = nullptr;          // [n_embd, n_ff, n_expert]
  const Weight* down = nullptr;        // [n_ff, n_embd, n_expert]
};

// Multi-head latent attention (DeepSeek-V2/V3) over a compressed cache. Per token and layer the cache holds
// the normalised KV latent c [kv_lora] in the K slot and the shared, rotated RoPE key [n_rot] in the V slot
// (k_width = kv_lora, v_width = n_rot). Keys and values are never decompressed: with W_uk, W_uv the
// per-head up-projections, q_nope·(W_uk c) = (W_uk^T q_nope)·c and Σ p (W_uv c) = W_uv (Σ p c), so each
// head's query is absorbed into latent space and the weighted latent is projected to values at the end.
struct MlaShape {
  int n_head = 0;
  int kv_lora = 0;         // latent width
  int n_rot = 0;           // decoupled RoPE dims (q tail, shared key)
  int head_dim_nope = 0;   // non-rotated q/k dims per head
  int head_dim_v = 0;      // value dims per head
  float scale = 1.0f;      // applied to q·k
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual bool supports(GgmlType type) const = 0;

  // Activation buffers of n floats (uninitialised). Freed by free_buffer or when the backend dies.
  virtual float* alloc(size_t n) = 0;
  virtual void free_buffer(float* p) = 0;
  virtual void upload(float* dst, const float* host_src, size_t n) = 0;
  virtual void download(float* host_dst, const float* src, size_t n) = 0;

  // Called once per weight after loading; a device backend copies it to device memory here.
  virtual void prepare_weight(Weight& w) {}
  // Whether its ops read and write a KV cache of f16 cells (KvCacheOptions::f16).
  virtual bool supports_f16_kv() const { return false; }
  virtual bool supports_q8_kv() const { return false; }  // KvCacheOptions::q8

  // Optional bracket around one forward step: every op between them uses this batch layout and cache (a
  // device backend uploads positions and page tables once here, and may record the step's ops and replay
  // them as one graph). The ops' results are only guaranteed visible after end_step (download after it).
  virtual void begin_step(const BatchLayout& batch, const KvCache& kv) {}
  virtual void end_step() {}

  // out[i, :] = row ids[i] of an embedding table (any type), dequantized. ids are host memory.
  virtual void get_rows(const Weight& table, const int32_t* ids, int64_t n, float* out) = 0;
  // out[r, :] = x[r, :] / rms(x[r, :]) * w  over n_rows rows of `dim` (w has `dim` values).
  virtual void rms_norm(const float* x, const Weight& w, int64_t n_rows, int64_t dim, float eps, float* out) = 0;
  // y[t, :] = W x[t, :]  (+ bias when given).
  virtual void matmul(const Weight& w, const float* x, int64_t n_tokens, float* y, const Weight* bias = nullptr) = 0;
  // dst[i, :] = src[rows[i], :] for rows of `dim` floats (rows are host memory).
  virtual void gather_rows(const float* src, int64_t dim, const int32_t* rows, int64_t n, float* dst) = 0;
  // y += x over n values.
  virtual void add(float* y, const float* x, int64_t n) = 0;
  // out = silu(gate) * up over n values.
  virtual void swiglu(const float* gate, const float* up, int64_t n, float* out) = 0;
  // In place on x laid out [n_tokens, n_heads, head_stride]; rotates the first n_rot dims of each head.
  virtual void rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
                    const RopeParams& p) = 0;

  // KV cache storage for one layer: `cells` token slots of k_width and v_width floats.
  virtual void store_kv(KvCache& kv, int layer, const float* k, const float* v, const BatchLayout& batch) = 0;
  // Causal attention of each token's query over its sequence's cached keys/values up to its position.
  // q: [n_tokens, n_head, head_dim_k], out: [n_tokens, n_head, head_dim_v].
  virtual void attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch,
                         const AttentionShape& shape, float* out) = 0;

  // Fused ops: each has a default made of the ops above, so a backend overrides only what it can do in
  // fewer passes (a device backend: fewer launches and fewer round trips through memory per token).

  // Several products of the same input, e.g. q/k/v or gate/up: targets[i].y = W_i x (+ b_i).
  virtual void matmul_many(const float* x, int64_t n_tokens, const MatmulTarget* targets, size_t n_targets) {
    for (size_t i = 0; i < n_targets; ++i) matmul(*targets[i].w, x, n_tokens, targets[i].y, targets[i].bias);
  }
  // The residual add and the next block's norm: x += y, then out = rms_norm(x) * w (rows as in rms_norm).
  virtual void add_rms_norm(float* x, const float* y, const Weight& w, int64_t n_rows, int64_t dim, float eps,
                            float* out) {
    add(x, y, n_rows * dim);
    rms_norm(x, w, n_rows, dim, eps, out);
  }
  // The tail of the attention projections: RoPE on q [n_tokens, n_head, head_dim] and k [n_tokens,
  // n_head_kv, head_dim], then k and v into the cache.
  virtual void rope_store_kv(KvCache& kv, int layer, float* q, float* k, const float* v, int n_head, int n_head_kv,
                             int head_dim, const BatchLayout& batch, const RopeParams& p) {
    rope(q, batch.n_tokens, n_head, head_dim, batch, p);
    rope(k, batch.n_tokens, n_head_kv, head_dim, batch, p);
    store_kv(kv, layer, k, v, batch);
  }

  // The index of the largest value of each of n_rows rows of x [n_rows, n_cols] (device memory), the lowest
  // index on ties (the sampler's greedy rule), into `out` (host memory). Synchronous, outside a step. Greedy
  // decoding on a device reads n_rows ids instead of n_rows x n_vocab logits.
  virtual void argmax_rows(const float* x, int64_t n_rows, int64_t n_cols, int32_t* out) {
    std::vector<float> rows(static_cast<size_t>(n_rows * n_cols));
    download(rows.data(), x, rows.size());
    for (int64_t r = 0; r < n_rows; ++r) {
      const float* row = rows.data() + r * n_cols;
      out[r] = static_cast<int32_t>(std::max_element(row, row + n_cols) - row);  // first of equal maxima
    }
  }

  // Sampling next to the logits (Sampler::backend_candidates): applies `pen` to one row of n_cols logits
  // (device memory, left penalised: row_mass and a download then read the penalised row) and writes its k
  // best (id, penalised logit) to `out` (host memory, k entries), best first: higher logit, then lower id, NaN
  // as -inf. 1 <= k <= n_cols. Synchronous, outside a step. The default downloads the row and runs the
  // reference (sampling/top_k.h); a device backend returns k pairs instead of n_cols floats, and may serve a k
  // larger than its kernels take through this default.
  virtual void top_k_row(float* logits, int64_t n_cols, int k, const LogitPenalties& pen, TokenLogit* out) {
    std::vector<float>& row = host_row(logits, n_cols);
    penalized_top_k(row.data(), row.size(), k, pen, out);
    if (pen.active()) upload(logits, row.data(), row.size());
  }
  // The probability mass of a row of n_cols logits (device memory) whose best logit is max_logit (RowMass,
  // sampling/top_k.h), for chains that sample from the whole row (Sampler::sample_head): two numbers come
  // back instead of the row. Synchronous, outside a step. The default downloads the row.
  virtual RowMass row_mass(const float* logits, int64_t n_cols, float max_logit, double inv_t) {
    const std::vector<float>& row = host_row(logits, n_cols);
    return uma::row_mass(row.data(), row.size(), max_logit, inv_t);
  }

  // Composite ops with a default that fails, so that a backend can adopt them one at a time.

  // Routed experts of a MoE block: out[t, :] = Σ_k w[t, k] · down_e(silu(gate_e x[t]) · up_e x[t]) over the
  // top-k experts e of token t (routing as MoeParams says). x, out: [n_tokens, n_embd]. Shared experts are
  // not included (the model adds them). Only the selected experts' weights are read.
  virtual void moe_ffn(const MoeWeights& w, const MoeParams& p, const float* x, int64_t n_tokens, float* out) {
    fail("mixture-of-experts feed-forward (moe_ffn) is not supported by the {} backend", name());
  }
  // Latent attention (see MlaShape) of each token over its sequence's cache up to its position.
  // q: [n_tokens, n_head, head_dim_nope + n_rot], rope part already rotated; out: [n_tokens, n_head, head_dim_v].
  // wk_b: [head_dim_nope, kv_lora, n_head] (head h: kv_lora rows of head_dim_nope, i.e. W_uk^T);
  // wv_b: [kv_lora, head_dim_v, n_head] (head h: W_uv, head_dim_v rows of kv_lora).
  virtual void attention_mla(const KvCache& kv, int layer, const float* q, const Weight& wk_b, const Weight& wv_b,
                             const BatchLayout& batch, const MlaShape& shape, float* out) {
    fail("multi-head latent attention (attention_mla) is not supported by the {} backend", name());
  }

 private:
  // A row of n_cols floats downloaded into a host buffer of this thread, kept between tokens (see
  // penalized_top_k); the sampling defaults above read it.
  std::vector<float>& host_row(const float* logits, int64_t n_cols) {
    thread_local std::vector<float> row;
    row.resize(static_cast<size_t>(n_cols));
    download(row.data(), logits, row.size());
    return row;
  }
};

std::unique_ptr<Backend> make_cpu_backend(int n_threads);

#ifdef UMA_HAVE_CUDA
// The CUDA backend on GPU `device` (src/backend/cuda); throws uma::Error when it does not exist.
std::unique_ptr<Backend> make_cuda_backend(int device);
int cuda_device_count();             // 0 when there is no driver or no GPU
size_t cuda_free_bytes(int device);  // free device memory now
#endif

}  // namespace uma
