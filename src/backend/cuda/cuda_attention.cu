// The paged KV cache on the device: storing a step's keys and values, and attention over them.
#include "backend/cuda/cublas_api.h"
#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {
namespace {
// Grid (token, slices of 256 values over k then v): one value a thread, so a decode token's 2 x 4096
// values take 32 blocks instead of one block's serial loop.
__global__ void store_kv_kernel(float* K, float* V, const float* k, const float* v, int kw, int vw,
                                DeviceLayout L) {
  const int64_t t = blockIdx.x;
  const int64_t c = kv_cell(L, t, L.pos[t]);
  const int j = blockIdx.y * blockDim.x + threadIdx.x;
  if (j < kw) K[c * kw + j] = k[t * kw + j];
  else if (j < kw + vw) V[c * vw + j - kw] = v[t * vw + j - kw];
}

// ---- attention: one block per (query head, token, split). Each warp walks every 4th key of the split
// with an online softmax (running max m, sum l, acc over head_dim_v), lanes splitting the head dims; the
// warps' states merge in shared memory. Splits (flash-decoding) let a single long sequence fill the GPU;
// their partial states merge in attn_combine_kernel. -----------------------------------------------------
constexpr int kAttnWarps = 4;
constexpr int kMaxHeadDim = 256;
constexpr int kDimsPerLane = kMaxHeadDim / kWarp;

struct AttnArgs {
  const float *K, *V, *q;
  float* out;       // final output (n_split == 1) ...
  float* partial;   // ... or [n_tokens, n_head, n_split, head_dim_v + 2] states
  int8_t* xq;       // with xs: int8 blocks of the output for the GEMV that follows (decode), or null
  float4* xs;
  int kw, vw, n_head, group, hdk, hdv, n_split;
  float scale;
};
static_assert(sizeof(AttnArgs) == 7 * sizeof(void*) + 8 * 4, "no padding: AttnArgs enters graph signatures");

__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_kernel(AttnArgs a, DeviceLayout L) {
  pdl_trigger();  // the output projection's GEMV may start fetching its weights
  pdl_wait();
  const int h = blockIdx.x, split = blockIdx.z;
  const int64_t t = blockIdx.y;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int hk = h / a.group;
  // The context length comes from device memory (the position), not from a kernel argument, so that a
  // captured decode graph stays valid as the context grows; each split takes an equal share of it.
  const int64_t n_ctx = int64_t(L.pos[t]) + 1;
  const int64_t keys_per_split = (n_ctx + a.n_split - 1) / a.n_split;
  const int64_t p0 = int64_t(split) * keys_per_split, p1 = min(n_ctx, p0 + keys_per_split);

  float qv[kDimsPerLane];
  const float* qh = a.q + (t * a.n_head + h) * a.hdk;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int j = lane + kWarp * i;
    qv[i] = j < a.hdk ? qh[j] * a.scale : 0.0f;
  }
  float m = -INFINITY, l = 0, acc[kDimsPerLane] = {};
  for (int64_t p = p0 + warp; p < p1; p += kAttnWarps) {
    const int64_t c = kv_cell(L, t, p);
    const float* kp = a.K + c * a.kw + int64_t(hk) * a.hdk;
    float d = 0;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int j = lane + kWarp * i;
      if (j < a.hdk) d += qv[i] * kp[j];
    }
    const float s = warp_sum(d);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new), e = expf(s - m_new);
    l = l * corr + e;
    const float* vp = a.V + c * a.vw + int64_t(hk) * a.hdv;
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int j = lane + kWarp * i;
      acc[i] = acc[i] * corr + (j < a.hdv ? e * vp[j] : 0.0f);
    }
    m = m_new;
  }
  // Merge the warps.
  __shared__ float sm[kAttnWarps], sl[kAttnWarps], sacc[kAttnWarps][kMaxHeadDim];
  if (lane == 0) sm[warp] = m, sl[warp] = l;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) sacc[warp][lane + kWarp * i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm[w]);
  float Lsum = 0;
  for (int w = 0; w < kAttnWarps; ++w) Lsum += sm[w] == -INFINITY ? 0.0f : sl[w] * expf(sm[w] - M);
  const int64_t th = t * a.n_head + h;
  for (int j = threadIdx.x; j < a.hdv; j += blockDim.x) {
    float v = 0;
    for (int w = 0; w < kAttnWarps; ++w)
      if (sm[w] != -INFINITY) v += sacc[w][j] * expf(sm[w] - M);
    if (a.n_split == 1) {
      a.out[th * a.hdv + j] = v / Lsum;
      // hdv is a multiple of 32 when xq is set: each warp holds whole blocks.
      if (a.xq) quantize_warp_block(v / Lsum, lane, a.xq + th * a.hdv + (j & ~31), a.xs + (th * a.hdv + j) / 32);
    } else {
      a.partial[(th * a.n_split + split) * (a.hdv + 2) + 2 + j] = v;
    }
  }
  if (a.n_split > 1 && threadIdx.x == 0) {
    a.partial[(th * a.n_split + split) * (a.hdv + 2)] = M;
    a.partial[(th * a.n_split + split) * (a.hdv + 2) + 1] = Lsum;
  }
}

__global__ void attn_combine_kernel(const float* partial, int n_split, int hdv, float* out, int8_t* xq, float4* xs) {
  pdl_trigger();
  pdl_wait();
  const int64_t th = blockIdx.x;
  const float* P = partial + th * n_split * (hdv + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, P[s * (hdv + 2)]);
  float Lsum = 0;
  for (int s = 0; s < n_split; ++s) {
    const float ms = P[s * (hdv + 2)];
    if (ms != -INFINITY) Lsum += P[s * (hdv + 2) + 1] * expf(ms - M);
  }
  for (int j = threadIdx.x; j < hdv; j += blockDim.x) {
    float v = 0;
    for (int s = 0; s < n_split; ++s) {
      const float ms = P[s * (hdv + 2)];
      if (ms != -INFINITY) v += P[s * (hdv + 2) + 2 + j] * expf(ms - M);
    }
    out[th * hdv + j] = v / Lsum;
    if (xq) quantize_warp_block(v / Lsum, threadIdx.x % kWarp, xq + th * hdv + (j & ~31), xs + (th * hdv + j) / 32);
  }
}

// ---- prefill attention as matrix products (attention_gemm): per sequence of the batch, its keys and values
// gathered from the pages into contiguous rows, S = scale · Q Kᵀ for every head (cuBLAS, f32), a causal
// softmax over each row of S, then O = P V (cuBLAS). The tensor-core-free f32 SGEMMs keep the CPU's
// accuracy; the work is O(m · n_ctx · head_dim) per head, read from L2 instead of once per query.
__global__ void gather_kv_kernel(const float* K, const float* V, int kw, int vw, DeviceLayout L, int64_t t0,
                                 float* Kc, float* Vc) {
  const int64_t p = blockIdx.x;
  const int64_t c = kv_cell(L, t0, p);
  for (int j = threadIdx.x; j < kw + vw; j += blockDim.x) {
    if (j < kw) Kc[p * kw + j] = K[c * kw + j];
    else Vc[p * vw + j - kw] = V[c * vw + j - kw];
  }
}

// Rows of S [n_head, m, n_keys]: row i sees keys 0 .. p_first + i; the rest become 0.
__global__ void causal_softmax_kernel(float* S, int64_t m, int64_t n_keys, int64_t p_first) {
  float* s = S + int64_t(blockIdx.x) * n_keys;
  const int64_t limit = min(n_keys, p_first + int64_t(blockIdx.x) % m + 1);
  __shared__ float red[32];
  auto block_reduce = [&](float v, bool is_max) {
    for (int o = 16; o > 0; o >>= 1) {
      const float w = __shfl_xor_sync(0xffffffffu, v, o);
      v = is_max ? fmaxf(v, w) : v + w;
    }
    if (threadIdx.x % kWarp == 0) red[threadIdx.x / kWarp] = v;
    __syncthreads();
    v = threadIdx.x < blockDim.x / kWarp ? red[threadIdx.x] : (is_max ? -INFINITY : 0.0f);
    if (threadIdx.x < kWarp)
      for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = is_max ? fmaxf(v, w) : v + w;
      }
    if (threadIdx.x == 0) red[0] = v;
    __syncthreads();
    v = red[0];
    __syncthreads();
    return v;
  };
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < limit; j += blockDim.x) mx = fmaxf(mx, s[j]);
  mx = block_reduce(mx, true);
  float sum = 0;
  for (int64_t j = threadIdx.x; j < limit; j += blockDim.x) {
    const float e = expf(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  sum = block_reduce(sum, false);
  const float inv = 1.0f / sum;
  for (int64_t j = threadIdx.x; j < n_keys; j += blockDim.x) s[j] = j < limit ? s[j] * inv : 0.0f;
}

}  // namespace

// Prefill attention through cuBLAS (see above). Returns false (nothing done) when the batch is not made of
// runs of consecutive positions per sequence, or the gathered keys would need more than 2 GiB.
bool CudaBackend::attention_gemm(const KvCache& kv, int layer, const float* q, const BatchLayout& batch,
                                 const AttentionShape& s, float* out, const DeviceLayout& L) {
  const int64_t n = batch.n_tokens;
  const int kw = kv.options().k_width, vw = kv.options().v_width;
  const int group = s.n_head / s.n_head_kv;
  if (group * s.n_head_kv != s.n_head) return false;
  // Runs [t0, t1) of one sequence at consecutive positions.
  std::vector<std::pair<int64_t, int64_t>> runs;
  int64_t max_ctx = 0;
  for (int64_t t = 0; t < n;) {
    int64_t e = t + 1;
    while (e < n && batch.seq[e] == batch.seq[t] && batch.pos[e] == batch.pos[e - 1] + 1) ++e;
    for (auto& [a, b] : runs)
      if (batch.seq[a] == batch.seq[t]) return false;  // one run per sequence
    runs.emplace_back(t, e);
    max_ctx = std::max<int64_t>(max_ctx, batch.pos[e - 1] + 1);
    t = e;
  }
  const size_t kv_bytes = size_t(max_ctx) * (kw + vw) * sizeof(float);
  if (kv_bytes > (size_t(2) << 30)) return false;
  const auto& blas = cuda::cublas_api();
  auto* kc = static_cast<float*>(attn_kv_.get(kv_bytes));
  float* vc = kc + max_ctx * kw;
  constexpr size_t kScoreBudget = size_t(128) << 20;  // floats of S at a time (512 MiB)
  for (auto [t0, t1] : runs) {
    const int64_t m = t1 - t0, p_first = batch.pos[t0], n_ctx = batch.pos[t1 - 1] + 1;
    gather_kv_kernel<<<unsigned(n_ctx), 256, 0, stream_>>>(kv.k(layer), kv.v(layer), kw, vw, L, t0, kc, vc);
    UMA_LAUNCHED("gather_kv");
    const int64_t rows = std::clamp<int64_t>(int64_t(kScoreBudget / (size_t(s.n_head) * n_ctx)), 1, m);
    for (int64_t i0 = 0; i0 < m; i0 += rows) {
      const int64_t mc = std::min(rows, m - i0), n_keys = p_first + i0 + mc;
      auto* S = static_cast<float*>(attn_scores_.get(size_t(s.n_head) * mc * n_keys * sizeof(float)));
      const float one = 1.0f, zero = 0.0f;
      // Head h = hk * group + j: one strided batch over the kv heads hk per j.
      for (int j = 0; j < group; ++j)
        check(blas.sgemm_strided_batched(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, int(n_keys), int(mc), s.head_dim_k,
                                         &s.scale, kc, kw, s.head_dim_k,
                                         q + ((t0 + i0) * s.n_head + j) * s.head_dim_k, s.n_head * s.head_dim_k,
                                         int64_t(group) * s.head_dim_k, &zero, S + j * mc * n_keys, int(n_keys),
                                         int64_t(group) * mc * n_keys, s.n_head_kv),
              "cublasSgemmStridedBatched (scores)");
      causal_softmax_kernel<<<unsigned(s.n_head * mc), 256, 0, stream_>>>(S, mc, n_keys, p_first + i0);
      UMA_LAUNCHED("causal_softmax");
      for (int j = 0; j < group; ++j)
        check(blas.sgemm_strided_batched(cublas_, CUBLAS_OP_N, CUBLAS_OP_N, s.head_dim_v, int(mc), int(n_keys), &one,
                                         vc, vw, s.head_dim_v, S + j * mc * n_keys, int(n_keys),
                                         int64_t(group) * mc * n_keys, &zero,
                                         out + ((t0 + i0) * s.n_head + j) * s.head_dim_v, s.n_head * s.head_dim_v,
                                         int64_t(group) * s.head_dim_v, s.n_head_kv),
              "cublasSgemmStridedBatched (values)");
    }
  }
  return true;
}

void CudaBackend::store_kv(KvCache& kv, int layer, const float* k, const float* v, const BatchLayout& batch) {
  q8_src_ = nullptr;
  if (batch.n_tokens == 0) return;
  const DeviceLayout L = layout_for(kv, batch);
  const int kw = kv.options().k_width, vw = kv.options().v_width;
  submit("store_kv", 0, [this](float* K, float* V, const float* k, const float* v, int kw, int vw, DeviceLayout L,
                               int64_t n) {
    store_kv_kernel<<<dim3(unsigned(n), unsigned((kw + vw + 255) / 256)), 256, 0, stream_>>>(K, V, k, v, kw, vw, L);
    UMA_LAUNCHED("store_kv");
  }, kv.k(layer), kv.v(layer), k, v, kw, vw, L, batch.n_tokens);
}

void CudaBackend::attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch,
                            const AttentionShape& s, float* out) {
  q8_src_ = nullptr;
  if (batch.n_tokens == 0) return;
  if (s.head_dim_k > kMaxHeadDim || s.head_dim_v > kMaxHeadDim)
    fail("the CUDA attention kernel supports head dims up to {}, got {}/{}", kMaxHeadDim, s.head_dim_k,
         s.head_dim_v);
  const DeviceLayout L = layout_for(kv, batch);
  if (batch.n_tokens > kMaxGemvTokens && gemm_attention_) {
    flush();  // cuBLAS and scratch growth stay out of recorded steps
    bool done = false;
    execute("attention_gemm", 0, [&] { done = attention_gemm(kv, layer, q, batch, s, out, L); });
    if (done) return;
  }
  // Split the keys when the grid would not fill the GPU: ~256 keys per block, at most 64 splits. A
  // recorded step sizes the splits for the whole cache (the kernel divides the actual context among
  // them), so the graph holds for every context length; otherwise for the longest context of the batch.
  int64_t max_ctx = 0;
  if (deferred_) {
    max_ctx = kv.capacity();
  } else {
    for (int64_t t = 0; t < batch.n_tokens; ++t) max_ctx = std::max<int64_t>(max_ctx, batch.pos[t] + 1);
  }
  const int64_t blocks = batch.n_tokens * s.n_head;
  int n_split = 1;
  if (blocks < 264 && max_ctx > 512) n_split = int(std::min<int64_t>(64, (max_ctx + 255) / 256));
  // The int8 blocks of the output for the output projection of a decode step.
  Q8Buffer q8{nullptr, nullptr};
  if (fuse_ && batch.n_tokens <= kMaxGemvTokens && s.head_dim_v % 32 == 0)
    q8 = q8_buffer(out, batch.n_tokens * s.n_head * s.head_dim_v);
  AttnArgs a{kv.k(layer), kv.v(layer), q, out, nullptr, q8.xq, q8.xs, kv.options().k_width, kv.options().v_width, s.n_head,
             s.n_head / s.n_head_kv, s.head_dim_k, s.head_dim_v, n_split, s.scale};
  if (n_split > 1)
    a.partial = static_cast<float*>(
        partial_.get(size_t(blocks) * n_split * (s.head_dim_v + 2) * sizeof(float), deferred_));
  submit("attention", 0, [this](AttnArgs a, DeviceLayout L, int64_t n_tokens) {
    dim3 grid(unsigned(a.n_head), unsigned(n_tokens), unsigned(a.n_split));
    launch(pdl_, grid, kAttnWarps * kWarp, stream_, attention_kernel, a, L);
    UMA_LAUNCHED("attention");
    if (a.n_split > 1) {
      launch(pdl_, unsigned(n_tokens * a.n_head), 128, stream_, attn_combine_kernel, a.partial, a.n_split, a.hdv,
             a.out, a.xq, a.xs);
      UMA_LAUNCHED("attn_combine");
    }
  }, a, L, batch.n_tokens);
}


}  // namespace uma::cuda
