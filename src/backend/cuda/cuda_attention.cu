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

// The maximum (sum) of v over the block's kAttnWarps warps, in every thread; red: kAttnWarps floats of shared
// memory, not rewritten before the block's next barrier.
__device__ __forceinline__ float block_max(float v, float* red) {
  v = warp_max(v);
  if (threadIdx.x % kWarp == 0) red[threadIdx.x / kWarp] = v;
  __syncthreads();
  float m = red[0];
#pragma unroll
  for (int w = 1; w < kAttnWarps; ++w) m = fmaxf(m, red[w]);
  return m;
}
__device__ __forceinline__ float block_sum(float v, float* red) {
  v = warp_sum(v);
  if (threadIdx.x % kWarp == 0) red[threadIdx.x / kWarp] = v;
  __syncthreads();
  float sum = 0;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) sum += red[w];
  return sum;
}

// The output row of (token, head) th: v / l for dims tid, tid + kAttnThreads, .. with their int8 blocks.
__device__ __forceinline__ void attn_write(const AttnArgs& a, int64_t th, int j, float v) {
  a.out[th * a.hdv + j] = v;
  // hdv is a multiple of 32 when xq is set: each warp holds whole blocks.
  if (a.xq) quantize_warp_block(v, j % kWarp, a.xq + th * a.hdv + (j & ~31), a.xs + (th * a.hdv + j) / 32);
}

// The keys of split `split` of token t's context: positions [p0, p1) of n_ctx, in n_used splits of at least
// min_keys positions each (the context comes from device memory: a recorded step replays for every length).
struct SplitRange {
  int64_t n_ctx, p0, p1;
  int n_used;
};
__device__ __forceinline__ SplitRange split_range(const DeviceLayout& L, int64_t t, int n_split, int split,
                                                  int64_t min_keys) {
  SplitRange r;
  r.n_ctx = int64_t(L.pos[t]) + 1;
  const int64_t per_split = max(min_keys, (r.n_ctx + n_split - 1) / n_split);
  r.n_used = int((r.n_ctx + per_split - 1) / per_split);
  r.p0 = split * per_split, r.p1 = min(r.n_ctx, r.p0 + per_split);
  return r;
}

// The end of a split block: the warps' accumulators (sacc[w][j], after a block barrier) and the running max m
// and sum l. One split: the output row. Several: this split's state, and the last split block of the
// (head, token) to finish merges them all (a counter per (head, token) that it resets).
__device__ __forceinline__ void attention_finish(const AttnArgs& a, int64_t th, int split, int n_used, float m,
                                                 float l, const float (&sacc)[kAttnWarps][kMaxHeadDim]) {
  __shared__ bool last;
  const int tid = threadIdx.x;
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
  const auto [n_ctx, p0, p1, n_used] = split_range(L, t, a.n_split, split, kAttnThreads);
  if (split >= n_used) return;
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
    const float m_new = fmaxf(m, block_max(s, red_max));  // finite: the tile has at least one key
    const float corr = expf(m - m_new);
    const float e = tid < n ? expf(s - m_new) : 0.0f;
    prob[tid] = e;
    l = l * corr + block_sum(e, red_sum);
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
  attention_finish(a, th, split, n_used, m, l, sacc);
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

// ---- decode attention for long contexts (head dim 128, f16 or 8-bit cells; attention_long_kernel). The kernel
// above loads a key into registers (one thread a key) and a value row by lanes, so the bytes it has in flight
// are bounded by its 48 registers, and a block's loads wait on its own softmax: after 32k tokens llama-7b read
// its cache at ~68 % of copy bandwidth. Here the keys and values of a tile of kLongTile positions go into
// shared memory with cp.async (16 bytes a thread an instruction, no register held), kLongAhead tiles ahead of
// the one being computed, so the loads of later tiles are in flight while this one's softmax runs. A key's
// score takes a pair of threads (16-byte chunks 2j + h of the row to thread h), a value row 16 bytes a lane
// (half a warp for f16 cells, a quarter for 8-bit); rows are padded by 32 bytes so that both read patterns
// are free of bank conflicts. Shared memory (3 x 36 KB for f16) allows two blocks an SM. Used for f16 cells
// after 1,024 positions (CudaBackend::attention has the measurements).
constexpr int kLongTile = 64, kLongAhead = 2, kLongStages = kLongAhead + 1;
template <typename KV>
struct LongTile {
  static constexpr bool kQ8 = std::is_same_v<KV, int8_t>;
  static constexpr int kRow = 128 * int(sizeof(KV));  // bytes of a key or value row of one head
  static constexpr int kStride = kRow + 32;
  static constexpr int kChunks = kRow / 16;            // 16-byte chunks a row
  static_assert(kChunks % 2 == 0 && kAttnThreads % kChunks == 0, "a key's chunks split over a thread pair");
  static constexpr int kScale = kQ8 ? 8 : 0;           // 8-bit cells: four f16 block scales a row
  static constexpr int kStage = 2 * kLongTile * (kStride + kScale);
  static constexpr int kSmem = kLongStages * kStage;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(uint32_t(__cvta_generic_to_shared(dst))), "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(uint32_t(__cvta_generic_to_shared(dst))), "l"(src)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}
#endif

template <typename KV>
__global__ void __launch_bounds__(kAttnThreads) attention_long_kernel(AttnArgs a, DeviceLayout L) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800  // cp.async (launched only there: long_attention_compiled)
  using T = LongTile<KV>;
  extern __shared__ __align__(16) uint8_t tiles[];
  __shared__ __align__(16) float qs[128];
  __shared__ float prob[kLongTile], red_max[kAttnWarps], red_sum[kAttnWarps];
  const KvCells<KV> K = kv_cells<KV>(a.K, a.n_cells, a.kw), V = kv_cells<KV>(a.V, a.n_cells, a.vw);
  pdl_trigger();
  const int h = blockIdx.x, split = blockIdx.z;
  const int64_t t = blockIdx.y;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const auto [n_ctx, p0, p1, n_used] = split_range(L, t, a.n_split, split, kLongTile);
  if (split >= n_used) return;
  const int64_t th = t * a.n_head + h;
  const int64_t k_off = int64_t(h / a.group) * 128, v_off = k_off;
  const int n_tiles = int((p1 - p0 + kLongTile - 1) / kLongTile);
  // Tile i's keys and values (and 8-bit scales) into stage i % kLongStages, as one commit group. Thread tid
  // copies chunk tid % kChunks of rows tid / kChunks, + 128 / kChunks, ..; positions past the split's end
  // copy nothing (their scores are never read).
  auto issue = [&](int i) {
    if (i < n_tiles) {
      uint8_t* st = tiles + (i % kLongStages) * T::kStage;
      uint8_t* ks = st;
      uint8_t* vs = st + kLongTile * T::kStride;
      const int64_t first = p0 + int64_t(i) * kLongTile;
      const int n = int(min(int64_t(kLongTile), p1 - first));
      const int chunk = tid % T::kChunks;
#pragma unroll
      for (int r = tid / T::kChunks; r < kLongTile; r += kAttnThreads / T::kChunks) {
        if (r < n) {
          const int64_t c = kv_cell(L, t, first + r);
          const auto* k_row = reinterpret_cast<const uint8_t*>(K.p + c * a.kw + k_off);
          const auto* v_row = reinterpret_cast<const uint8_t*>(V.p + c * a.vw + v_off);
          cp_async16(ks + r * T::kStride + chunk * 16, k_row + chunk * 16);
          cp_async16(vs + r * T::kStride + chunk * 16, v_row + chunk * 16);
        }
      }
      if constexpr (T::kQ8) {
        uint8_t* scales = st + 2 * kLongTile * T::kStride;  // [K rows][8 bytes], then [V rows][8 bytes]
        const int r = tid % kLongTile;
        if (r < n) {
          const int64_t c = kv_cell(L, t, first + r);
          if (tid < kLongTile) cp_async8(scales + r * 8, K.d + (c * a.kw + k_off) / 32);
          else cp_async8(scales + (kLongTile + r) * 8, V.d + (c * a.vw + v_off) / 32);
        }
      }
    }
    cp_async_commit();  // an empty group past the last tile keeps the wait counts uniform
  };
  // The positions before this step's were written by earlier steps: their tiles may load before the wait
  // for the kernel that stored this step's keys and values. A step of n tokens writes at most n positions
  // of a sequence, the last of them at most this token's: none before n_ctx - n.
  const bool early = p0 + int64_t(kLongAhead) * kLongTile + int64_t(gridDim.y) <= n_ctx;
  if (early)
    for (int i = 0; i < kLongAhead; ++i) issue(i);
  pdl_wait();
  if (!early)
    for (int i = 0; i < kLongAhead; ++i) issue(i);
  qs[tid] = tid < 128 ? a.q[th * 128 + tid] * a.scale : 0.0f;  // kAttnThreads == 128

  // Scores: thread pair (key = tid / 2, h = tid % 2) takes chunks 2j + h of the key row.
  const int key = tid / 2, half = tid % 2;
  // Values: lane's 16 bytes (kPer values) of the row of key slot lane / kLanesPerKey (f16: two keys a warp at
  // once, 8-bit: four).
  constexpr int kPer = kKvPer16<KV>, kLanesPerKey = 128 / kPer, kKeysPerWarp = kWarp / kLanesPerKey;
  const int slot = lane / kLanesPerKey, dim0 = (lane % kLanesPerKey) * kPer;
  float m = -INFINITY, l = 0, acc[kPer] = {};
  for (int i = 0; i < n_tiles; ++i) {
    cp_async_wait<kLongAhead - 1>();  // this thread's copies of tile i are in
    __syncthreads();                   // everyone's (and the stage of tile i - 1 is free)
    issue(i + kLongAhead);
    const uint8_t* st = tiles + (i % kLongStages) * T::kStage;
    const uint8_t* ks = st;
    const uint8_t* vs = st + kLongTile * T::kStride;
    const uint8_t* scales = st + 2 * kLongTile * T::kStride;
    const int n = int(min(int64_t(kLongTile), p1 - p0 - int64_t(i) * kLongTile));
    float d = 0;
    if (key < n) {
#pragma unroll
      for (int j = 0; j < T::kChunks / 2; ++j) {
        const int c = 2 * j + half;
        const uint4 raw = *reinterpret_cast<const uint4*>(ks + key * T::kStride + c * 16);
        if constexpr (T::kQ8) {  // 16 values of block c / 2
          const float sc = __half2float(reinterpret_cast<const __half*>(scales + key * 8)[c / 2]);
          const int w[4] = {int(raw.x), int(raw.y), int(raw.z), int(raw.w)};
          float part = 0;
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const char4 c4 = *reinterpret_cast<const char4*>(&w[u]);
            const float4 q4 = reinterpret_cast<const float4*>(qs)[c * 4 + u];
            part += q4.x * float(c4.x) + q4.y * float(c4.y) + q4.z * float(c4.z) + q4.w * float(c4.w);
          }
          d += part * sc;
        } else {  // 8 halves
          const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const float2 k2 = __half22float2(h2[u]);
            d += qs[c * 8 + 2 * u] * k2.x + qs[c * 8 + 2 * u + 1] * k2.y;
          }
        }
      }
    }
    d += __shfl_xor_sync(0xffffffffu, d, 1);  // the whole warp: a pair's keys past the tile's end add zeros
    const float s = key < n ? d : -INFINITY;
    const float m_new = fmaxf(m, block_max(s, red_max));  // finite: the tile has at least one key
    const float corr = expf(m - m_new);
    const float e = key < n ? expf(s - m_new) : 0.0f;
    if (half == 0) prob[key] = e;
    l = l * corr + block_sum(half == 0 ? e : 0.0f, red_sum);
    m = m_new;
#pragma unroll
    for (auto& x : acc) x *= corr;
#pragma unroll 4
    for (int r = kKeysPerWarp * warp + slot; r < n; r += kKeysPerWarp * kAttnWarps) {
      const float p = prob[r];
      const uint4 raw = *reinterpret_cast<const uint4*>(vs + r * T::kStride + (lane % kLanesPerKey) * 16);
      if constexpr (T::kQ8) {  // 16 values of block dim0 / 32
        const float sc = p * __half2float(reinterpret_cast<const __half*>(scales + (kLongTile + r) * 8)[dim0 / 32]);
        const int w[4] = {int(raw.x), int(raw.y), int(raw.z), int(raw.w)};
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const char4 c4 = *reinterpret_cast<const char4*>(&w[u]);
          acc[4 * u] += sc * float(c4.x), acc[4 * u + 1] += sc * float(c4.y);
          acc[4 * u + 2] += sc * float(c4.z), acc[4 * u + 3] += sc * float(c4.w);
        }
      } else {
        const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const float2 v2 = __half22float2(h2[u]);
          acc[2 * u] += p * v2.x, acc[2 * u + 1] += p * v2.y;
        }
      }
    }
  }
  // The key slots' sums meet by shuffles, the warps' in the tiles' memory, free once every thread is here.
#pragma unroll
  for (int o = kLanesPerKey; o < kWarp; o <<= 1)
#pragma unroll
    for (int e = 0; e < kPer; ++e) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], o);
  cp_async_wait<0>();
  __syncthreads();
  auto& sacc = *reinterpret_cast<float(*)[kAttnWarps][kMaxHeadDim]>(tiles);
  if (slot == 0)
#pragma unroll
    for (int e = 0; e < kPer; ++e) sacc[warp][dim0 + e] = acc[e];
  __syncthreads();
  attention_finish(a, th, split, n_used, m, l, sacc);
#endif
}

using AttentionKernel = void (*)(AttnArgs, DeviceLayout);
// Above this many positions a decode step's attention takes attention_long_kernel (f16 cells; 8-bit ones when
// asked, UMA_CUDA_ATTN_LONG=all).
constexpr int64_t kLongContext = 1024;
// attention_long_kernel for f16 or 8-bit cells, and its dynamic shared memory (set as its limit on first use).
size_t long_attention_smem(KvKind kind) {
  return kind == KvKind::Q8 ? LongTile<int8_t>::kSmem : LongTile<__half>::kSmem;
}
// Whether this binary holds attention_long_kernel's code for the GPU at hand (a build for an older
// architecture runs on newer GPUs with the kernel's body compiled out).
bool long_attention_compiled() {
  static const bool compiled = [] {
    cudaFuncAttributes a{};
    return cudaFuncGetAttributes(&a, attention_long_kernel<__half>) == cudaSuccess && a.binaryVersion >= 80;
  }();
  return compiled;
}
AttentionKernel long_attention_kernel_for(KvKind kind) {
  static const bool sized = [] {
    UMA_CHECK(cudaFuncSetAttribute(attention_long_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   LongTile<__half>::kSmem));
    UMA_CHECK(cudaFuncSetAttribute(attention_long_kernel<int8_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   LongTile<int8_t>::kSmem));
    return true;
  }();
  (void)sized;
  return kind == KvKind::Q8 ? attention_long_kernel<int8_t> : attention_long_kernel<__half>;
}

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
  int64_t ctx_now = 0;  // the batch's longest context
  for (int64_t t = 0; t < batch.n_tokens; ++t) ctx_now = std::max<int64_t>(ctx_now, batch.pos[t] + 1);
  const int64_t max_ctx = deferred_ ? kv.capacity() : ctx_now;
  const int64_t blocks = batch.n_tokens * s.n_head;
  const bool hd128 = s.head_dim_k == 128 && s.head_dim_v == 128 && kv.options().k_width % 4 == 0 &&
                     kv.options().v_width % 4 == 0;  // rows aligned for four values
  const KvKind kind = kv_kind(kv);
  // A context longer than kLongContext (now, not the cache's capacity: a recorded step that crosses it is
  // captured again) takes attention_long_kernel where the cells allow it: f16 (or, UMA_CUDA_ATTN_LONG=all,
  // 8-bit), head dim 128, rows whole 16-byte chunks. llama-7b Q4_0 on the H100, f16 cells: tg32 after 32,768
  // tokens 97.2 -> 116.3 t/s, after 4,096 tokens 243 -> 337; 8-bit cells after 32,768 tokens 155.7 -> 152.1
  // (so they keep the short kernel).
  const int kw = kv.options().k_width, vw = kv.options().v_width;
  const bool long_ctx = long_attention_compiled() && decode_sized(batch.n_tokens) && hd128 &&
                        ctx_now > kLongContext &&
                        ((kind == KvKind::F16 && long_attention_ >= 1 && kw % 8 == 0 && vw % 8 == 0) ||
                         (kind == KvKind::Q8 && long_attention_ >= 2 && kw % 128 == 0 && vw % 128 == 0));
  int n_split = 1;
  if (max_ctx > 512) {
    const int64_t wave = long_ctx
                             ? resident_blocks(long_attention_kernel_for(kind), kAttnThreads, long_attention_smem(kind))
                             : resident_blocks(attention_kernel_for(kind, hd128), kAttnThreads);
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
  submit("attention", 0, [this](AttnArgs a, DeviceLayout L, int64_t n_tokens, KvKind kind, bool hd128,
                                bool long_ctx) {
    dim3 grid(unsigned(a.n_head), unsigned(n_tokens), unsigned(a.n_split));
    if (long_ctx)
      launch_smem(pdl_, grid, kAttnThreads, long_attention_smem(kind), stream_, long_attention_kernel_for(kind), a,
                  L);
    else
      launch(pdl_, grid, kAttnThreads, stream_, attention_kernel_for(kind, hd128), a, L);
    UMA_LAUNCHED("attention");
  }, a, L, batch.n_tokens, kind, hd128, long_ctx);
}

}  // namespace uma::cuda
