// The paged KV cache on the device: storing a step's keys and values, and attention over them.
#include <type_traits>

#include "backend/cuda/cublas_api.h"
#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {
namespace {
// Grid (token, slices of 256 values over k then v): one value a thread, so a decode token's 2 x 4096
// values take 32 blocks instead of one block's serial loop.
// 8-bit cells: a warp holds one 32-value block (the widths are whole blocks), quantized together.
template <typename KV>
__global__ void store_kv_kernel(KvCells<KV> K, KvCells<KV> V, const float* k, const float* v, int kw, int vw,
                                DeviceLayout L) {
  const int64_t t = blockIdx.x;
  const int64_t c = kv_cell(L, t, L.pos[t]);
  const int j = blockIdx.y * blockDim.x + threadIdx.x, lane = threadIdx.x % kWarp;
  const bool in_k = std::is_same_v<KV, int8_t> ? j - lane < kw : j < kw;  // whole warps for 8-bit cells
  if (in_k) kv_store_warp(K, c * kw + j, j < kw ? k[t * kw + j] : 0.0f, lane, j < kw);
  else kv_store_warp(V, c * vw + j - kw, j < kw + vw ? v[t * vw + j - kw] : 0.0f, lane, j < kw + vw);
}

// ---- decode attention (flash-decoding): one block per (query head, token, split), kAttnThreads threads.
// A split takes a contiguous range of keys and walks it in tiles of kAttnThreads keys:
//  1. scores: thread i dots the query (in shared memory) with key i of the tile, so a whole tile of keys is
//     in flight at once (one warp-wide reduction per key, as before, left each warp waiting on one key's
//     load at a time: ~25 µs a layer at a 64-token context);
//  2. the tile's max and sum, rescaling the running sum and accumulators (online softmax, block-wide);
//  3. values: warp w adds keys w, w + 4, .. of the tile, lane j the dims j, j + 32, ..
// At the end the warps' accumulators meet in shared memory. The context length comes from device memory
// at run time (a recorded step replays for every length), so the number of splits is fixed per launch but
// each split is at least one tile: a short context uses one split and the others exit at once. When more
// than one split ran, the last block of a (head, token) to finish merges the partial states (a counter per
// (head, token) that this block resets), so no second kernel is launched.
constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * kWarp;
constexpr int kMaxHeadDim = 256;
constexpr int kDimsPerLane = kMaxHeadDim / kWarp;

struct AttnArgs {
  const void *K, *V;  // float, __half or int8_t cells (the kernel's KV; kv_cells)
  const float* q;
  float* out;       // output [n_tokens, n_head, head_dim_v]
  float* partial;   // [n_tokens, n_head, n_split, head_dim_v + 2] states when n_split > 1
  int* count;       // [n_tokens, n_head] finished splits, zero between launches (n_split > 1)
  int8_t* xq;       // with xs: int8 blocks of the output for the GEMV that follows (decode), or null
  float4* xs;
  int kw, vw, n_head, group, hdk, hdv, n_split;
  float scale;
  int64_t n_cells;  // where 8-bit cells' scales start
};
static_assert(sizeof(AttnArgs) == 8 * sizeof(void*) + 8 * 4 + 8, "no padding: AttnArgs enters graph signatures");

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The output row of (token, head) th: v / l for dims tid, tid + kAttnThreads, .. with their int8 blocks.
__device__ __forceinline__ void attn_write(const AttnArgs& a, int64_t th, int j, float v) {
  a.out[th * a.hdv + j] = v;
  // hdv is a multiple of 32 when xq is set: each warp holds whole blocks.
  if (a.xq) quantize_warp_block(v, j % kWarp, a.xq + th * a.hdv + (j & ~31), a.xs + (th * a.hdv + j) / 32);
}

// kHd128: keys and values of 128 dims in rows aligned for four values (Llama, Qwen, Mistral): the loads of a
// key are all in flight at once (32 of four values; 8-bit cells: eight of 16 bytes), and a lane adds 16 bytes
// of each value row it takes. Otherwise any head dims, one value at a time. KV: float, __half or int8_t cells
// (KvCacheOptions::f16, ::q8; KvCells).
template <bool kHd128, typename KV>
__device__ __forceinline__ void attention_body(const AttnArgs& a, const DeviceLayout& L) {
  const KvCells<KV> K = kv_cells<KV>(a.K, a.n_cells, a.kw), V = kv_cells<KV>(a.V, a.n_cells, a.vw);
  pdl_trigger();  // the output projection's GEMV may start fetching its weights
  const int h = blockIdx.x, split = blockIdx.z;
  const int64_t t = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int hk = h / a.group;
  // The layout was uploaded before the step's first kernel, and the cache rows of earlier positions were
  // written by earlier steps: the page table and an L2 prefetch of the first tile's rows go before the
  // wait for the kernel that wrote this step's query and key.
  const int64_t n_ctx = int64_t(L.pos[t]) + 1;
  const int64_t per_split = max(int64_t(kAttnThreads), (n_ctx + a.n_split - 1) / a.n_split);
  const int n_used = int((n_ctx + per_split - 1) / per_split);
  if (split >= n_used) return;
  const int64_t p0 = split * per_split, p1 = min(n_ctx, p0 + per_split);
  const int64_t th = t * a.n_head + h;
  const int64_t k_off = int64_t(hk) * a.hdk, v_off = int64_t(hk) * a.hdv;
  int64_t my_cell = tid < p1 - p0 ? kv_cell(L, t, p0 + tid) : 0;
  if (tid < p1 - p0) {
    for (int j = 0; j < a.hdk; j += 128 / int(sizeof(KV))) prefetch_l2(K.p + my_cell * a.kw + k_off + j);
    for (int j = 0; j < a.hdv; j += 128 / int(sizeof(KV))) prefetch_l2(V.p + my_cell * a.vw + v_off + j);
  }
  pdl_wait();

  __shared__ __align__(16) float qs[kMaxHeadDim];
  __shared__ float prob[kAttnThreads], red_max[kAttnWarps], red_sum[kAttnWarps];
  __shared__ int64_t cell[kAttnThreads];
  __shared__ float sacc[kAttnWarps][kMaxHeadDim];
  __shared__ bool last;
  for (int j = tid; j < a.hdk; j += kAttnThreads) qs[j] = a.q[th * a.hdk + j] * a.scale;
  __syncthreads();
  // Head dim 128, the value sums: a lane loads 16 bytes of a value row (kPer values), kLanesPerKey lanes a row,
  // so a warp adds kKeysPerWarp keys at once (f32: 1, f16: 2, 8-bit: 4) and has twice (four times) the bytes
  // in flight that four values a lane gave; the key slots' sums meet by shuffles at the end.
  constexpr int kPer = kKvPer16<KV>, kLanesPerKey = 128 / kPer, kKeysPerWarp = kWarp / kLanesPerKey;
  const int slot = lane / kLanesPerKey, dim0 = (lane % kLanesPerKey) * kPer;
  float m = -INFINITY, l = 0, acc[kHd128 ? kPer : kDimsPerLane] = {};
  for (int64_t tile = p0; tile < p1; tile += kAttnThreads) {
    const int n = int(min(int64_t(kAttnThreads), p1 - tile));
    float s = -INFINITY;
    if (tid < n) {
      const int64_t c = tile == p0 ? my_cell : kv_cell(L, t, tile + tid);
      cell[tid] = c;
      const int64_t kp = c * a.kw + k_off;
      float d = 0;
      if constexpr (kHd128 && std::is_same_v<KV, int8_t>) {
        // 8-bit cells: the key's 128 values in eight 16-byte loads, its four block scales in one (kw is a
        // multiple of 128, so both are aligned); each block's sum is scaled once.
        int4 raw[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) raw[j] = reinterpret_cast<const int4*>(K.p + kp)[j];
        const uint2 sd = *reinterpret_cast<const uint2*>(K.d + kp / 32);
        const float2 s01 = __half22float2(*reinterpret_cast<const __half2*>(&sd.x));
        const float2 s23 = __half22float2(*reinterpret_cast<const __half2*>(&sd.y));
        const float sc[4] = {s01.x, s01.y, s23.x, s23.y};
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          float part = 0;
#pragma unroll
          for (int u = 0; u < 8; ++u) {  // 4 values a 32-bit word, 8 words a block
            const int4& r = raw[2 * b + u / 4];
            const int w = u % 4 == 0 ? r.x : u % 4 == 1 ? r.y : u % 4 == 2 ? r.z : r.w;
            const char4 c4 = *reinterpret_cast<const char4*>(&w);
            const float4 q4 = reinterpret_cast<const float4*>(qs)[8 * b + u];
            part += q4.x * float(c4.x) + q4.y * float(c4.y) + q4.z * float(c4.z) + q4.w * float(c4.w);
          }
          d += part * sc[b];
        }
      } else if constexpr (kHd128) {
        float4 k4[32];
#pragma unroll
        for (int j = 0; j < 32; ++j) k4[j] = kv_load4(K, kp + 4 * j);
#pragma unroll
        for (int j = 0; j < 32; ++j) {
          const float4 q4 = reinterpret_cast<const float4*>(qs)[j];
          d += q4.x * k4[j].x + q4.y * k4[j].y + q4.z * k4[j].z + q4.w * k4[j].w;
        }
      } else {
#pragma unroll 8
        for (int j = 0; j < a.hdk; ++j) d += qs[j] * kv_load(K, kp + j);
      }
      s = d;
    }
    const float wm = warp_max(s);
    if (lane == 0) red_max[warp] = wm;
    __syncthreads();
    float mx = red_max[0];
#pragma unroll
    for (int w = 1; w < kAttnWarps; ++w) mx = fmaxf(mx, red_max[w]);
    const float m_new = fmaxf(m, mx);  // finite: the tile has at least one key
    const float corr = expf(m - m_new);
    const float e = tid < n ? expf(s - m_new) : 0.0f;
    prob[tid] = e;
    const float ws = warp_sum(e);
    if (lane == 0) red_sum[warp] = ws;
    __syncthreads();
    float es = 0;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) es += red_sum[w];
    l = l * corr + es;
    m = m_new;
#pragma unroll
    for (auto& x : acc) x *= corr;
    if constexpr (kHd128) {
#pragma unroll 8
      for (int i = warp * kKeysPerWarp + slot; i < n; i += kAttnWarps * kKeysPerWarp) {
        const float p = prob[i];
        float v[kPer];
        kv_load16(V, cell[i] * a.vw + v_off + dim0, v);
#pragma unroll
        for (int e = 0; e < kPer; ++e) acc[e] += p * v[e];
      }
    } else {
#pragma unroll 4
      for (int i = warp; i < n; i += kAttnWarps) {
        const float p = prob[i];
        const int64_t vp = cell[i] * a.vw + v_off;
#pragma unroll
        for (int k = 0; k < kDimsPerLane; ++k) {
          const int j = lane + kWarp * k;
          if (j < a.hdv) acc[k] += p * kv_load(V, vp + j);
        }
      }
    }
    __syncthreads();  // cell, prob and the reductions are rewritten by the next tile
  }
  if constexpr (kHd128) {
#pragma unroll
    for (int o = kLanesPerKey; o < kWarp; o <<= 1)
#pragma unroll
      for (int e = 0; e < kPer; ++e) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
    if (slot == 0)
#pragma unroll
      for (int e = 0; e < kPer; ++e) sacc[warp][dim0 + e] = acc[e];
  } else {
#pragma unroll
    for (int k = 0; k < kDimsPerLane; ++k)
      if (lane + kWarp * k < a.hdv) sacc[warp][lane + kWarp * k] = acc[k];
  }
  __syncthreads();
  // One split: the output. Several: this split's state (max, sum, accumulators) for the merge below.
  float* P = n_used > 1 ? a.partial + th * a.n_split * (a.hdv + 2) : nullptr;
  for (int j = tid; j < a.hdv; j += kAttnThreads) {
    float v = 0;
#pragma unroll
    for (int w = 0; w < kAttnWarps; ++w) v += sacc[w][j];
    if (n_used == 1) attn_write(a, th, j, v / l);
    else P[split * (a.hdv + 2) + 2 + j] = v;
  }
  if (n_used == 1) return;
  if (tid == 0) P[split * (a.hdv + 2)] = m, P[split * (a.hdv + 2) + 1] = l;
  // The last split block merges: its partial states are visible to it after the others' fences.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    last = atomicAdd(a.count + th, 1) == n_used - 1;
    if (last) a.count[th] = 0;  // ready for the next launch
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  float M = -INFINITY;
  for (int sp = 0; sp < n_used; ++sp) M = fmaxf(M, __ldcg(P + sp * (a.hdv + 2)));
  float Lsum = 0;
  for (int sp = 0; sp < n_used; ++sp) Lsum += __ldcg(P + sp * (a.hdv + 2) + 1) * expf(__ldcg(P + sp * (a.hdv + 2)) - M);
  for (int j = tid; j < a.hdv; j += kAttnThreads) {
    float v = 0;
    for (int sp = 0; sp < n_used; ++sp)
      v += __ldcg(P + sp * (a.hdv + 2) + 2 + j) * expf(__ldcg(P + sp * (a.hdv + 2)) - M);
    attn_write(a, th, j, v / Lsum);
  }
}

template <bool kHd128, typename KV>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(AttnArgs a, DeviceLayout L) {
  attention_body<kHd128, KV>(a, L);
}
// f16 cells of head dim 128 (the GPU's default cache for Llama, Qwen, Mistral) in at most 48 registers a thread
// (10 blocks an SM), so that a working attention block still fits beside the next bulk GEMV's block (57.6K
// registers for Q4_0), which enters and issues its copies while attention runs: with 56 registers llama-7b
// Q4_0 tg128 lost 2.5-3.5 %.
__global__ void __launch_bounds__(kAttnThreads, 10) attention_f16_hd128_kernel(AttnArgs a, DeviceLayout L) {
  attention_body<true, __half>(a, L);
}

using AttentionKernel = void (*)(AttnArgs, DeviceLayout);
// The decode attention kernel for these cells: head dim 128 in rows aligned for four values (hd128), or any.
AttentionKernel attention_kernel_for(KvKind kind, bool hd128) {
  AttentionKernel kernel = nullptr;
  with_kv(kind, [&](auto tag) {
    using KV = typename decltype(tag)::type;
    kernel = hd128 ? attention_kernel<true, KV> : attention_kernel<false, KV>;
    if (hd128 && std::is_same_v<KV, __half>) kernel = attention_f16_hd128_kernel;
  });
  return kernel;
}

// ---- prefill attention as matrix products (attention_gemm): per sequence of the batch, its keys and values
// gathered from the pages into contiguous rows, S = scale · Q Kᵀ for every head (cuBLAS, f32), a causal
// softmax over each row of S, then O = P V (cuBLAS). The tensor-core-free f32 SGEMMs keep the CPU's
// accuracy; the work is O(m · n_ctx · head_dim) per head, read from L2 instead of once per query.
// One block per position: its key and value rows as f32 (f16 cells widened), four values at a time when the
// widths allow (every row then starts aligned), unrolled so that a thread's loads are in flight together.
template <typename KV>
__global__ void gather_kv_kernel(KvCells<KV> K, KvCells<KV> V, int kw, int vw, DeviceLayout L, int64_t t0,
                                 float* Kc, float* Vc) {
  const int64_t p = blockIdx.x;
  const int64_t c = kv_cell(L, t0, p);
  if (kw % 4 == 0 && vw % 4 == 0) {
    const int kw4 = kw / 4, vw4 = vw / 4;
    auto* Kc4 = reinterpret_cast<float4*>(Kc + p * kw);
    auto* Vc4 = reinterpret_cast<float4*>(Vc + p * vw);
#pragma unroll 4
    for (int j = threadIdx.x; j < kw4 + vw4; j += blockDim.x) {
      if (j < kw4) Kc4[j] = kv_load4(K, c * kw + 4 * j);
      else Vc4[j - kw4] = kv_load4(V, c * vw + 4 * (j - kw4));
    }
    return;
  }
  for (int j = threadIdx.x; j < kw + vw; j += blockDim.x) {
    if (j < kw) Kc[p * kw + j] = kv_load(K, c * kw + j);
    else Vc[p * vw + j - kw] = kv_load(V, c * vw + j - kw);
  }
}

// Rows of S [n_head, m, n_keys]: row i sees keys 0 .. p_first + i; the rest become 0. One warp per row
// (three coalesced passes: max, exponentials and their sum, scaling), kSoftmaxRows rows a block: a block per
// row with block-wide reductions was ~75 µs a layer at pp512, latency-bound on 16k small blocks.
constexpr int kSoftmaxRows = 8;
__global__ void causal_softmax_kernel(float* S, int64_t n_rows, int64_t m, int64_t n_keys, int64_t p_first) {
  const int64_t row = int64_t(blockIdx.x) * kSoftmaxRows + threadIdx.x / kWarp;
  if (row >= n_rows) return;
  const int lane = threadIdx.x % kWarp;
  float* s = S + row * n_keys;
  const int64_t limit = min(n_keys, p_first + row % m + 1);
  float mx = -INFINITY;
#pragma unroll 4
  for (int64_t j = lane; j < limit; j += kWarp) mx = fmaxf(mx, s[j]);
  mx = warp_max(mx);
  float sum = 0;
#pragma unroll 4
  for (int64_t j = lane; j < limit; j += kWarp) {
    const float e = expf(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  const float inv = 1.0f / sum;
#pragma unroll 4
  for (int64_t j = lane; j < n_keys; j += kWarp) s[j] = j < limit ? s[j] * inv : 0.0f;
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
  // f32 products on TF32 tensor cores (10-bit mantissas, f32 accumulation) unless the model keeps f32
  // matrices: the weight GEMMs of f16 and quantized models already round their inputs to f16, and the SIMT
  // f32 products were ~3 of the ~21 ms of a llama-7b F16 pp512. UMA_CUDA_ATTN_TF32=0: f32 throughout.
  const bool tf32 = attn_tf32_ && !f32_weights_;
  auto batched = [&](cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const float* alpha,
                     const float* a, int lda, long long sa, const float* b, int ldb, long long sb, const float* beta,
                     float* c, int ldc, long long sc, int count) {
    if (!tf32)
      return blas.sgemm_strided_batched(cublas_, ta, tb, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc,
                                        count);
    return blas.gemm_strided_batched_ex(cublas_, ta, tb, m, n, k, alpha, a, CUDA_R_32F, lda, sa, b, CUDA_R_32F, ldb,
                                        sb, beta, c, CUDA_R_32F, ldc, sc, count, CUBLAS_COMPUTE_32F_FAST_TF32,
                                        CUBLAS_GEMM_DEFAULT);
  };
  auto* kc = static_cast<float*>(attn_kv_.get(kv_bytes));
  float* vc = kc + max_ctx * kw;
  constexpr size_t kScoreBudget = size_t(128) << 20;  // floats of S at a time (512 MiB)
  for (auto [t0, t1] : runs) {
    const int64_t m = t1 - t0, p_first = batch.pos[t0], n_ctx = batch.pos[t1 - 1] + 1;
    const int64_t first = t0;  // (a structured binding: not captured by a lambda in C++17)
    with_kv(kv_kind(kv), [&](auto tag) {
      using KV = typename decltype(tag)::type;
      gather_kv_kernel<<<unsigned(n_ctx), 256, 0, stream_>>>(kv_cells<KV>(kv.k(layer), kv.capacity(), kw),
                                                             kv_cells<KV>(kv.v(layer), kv.capacity(), vw), kw, vw,
                                                             L, first, kc, vc);
    });
    UMA_LAUNCHED("gather_kv");
    const int64_t rows = std::clamp<int64_t>(int64_t(kScoreBudget / (size_t(s.n_head) * n_ctx)), 1, m);
    for (int64_t i0 = 0; i0 < m; i0 += rows) {
      const int64_t mc = std::min(rows, m - i0), n_keys = p_first + i0 + mc;
      auto* S = static_cast<float*>(attn_scores_.get(size_t(s.n_head) * mc * n_keys * sizeof(float)));
      const float one = 1.0f, zero = 0.0f;
      // Head h = hk * group + j: one strided batch over the kv heads hk per j.
      for (int j = 0; j < group; ++j)
        check(batched(CUBLAS_OP_T, CUBLAS_OP_N, int(n_keys), int(mc), s.head_dim_k, &s.scale, kc, kw,
                      s.head_dim_k, q + ((t0 + i0) * s.n_head + j) * s.head_dim_k, s.n_head * s.head_dim_k,
                      int64_t(group) * s.head_dim_k, &zero, S + j * mc * n_keys, int(n_keys),
                      int64_t(group) * mc * n_keys, s.n_head_kv),
              "cublas strided batched GEMM (scores)");
      const int64_t n_rows = int64_t(s.n_head) * mc;
      causal_softmax_kernel<<<unsigned((n_rows + kSoftmaxRows - 1) / kSoftmaxRows), kSoftmaxRows * kWarp, 0,
                              stream_>>>(S, n_rows, mc, n_keys, p_first + i0);
      UMA_LAUNCHED("causal_softmax");
      for (int j = 0; j < group; ++j)
        check(batched(CUBLAS_OP_N, CUBLAS_OP_N, s.head_dim_v, int(mc), int(n_keys), &one, vc, vw, s.head_dim_v,
                      S + j * mc * n_keys, int(n_keys), int64_t(group) * mc * n_keys, &zero,
                      out + ((t0 + i0) * s.n_head + j) * s.head_dim_v, s.n_head * s.head_dim_v,
                      int64_t(group) * s.head_dim_v, s.n_head_kv),
              "cublas strided batched GEMM (values)");
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
                               int64_t n, KvKind kind, int64_t n_cells) {
    const dim3 grid(unsigned(n), unsigned((kw + vw + 255) / 256));
    with_kv(kind, [&](auto tag) {
      using KV = typename decltype(tag)::type;
      store_kv_kernel<<<grid, 256, 0, stream_>>>(kv_cells<KV>(K, n_cells, kw), kv_cells<KV>(V, n_cells, vw), k, v,
                                                 kw, vw, L);
    });
    UMA_LAUNCHED("store_kv");
  }, kv.k(layer), kv.v(layer), k, v, kw, vw, L, batch.n_tokens, kv_kind(kv), kv.capacity());
}

void CudaBackend::attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch,
                            const AttentionShape& s, float* out) {
  q8_src_ = nullptr;
  if (batch.n_tokens == 0) return;
  if (s.head_dim_k > kMaxHeadDim || s.head_dim_v > kMaxHeadDim)
    fail("the CUDA attention kernel supports head dims up to {}, got {}/{}", kMaxHeadDim, s.head_dim_k,
         s.head_dim_v);
  const DeviceLayout L = layout_for(kv, batch);
  if (!decode_sized(batch.n_tokens) && gemm_attention_) {
    flush();  // cuBLAS and scratch growth stay out of recorded steps
    bool done = skipped("attention_gemm");  // UMA_CUDA_SKIP: no fallback either
    execute("attention_gemm", 0, [&] { done = attention_gemm(kv, layer, q, batch, s, out, L); });
    if (done) return;
  }
  // Split the keys when the grid would not fill the GPU: at least ~256 keys per block, and no more blocks
  // than the GPU holds at once. A second, partial wave of blocks left SMs idle while it ran: after 32,768
  // tokens of llama-7b (32 heads) 64 splits were 1.55 waves of the f16 kernel (10 blocks an SM) and 1.94 of
  // the 8-bit one (8); one wave (41 and 33 splits) took tg32 from 93.6 to 97.5 t/s and from 146.1 to 157.4.
  // A recorded step sizes the splits for the whole cache (the kernel divides the actual context among them,
  // at least a tile each), so the graph holds for every context length; otherwise for the longest context
  // of the batch.
  int64_t max_ctx = 0;
  if (deferred_) {
    max_ctx = kv.capacity();
  } else {
    for (int64_t t = 0; t < batch.n_tokens; ++t) max_ctx = std::max<int64_t>(max_ctx, batch.pos[t] + 1);
  }
  const int64_t blocks = batch.n_tokens * s.n_head;
  const bool hd128 = s.head_dim_k == 128 && s.head_dim_v == 128 && kv.options().k_width % 4 == 0 &&
                     kv.options().v_width % 4 == 0;  // rows aligned for four values
  const KvKind kind = kv_kind(kv);
  int n_split = 1;
  if (max_ctx > 512) {
    const int64_t wave = resident_blocks(attention_kernel_for(kind, hd128), kAttnThreads);
    n_split = int(std::clamp<int64_t>(std::min<int64_t>(wave / blocks, (max_ctx + 255) / 256), 1, attn_max_splits_));
  }
  // The int8 blocks of the output for the output projection of a decode step.
  Q8Buffer q8{nullptr, nullptr};
  if (fuse_ && decode_sized(batch.n_tokens) && s.head_dim_v % 32 == 0)
    q8 = q8_buffer(out, batch.n_tokens * s.n_head * s.head_dim_v);
  AttnArgs a{kv.k(layer), kv.v(layer), q, out, nullptr, nullptr, q8.xq, q8.xs, kv.options().k_width,
             kv.options().v_width, s.n_head, s.n_head / s.n_head_kv, s.head_dim_k, s.head_dim_v, n_split, s.scale,
             kv.capacity()};
  if (n_split > 1) {
    a.partial = static_cast<float*>(
        partial_.get(size_t(blocks) * n_split * (s.head_dim_v + 2) * sizeof(float), deferred_));
    // The split counters start at zero and every launch leaves them at zero (the merging block resets its
    // own); a new buffer is cleared on the stream before any launch that uses it.
    const size_t count_bytes = size_t(blocks) * sizeof(int);
    if (count_bytes > attn_count_.bytes) {
      void* p = attn_count_.get(count_bytes, deferred_);
      UMA_CHECK(cudaMemsetAsync(p, 0, attn_count_.bytes, stream_));
    }
    a.count = static_cast<int*>(attn_count_.p);
  }
  submit("attention", 0, [this](AttnArgs a, DeviceLayout L, int64_t n_tokens, KvKind kind, bool hd128) {
    dim3 grid(unsigned(a.n_head), unsigned(n_tokens), unsigned(a.n_split));
    launch(pdl_, grid, kAttnThreads, stream_, attention_kernel_for(kind, hd128), a, L);
    UMA_LAUNCHED("attention");
  }, a, L, batch.n_tokens, kind, hd128);
}

}  // namespace uma::cuda
