// The CUDA backend's class, shared by its translation units (cuda_backend.cu: memory, weights, steps and
// graphs; cuda_matmul.cu; cuda_elementwise.cu; cuda_attention.cu; cuda_moe.cu; cuda_sampling.cu). Not a
// public header: model code sees only Backend (backend/backend.h).
//
// Every op goes through submit(): run now, or, while a decode step is recorded, appended to the step with
// a signature of every value the launch depends on (end_step replays a cached graph whose signature
// matches). See docs/CUDA.md.
#pragma once
#include <fmt/format.h>

#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cublas_api.h"
#include "backend/cuda/cuda_util.cuh"
#include "backend/cuda/kernels.cuh"
#include "backend/cuda/weight_arena.h"
#include "kv/kv_cache.h"
#include "quant/quant.h"

namespace uma::cuda {

// Where a token's sequence keeps position p: the cell of the paged KV cache (kv_cache.h).
struct DeviceLayout {
  const int32_t* pos;      // [n_tokens]
  const int32_t* pageoff;  // [n_tokens] offset of the token's sequence in `pages`
  const int32_t* pages;    // page lists of the batch's sequences, concatenated
};
__device__ __forceinline__ int64_t kv_cell(const DeviceLayout& L, int64_t t, int64_t p) {
  return int64_t(L.pages[L.pageoff[t] + p / KvCache::kPageSize]) * KvCache::kPageSize + p % KvCache::kPageSize;
}


// RoPE as the kernels take it: inv_freq and the YaRN mix precomputed on the host with the CPU backend's
// arithmetic (rope_tables.h), kept on the device per parameter set.
struct RopeArgs {
  const float *inv_freq, *ramp_mix;
  int half, neox, yarn;
  float freq_scale, attn_factor;
  int unused;
};
static_assert(sizeof(RopeArgs) == 2 * sizeof(void*) + 6 * 4, "no padding: RopeArgs enters graph signatures");

// A device copy of a weight, in the type the kernels read (types without a kernel become F16; the
// quantized types with a GEMV are repacked, see WView).
// An int8 GEMV's input that is x ⊙ w of a pending parallel RMSNorm (CudaBackend::PendingNorm): the GEMV
// scales its outputs, and `xn` in place, by 1 / RMS from the per-block sums of squares. parts == nullptr:
// a plain input. No padding: it enters graph signatures.
struct RmsIn {
  const float* parts;
  float* xn;
  int32_t dim;
  float eps;
};

// Up to kMaxGemvSegs matrices of one type and width that share an input in one GEMV launch (q/k/v, gate/up:
// one launch instead of three, and the small GQA k/v matrices ride along with q instead of paying a launch
// and a ramp-up of their own). Units (blocks, or a bulk GEMV's stages) [first[s], first[s + 1]) compute
// segment s.
constexpr int kMaxGemvSegs = 3;
struct GemvSegs {
  WView w[kMaxGemvSegs];  // plain types: w.q = rows of q_row bytes
  float* y[kMaxGemvSegs];
  const float* bias[kMaxGemvSegs];
  int64_t rows[kMaxGemvSegs];
  int first[kMaxGemvSegs + 1];
  int n;
  RmsIn rms;  // rms.parts: the activations are x ⊙ w of a pending parallel RMSNorm
};

bool bulk_gemv_compiled();  // cuda_gemv_bulk.cu

struct DeviceWeight {
  GgmlType type;
  uint8_t* data;     // the allocation
  size_t row_bytes;  // bytes a row (GGUF size: what the GEMV streams per row)
  int64_t rows, cols;
  WView view;
};

// Device scratch that only grows. While a step is recorded (deferred) an outgrown buffer may still be
// named by a recorded op, so it is retired and freed with the backend instead of at once.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  std::vector<void*> retired;
  void* get(size_t n, bool deferred = false) {
    if (n > bytes) {
      if (p) {
        if (deferred) retired.push_back(p);
        else UMA_CHECK(cudaFree(p));
      }
      UMA_CHECK(cudaMalloc(&p, n));
      bytes = n;
    }
    return p;
  }
  void release(cudaStream_t s) {  // outside recorded steps only
    if (!p) return;
    UMA_CHECK(cudaStreamSynchronize(s));
    UMA_CHECK(cudaFree(p));
    p = nullptr, bytes = 0;
  }
  ~Scratch() {
    if (p) cudaFree(p);
    for (void* r : retired) cudaFree(r);
  }
};

// A pinned host buffer and its device twin: small per-step data (positions, page tables, token ids) is
// written to the pinned side and copied asynchronously on the stream (inside a graph: a memcpy node that
// re-reads the pinned side at every replay).
struct Staged {
  int32_t* host = nullptr;
  int32_t* dev = nullptr;
  size_t cap = 0;  // int32 values
  void reserve(size_t n, cudaStream_t s) {
    if (n <= cap) return;
    if (host || dev) UMA_CHECK(cudaStreamSynchronize(s));
    if (host) cudaFreeHost(host);
    if (dev) cudaFree(dev);
    cap = std::max<size_t>(n, 64);
    UMA_CHECK(cudaMallocHost(&host, cap * sizeof(int32_t)));
    UMA_CHECK(cudaMalloc(&dev, cap * sizeof(int32_t)));
  }
  ~Staged() {
    if (host) cudaFreeHost(host);
    if (dev) cudaFree(dev);
  }
};

// KV cell types as the kernels take them (KvCells): f32, f16 or 8-bit cells of a cache, a tag to dispatch on,
// and a layer buffer's view (8-bit cells: the scales follow the n_cells * width values).
enum class KvKind : int32_t { F32, F16, Q8 };
inline KvKind kv_kind(const KvCache& kv) {
  return kv.options().q8 ? KvKind::Q8 : kv.options().f16 ? KvKind::F16 : KvKind::F32;
}
template <typename KV>
struct KvTag {
  using type = KV;
};
template <class F>
void with_kv(KvKind kind, F&& f) {
  switch (kind) {
    case KvKind::F16: return f(KvTag<__half>{});
    case KvKind::Q8: return f(KvTag<int8_t>{});
    default: return f(KvTag<float>{});
  }
}
template <typename KV>
__host__ __device__ inline KvCells<KV> kv_cells(const void* base, int64_t n_cells, int width) {
  auto* p = static_cast<KV*>(const_cast<void*>(base));
  if constexpr (std::is_same_v<KV, int8_t>) return {p, reinterpret_cast<__half*>(p + n_cells * width)};
  else return {p, nullptr};
}

inline bool has_gemv(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_0: case GgmlType::Q8_0:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: return true;
    default: return false;
  }
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    UMA_CHECK(cudaSetDevice(device));
    UMA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // UMA_CUDA_MEMLOG=1: device memory in use (all processes: cudaMemGetInfo) with the context alone, after
    // cuBLAS, and at its peak over step ends, printed when the backend dies (docs/PLAN.md, GPU memory).
    memlog_ = env_on("UMA_CUDA_MEMLOG", false);
    if (memlog_) mem_context_ = device_used();
    check(cuda::cublas_api().create(&cublas_), "cublasCreate");
    if (memlog_) mem_cublas_ = device_used();
    check(cuda::cublas_api().set_stream(cublas_, stream_), "cublasSetStream");
    cudaDeviceProp prop{};
    UMA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
    UMA_CHECK(cudaEventCreateWithFlags(&step_done_, cudaEventDisableTiming));
    UMA_CHECK(cudaStreamCreateWithFlags(&side_, cudaStreamNonBlocking));
    for (int b = 0; b < 2; ++b) {
      UMA_CHECK(cudaEventCreateWithFlags(&dequant_done_[b], cudaEventDisableTiming));
      UMA_CHECK(cudaEventCreateWithFlags(&gemm_done_[b], cudaEventDisableTiming));
    }
    // UMA_CUDA_PROFILE=1: time every op with events (no graphs) and print a table when the backend dies.
    // UMA_CUDA_GRAPHS=0: run decode steps op by op instead of replaying a captured graph.
    profile_ = env_on("UMA_CUDA_PROFILE", false);
    graphs_ = env_on("UMA_CUDA_GRAPHS", true) && !profile_;
    // UMA_CUDA_PDL=0: launch the GEMVs without programmatic dependent launch (for comparison).
    pdl_ = env_on("UMA_CUDA_PDL", true) && prop.major >= 9;
    parallel_norm_ = env_on("UMA_CUDA_NORM_PARALLEL", true);  // =0: decode norms in one block (PendingNorm)
    prefetch_ = env_on("UMA_CUDA_PREFETCH", true);  // =0: no L2 prefetch of the weights before pdl_wait
    merge_ = env_on("UMA_CUDA_MERGE", true);  // =0: one GEMV launch per matrix (q/k/v, gate/up apart)
    fuse_ = env_on("UMA_CUDA_FUSE", true);    // =0: no fused ops (norm + int8, rope + store, add + norm)
    gemm_attention_ = env_on("UMA_CUDA_ATTN_GEMM", true);  // =0: prefill attention with the decode kernel
    if (const char* v = std::getenv("UMA_CUDA_ATTN_SPLITS")) attn_max_splits_ = std::max(1, std::atoi(v));
    // UMA_CUDA_ATTN_LONG: 0 one decode attention kernel for every context, 1 (default) the long-context
    // kernel for f16 cells, all: for 8-bit cells too (2 % slower than the short kernel there after 32k tokens).
    if (const char* v = std::getenv("UMA_CUDA_ATTN_LONG"))
      long_attention_ = std::strcmp(v, "0") == 0 ? 0 : std::strcmp(v, "all") == 0 ? 2 : 1;
    attn_tf32_ = env_on("UMA_CUDA_ATTN_TF32", true);         // =0: its products in f32, not TF32 (see there)
    gemv_pair_ = env_on("UMA_CUDA_GEMV_PAIR", true);  // =0: Q4_0/Q4_K/Q5_K GEMVs on 32-value chunks
    gemv_tokens_ = env_on("UMA_CUDA_GEMV_TOKENS", true);  // =0: int8 GEMVs of 2-4 tokens take a block a token
    // UMA_CUDA_GEMV_BULK: single-token GEMVs through bulk copies (bulk_config); =0 off, =KB,slots,blocks,warps
    // those settings for every type (for measurements).
    bulk_allowed_ = env_on("UMA_CUDA_GEMV_BULK", true) && prop.major >= 9 && bulk_gemv_compiled();
    if (const char* b = std::getenv("UMA_CUDA_GEMV_BULK"); b && std::strchr(b, ',')) {
      BulkConfig& c = bulk_explicit_;
      if (std::sscanf(b, "%d,%d,%d,%d", &c.kb, &c.slots, &c.blocks, &c.warps) != 4 || c.kb < 1 || c.slots < 1 ||
          c.slots > 8 || c.blocks < 1 || c.warps < 1) {
        std::fprintf(stderr, "UMA_CUDA_GEMV_BULK=%s is not KB,slots (1-8),blocks,warps; using the defaults\n", b);
        c = {};
      }
    }
    producer_scale_ = env_on("UMA_CUDA_BULK_LATE_SCALE", true);
    bulk_whole_rows_ = env_on("UMA_CUDA_BULK_ROWS", true);  // =0: rows split over warps, summed after a barrier
    bulk_pair_ = env_on("UMA_CUDA_BULK_PAIR", false);      // =1: Q4_0's bulk GEMV on 64-value chunks too
    bulk_held_ = env_on("UMA_CUDA_BULK_HELD", true);  // =0: bulk consumers reload activations every stage
    if (const char* g = std::getenv("UMA_CUDA_GEMV")) {
      std::sscanf(g, "%dx%d", &gemv_rows_, &gemv_warps_);
      const int shape = gemv_rows_ * 16 + gemv_warps_;  // the shapes launch_gemv instantiates
      if (shape != 4 * 16 + 4 && shape != 8 * 16 + 4 && shape != 4 * 16 + 2 && shape != 8 * 16 + 2) {
        std::fprintf(stderr, "UMA_CUDA_GEMV=%s is not one of 4x4, 8x4, 4x2, 8x2; using the default\n", g);
        gemv_rows_ = 4, gemv_warps_ = 0;
      }
    }
    // UMA_CUDA_SKIP=op[,op...]: leave those ops out (results are wrong; for measuring what each op costs
    // inside a decode step, e.g. UMA_CUDA_SKIP=gemv leaves only the small kernels).
    if (const char* s = std::getenv("UMA_CUDA_SKIP")) skip_ = std::string(",") + s + ",";
    sm_count_ = prop.multiProcessorCount;
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    if (profile_) print_profile();
    if (memlog_) print_memory();
    for (auto& g : graph_cache_) cudaGraphExecDestroy(g.exec);
    for (auto& [p, n] : buffers_) cudaFree(p);
    for (auto& [key, tab] : rope_tabs_) cudaFree(tab);
    if (staging_[0]) cudaFreeHost(staging_[0]);
    if (staging_[1]) cudaFreeHost(staging_[1]);
    cudaEventDestroy(step_done_);
    cudaStreamSynchronize(side_);
    for (int b = 0; b < 2; ++b) cudaEventDestroy(dequant_done_[b]), cudaEventDestroy(gemm_done_[b]);
    cudaStreamDestroy(side_);
    cuda::cublas_api().destroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  std::string name() const override { return name_; }
  bool supports(GgmlType type) const override { return traits(type).supported; }

  float* alloc(size_t n) override {
    q8_src_ = nullptr;  // writes device memory: the quantized activations may be stale
    void* p = nullptr;
    const size_t bytes = std::max<size_t>(n, 1) * sizeof(float);
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("out of GPU memory allocating {} MiB ({} MiB free of {}); use a smaller context (-c) or --device cpu",
           bytes >> 20, free_b >> 20, total_b >> 20);
    }
    std::lock_guard lock(mutex_);
    buffers_.emplace(static_cast<float*>(p), bytes);
    return static_cast<float*>(p);
  }
  void free_buffer(float* p) override {
    q8_src_ = nullptr;
    flush();
    std::lock_guard lock(mutex_);
    if (buffers_.erase(p)) UMA_CHECK(cudaFree(p));
  }
  void upload(float* dst, const float* src, size_t n) override {
    q8_src_ = nullptr;
    flush();
    UMA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
  }
  void download(float* dst, const float* src, size_t n) override {
    settle_norm();
    flush();
    UMA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    UMA_CHECK(cudaStreamSynchronize(stream_));
    if (profile_) collect_profile();
  }

  void argmax_rows(const float* x, int64_t n_rows, int64_t n_cols, int32_t* out) override;
  // Penalties and top-k on the device (cuda_sampling.cu) for k up to kMaxTopK; a larger k goes through the
  // host default (the whole row downloaded).
  static constexpr int kMaxTopK = 256;
  void top_k_row(float* logits, int64_t n_cols, int k, const LogitPenalties& pen, TokenLogit* out) override;
  RowMass row_mass(const float* logits, int64_t n_cols, float max_logit, double inv_t) override;
  bool supports_f16_kv() const override { return true; }
  bool supports_q8_kv() const override { return true; }

  void prepare_weight(Weight& w) override { w.device = const_cast<DeviceWeight*>(&device_weight(w)); }

  void begin_step(const BatchLayout& batch, const KvCache& kv) override;
  void end_step() override;

  void get_rows(const Weight& table, const int32_t* ids, int64_t n, float* out) override;
  void rms_norm(const float* x, const Weight& w, int64_t n_rows, int64_t dim, float eps, float* out) override;
  void matmul(const Weight& w, const float* x, int64_t n_tokens, float* y, const Weight* bias) override;
  void matmul_many(const float* x, int64_t n_tokens, const MatmulTarget* targets, size_t n_targets) override;
  void gather_rows(const float* src, int64_t dim, const int32_t* rows, int64_t n, float* dst) override;
  void add(float* y, const float* x, int64_t n) override;
  void swiglu(const float* gate, const float* up, int64_t n, float* out) override;
  void rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
            const RopeParams& p) override;
  void add_rms_norm(float* x, const float* y, const Weight& w, int64_t n_rows, int64_t dim, float eps,
                    float* out) override;
  void rope_store_kv(KvCache& kv, int layer, float* q, float* k, const float* v, int n_head, int n_head_kv,
                     int head_dim, const BatchLayout& batch, const RopeParams& p) override;
  void store_kv(KvCache& kv, int layer, const float* k, const float* v, const BatchLayout& batch) override;
  void attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch, const AttentionShape& s,
                 float* out) override;

  // ---- MoE and MLA (cuda_moe.cu, cuda_mla.cu; docs/MOE.md) -------------------------------------------
  void moe_ffn(const MoeWeights& w, const MoeParams& p, const float* x, int64_t n_tokens, float* out) override;
  void attention_mla(const KvCache& kv, int layer, const float* q, const Weight& wk_b, const Weight& wv_b,
                     const BatchLayout& batch, const MlaShape& shape, float* out) override;

 private:
  // Which slice of a stacked weight ("expert": MoE expert or MLA head) and which activation rows each block
  // of an expert GEMV takes. Every field lives on the device or is fixed per shape, so a recorded decode
  // step never needs the host to know the routing. No padding: it enters graph signatures.
  struct ExpertTiles {
    const int32_t* ids;      // kDirect: tile p is pair p, its expert ids[p]
    const int32_t* list;     // kGrouped: per tile {expert, first index into order, pairs}
    const int32_t* order;    // kGrouped: pair indices grouped by expert
    const int32_t* n_tiles;  // kGrouped: tiles in list
    int32_t mode;            // kDirect, kGrouped, kHeads (pair = token * heads + head, expert = head)
    int32_t heads;           // kHeads
    int32_t n_pairs;         // kDirect: pairs; kHeads: tokens
    int32_t unused = 0;
  };
  static constexpr int32_t kDirect = 0, kGrouped = 1, kHeads = 2;
  // y[pair, r] = W_e[r, :] · x[pair / act_div, :] for r < rows (expert e's rows start at e * rows), or with
  // `up`: silu(W_e x) * (U_e x). Quantized weights read int8 activations (quantize_activations of all
  // act_rows rows of x); tok_per_tile: 1 or 8 pairs a block (tiles built for it).
  void expert_gemv(const DeviceWeight& w, const DeviceWeight* up, int64_t rows, const float* x, int64_t act_rows,
                   int act_div, const ExpertTiles& tiles, int64_t max_tiles, int tok_per_tile, float* y);
  Scratch moe_f_, moe_i_, mla_f_, mla_part_;
  // ---- end MoE and MLA ------------------------------------------------------------------------------

 private:
  // Steps that take the decode path (int8 GEMVs, recorded graphs, the decode attention kernel): up to 4 tokens,
  // or up to 8 when each comes from a sequence of its own (the server decoding 5-8 sequences together; a
  // prompt of 5-8 tokens keeps the prefill path's numerics). Outside a step: 4.
  static constexpr int64_t kMaxGemvTokens = 4, kMaxDecodeSeqs = 8;
  int64_t step_decode_max_ = kMaxGemvTokens;
  bool decode_sized(int64_t n) const { return n <= (in_step_ ? step_decode_max_ : kMaxGemvTokens); }

  const DeviceWeight& device_weight(const Weight& w);
  // Up to kMaxGemvSegs matrices of one type and width that share an input: one GEMV launch.
  struct GemvTargets {
    const DeviceWeight* d[kMaxGemvSegs];
    float* y[kMaxGemvSegs];
    const float* b[kMaxGemvSegs];
    int n, unused;
  };
  static_assert(sizeof(GemvTargets) == 9 * sizeof(void*) + 8, "no padding: GemvTargets enters graph signatures");
  void gemv(const GemvTargets& g, const float* x, int64_t n_tokens);
  void launch_gemv(const GemvTargets& g, const float* x, const int8_t* xq, const float4* xs, int64_t n_tokens,
                   const RmsIn& rms);
  // The single-token GEMV through bulk copies into shared memory (gemv_bulk_kernel): stages of about kb KB, a
  // ring of `slots`, `blocks` blocks an SM of `warps` consumer warps (8, 16 or 24); kb 0: not used.
  struct BulkConfig {
    int kb = 0, slots = 2, blocks = 1, warps = 16;
  };
  BulkConfig bulk_config(GgmlType type) const;
  bool launch_gemv_bulk(const BulkConfig& c, const GemvSegs& segs, const GemvTargets& g, const float* x,
                        const int8_t* xq, const float4* xs, bool pair);
  // The decode RMSNorm in its parallel form (rms_norm_parts_kernel) leaves x ⊙ w in `out`, its int8 blocks
  // and per-block sums of squares in `parts`; the int8 GEMV that reads `out` next applies 1 / RMS. Anything
  // else that runs first settles it (settle_norm: scales out and the int8 scales), and that norm weight gets
  // the single-block kernel from then on (serial_norms_: e.g. an MoE router or an F16 model's GEMV).
  struct PendingNorm {
    float* parts;
    float* out;
    int32_t n_rows, dim;
    float eps;
    const float* weight;
  };
  PendingNorm norm_pending_{};
  std::unordered_set<const float*> serial_norms_;
  Scratch norm_parts_;
  void settle_norm();
  // x [n_tokens, cols] as int8 blocks (quantize_q8_kernel) in the q8_ scratch. Consecutive matmuls of the
  // same activations (q/k/v, gate/up) quantize once: every other op that writes device memory forgets it.
  // Ops whose output feeds a GEMV (rms_norm, swiglu, attention of a decode step) write the int8 blocks
  // themselves, into q8_buffer(their output).
  void quantize_activations(const float* x, int64_t n_tokens, int64_t cols, const int8_t*& xq, const float4*& xs);
  struct Q8Buffer {
    int8_t* xq;
    float4* xs;
  };
  Q8Buffer q8_buffer(const float* x, int64_t n);
  void gemm_many(const float* x, int64_t n_tokens, const MatmulTarget* targets, size_t n_targets);
  void dequant_f16(const DeviceWeight& d, __half* w16, cudaStream_t stream);
  bool attention_gemm(const KvCache& kv, int layer, const float* q, const BatchLayout& batch, const AttentionShape& s,
                      float* out, const DeviceLayout& L);
  DeviceLayout upload_layout(const KvCache& kv, const BatchLayout& batch);
  DeviceLayout layout_for(const KvCache& kv, const BatchLayout& batch);
  std::vector<int32_t> host_layout(const KvCache& kv, const BatchLayout& batch) const;
  const float* rope_table(const RopeParams& p);
  RopeArgs rope_args(const RopeParams& p);
  void norm_op(float* x, const float* y, const Weight& w, int64_t n_rows, int64_t dim, float eps, float* out);
  // Small host arrays an op needs on the device. Inside a step: a pinned slot per call, copied on the
  // stream (recorded with the step); outside: a plain async copy into `s`.
  const int32_t* stage_ints(Scratch& s, const int32_t* v, int64_t n) {
    if (in_step_) {
      if (n_staged_ == staged_.size()) staged_.emplace_back(std::make_unique<Staged>());
      Staged& st = *staged_[n_staged_++];
      if (size_t(n) > st.cap) {
        flush();  // a recorded op may name the old buffers
        st.reserve(size_t(n), stream_);
      }
      std::memcpy(st.host, v, n * sizeof(int32_t));
      submit("upload", 0, [this](int32_t* dst, const int32_t* src, int64_t n) {
        UMA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      }, st.dev, static_cast<const int32_t*>(st.host), n);
      return st.dev;
    }
    auto* p = static_cast<int32_t*>(s.get(n * sizeof(int32_t)));
    UMA_CHECK(cudaMemcpyAsync(p, v, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    return p;
  }
  void copy_to_device(uint8_t* dst, const uint8_t* src, size_t n);

  // ---- ops: run now, or (while a decode step is recorded) appended to the step with a signature of
  // every value the launch depends on; end_step replays a cached graph whose signature matches.
  template <class Fn, class... A>
  void submit(const char* name, double bytes, Fn fn, A... args) {
    static_assert(sizeof(Fn) <= sizeof(void*), "pass every value as an argument: it must enter the signature");
    settle_norm();  // an op other than the GEMV that applies it: see PendingNorm
    if (skipped(name)) return;
    if (deferred_) {
      const size_t n = sig_.size();
      sig_.resize(n + sizeof(name) + (sizeof(A) + ... + 0));
      uint8_t* w = sig_.data() + n;
      std::memcpy(w, &name, sizeof(name));
      w += sizeof(name);
      ((std::memcpy(w, &args, sizeof(A)), w += sizeof(A)), ...);
      static_assert((std::is_trivially_copyable_v<A> && ...));
      ops_.emplace_back([fn, args...] { fn(args...); });
      return;
    }
    execute(name, bytes, [&] { fn(args...); });
  }
  bool skipped(const char* name) const {
    return !skip_.empty() && skip_.find(std::string(",") + name + ",") != std::string::npos;
  }
  template <class F>
  void execute(const char* name, double bytes, F&& f) {
    settle_norm();
    if (skipped(name)) return;
    if (!profile_) {
      f();
      return;
    }
    cudaEvent_t e[2];
    for (auto& ev : e) {
      if (event_pool_.empty()) {
        UMA_CHECK(cudaEventCreate(&ev));
      } else {
        ev = event_pool_.back();
        event_pool_.pop_back();
      }
    }
    UMA_CHECK(cudaEventRecord(e[0], stream_));
    f();
    UMA_CHECK(cudaEventRecord(e[1], stream_));
    pending_.push_back({name, bytes, e[0], e[1]});
  }
  // Runs the recorded ops now, in order, and records no more for this step (a download mid-step, say).
  void flush() {
    if (!deferred_) return;
    deferred_ = false;
    for (auto& op : ops_) op();
    ops_.clear();
  }
  const char* profile_name(const char* op, const DeviceWeight& d, int64_t rows = 0) {
    std::string key = fmt::format("{} {} {}x{}", op, type_name(d.type), rows ? rows : d.rows, d.cols);
    return profile_names_.insert(std::move(key)).first->c_str();
  }
  void collect_profile();
  void print_profile();
  static size_t device_used() {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    return total_b - free_b;
  }
  void print_memory();
  bool memlog_ = false;
  size_t mem_context_ = 0, mem_cublas_ = 0, mem_peak_ = 0, mem_peak_buffers_ = 0;

  int device_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::mutex mutex_;
  std::unordered_map<float*, size_t> buffers_;  // alloc'd activation buffers and their bytes
  struct WeightKey {
    const void* host;
    size_t nbytes;
    GgmlType type;
    int64_t cols;
    bool operator==(const WeightKey& o) const {
      return host == o.host && nbytes == o.nbytes && type == o.type && cols == o.cols;
    }
  };
  struct WeightKeyHash {
    size_t operator()(const WeightKey& k) const { return std::hash<const void*>()(k.host) ^ (k.nbytes * 31); }
  };
  std::unordered_map<WeightKey, DeviceWeight, WeightKeyHash> weights_;
  WeightArena weights_mem_{device_};  // their device memory, freed when the backend dies
  size_t uploaded_ = 0, last_report_ = 0;
  void* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staging_done_[2] = {nullptr, nullptr};
  Scratch wf16_[2];  // dequantized prefill operands, double-buffered (gemm_many)
  cudaStream_t side_ = nullptr;  // the dequantization stream of gemm_many
  cudaEvent_t dequant_done_[2] = {}, gemm_done_[2] = {};
  Scratch ids_, rows_, xf16_, partial_, attn_count_, repack_src_, q8_, attn_kv_, attn_scores_, argmax_;
  Scratch topk_pen_, topk_keys_, mass_;  // top_k_row: penalty ids + counts; the passes' keys; row_mass's sums
  std::vector<int32_t> topk_pen_host_;
  std::vector<uint64_t> topk_keys_host_;
  const float* q8_src_ = nullptr;  // the activations q8_ holds, if still valid
  int64_t q8_n_ = 0;
  uint8_t* q8_base_ = nullptr;
  // The batch layout as last uploaded outside a step (reused while it stays the same).
  Scratch layout_dev_;
  std::vector<int32_t> layout_host_;
  DeviceLayout layout_{};
  Scratch rope_pos_;
  std::vector<int32_t> rope_pos_host_;
  std::vector<std::pair<RopeParams, float*>> rope_tabs_;  // inv_freq + YaRN ramp per parameter set

  // Step state (begin_step .. end_step).
  bool graphs_ = true, profile_ = false, pdl_ = true, prefetch_ = true, merge_ = true, fuse_ = true, gemv_pair_ = true, gemv_tokens_ = true, parallel_norm_ = true,
       gemm_attention_ = true, attn_tf32_ = true;
  int long_attention_ = 1;  // attention_long_kernel for 0: no cells, 1: f16 cells, 2: f16 and 8-bit cells
  int attn_max_splits_ = 64;  // UMA_CUDA_ATTN_SPLITS: decode attention's most key splits (measurements)
  bool f32_weights_ = false;  // a matrix of the model is stored in f32: prefill attention stays f32
  int sm_count_ = 132;
  // Blocks of `kernel` (launched with `threads` threads and `smem` bytes of dynamic shared memory) that the GPU
  // holds at once: one wave. Asked once per kernel.
  std::unordered_map<const void*, int64_t> resident_;
  template <typename K>
  int64_t resident_blocks(K* kernel, int threads, size_t smem = 0) {
    auto [it, fresh] = resident_.try_emplace(reinterpret_cast<const void*>(kernel), 0);
    if (fresh) {
      int per_sm = 0;
      UMA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
      it->second = int64_t(std::max(per_sm, 1)) * sm_count_;
    }
    return it->second;
  }
  std::string skip_;  // UMA_CUDA_SKIP, as ",op,op,"
  bool bulk_allowed_ = true;  // sm_90 and not UMA_CUDA_GEMV_BULK=0
  BulkConfig bulk_explicit_;    // UMA_CUDA_GEMV_BULK=KB,slots,blocks,warps
  bool bulk_whole_rows_ = true;  // UMA_CUDA_BULK_ROWS: each bulk consumer warp takes whole rows (see there)
  bool bulk_pair_ = false;       // UMA_CUDA_BULK_PAIR: Q4_0's bulk GEMV on 64-value chunks (see there)
  bool bulk_held_ = true;        // UMA_CUDA_BULK_HELD: activations held in registers (see gemv_bulk_kernel)
  bool producer_scale_ = true;  // UMA_CUDA_BULK_LATE_SCALE=0: every bulk GEMV thread computes 1 / RMS first
  int gemv_rows_ = 4, gemv_warps_ = 0;  // block shape of the GEMVs of large matrices (UMA_CUDA_GEMV); 0 warps: by chunk width
  bool in_step_ = false, deferred_ = false, step_pending_ = false;
  const KvCache* step_kv_ = nullptr;
  const int32_t* step_pos_host_ = nullptr;
  int64_t step_tokens_ = 0;
  DeviceLayout step_layout_{};
  Staged step_layout_buf_;
  std::vector<std::unique_ptr<Staged>> staged_;
  size_t n_staged_ = 0;
  cudaEvent_t step_done_ = nullptr;
  std::vector<uint8_t> sig_;
  std::vector<std::function<void()>> ops_;
  struct CachedGraph {
    std::vector<uint8_t> sig;
    cudaGraphExec_t exec;
    uint64_t used;
  };
  std::vector<CachedGraph> graph_cache_;
  uint64_t steps_ = 0;
  size_t graph_captures_ = 0, graph_replays_ = 0;

  // Profile (UMA_CUDA_PROFILE).
  struct PendingTiming {
    const char* name;
    double bytes;
    cudaEvent_t start, end;
  };
  struct OpStats {
    int64_t calls = 0;
    double ms = 0, bytes = 0;
  };
  std::vector<PendingTiming> pending_;
  std::vector<cudaEvent_t> event_pool_;
  std::unordered_set<std::string> profile_names_;
  std::unordered_map<std::string, OpStats> op_stats_;
};

}  // namespace uma::cuda
