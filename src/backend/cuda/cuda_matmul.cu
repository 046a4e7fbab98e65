// Matrix products: the decode GEMVs (int8 activations for the repacked quantized types, f32 for plain types)
// and the prefill GEMM through cuBLAS.
#include <tuple>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cublas_api.h"

namespace uma::cuda {
namespace {


// Activations → int8 blocks of 32 for the quantized GEMV: one warp a block, d = amax / 127, q = round(x / d),
// and d·Σq over each half block (the GEMV's weight offsets and mins need the sums). The CPU backend quantizes
// activations to 8 bits as well (Q8_0/Q8_K), so the error against an f32 reference is of the same kind.
__global__ void quantize_q8_kernel(const float* __restrict__ x, int64_t n_blocks, int8_t* __restrict__ xq,
                                   float4* __restrict__ xs) {
  pdl_trigger();  // the GEMVs after it may start prefetching their weights
  const int lane = threadIdx.x % kWarp;
  const int64_t blk = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (blk >= n_blocks) return;
  quantize_warp_block(x[blk * 32 + lane], lane, xq + blk * 32, xs + blk);
}

// ---- Decode GEMV: y = W x for up to kMaxGemvSegs matrices of the same type and input in one launch -------
// (q/k/v, gate/up: one launch instead of three, and the small GQA k/v matrices ride along with q instead of
// paying a launch and a ramp-up of their own). Blocks [first[s], first[s + 1]) compute segment s; grid.y is
// the token.
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

// The segment that unit `index` (a block, or a bulk stage) of g.first belongs to.
__device__ __forceinline__ int segment_of(const GemvSegs& g, int index) {
  int s = 0;
#pragma unroll
  for (int i = 1; i < kMaxGemvSegs; ++i)
    if (i < g.n && index >= g.first[i]) s = i;
  return s;
}
// The segment of this block and its first row.
template <int kRows>
__device__ __forceinline__ int gemv_segment(const GemvSegs& g, int64_t& row0) {
  const int s = segment_of(g, int(blockIdx.x));
  row0 = int64_t(int(blockIdx.x) - g.first[s]) * kRows;
  return s;
}

// The end of every GEMV block: each warp reduces its kRows partial sums, and the block's first kRows threads
// add the warps' sums (plus the bias) and write the rows.
template <int kRows, int kWarps>
__device__ __forceinline__ void finish_rows(const float (&acc)[kRows], int64_t row0, int64_t rows, float* y,
                                            const float* bias, float scale = 1.0f) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __shared__ float part_sum[kWarps][kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float s = warp_sum(acc[r]);
    if (lane == 0) part_sum[warp][r] = s;
  }
  __syncthreads();
  if (threadIdx.x < kRows && row0 + threadIdx.x < rows) {
    float s = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += part_sum[w][threadIdx.x];
    y[row0 + threadIdx.x] = s * scale + (bias ? bias[row0 + threadIdx.x] : 0.0f);
  }
}

// A quantized GEMV block's start: the pointers to its kRows rows (the last row stands in past the end) and,
// before waiting for the activations (see pdl_wait), this thread's quant bytes of those rows into L2.
template <int kRows, int kWarps>
__device__ __forceinline__ void gemv_q8_rows(const WView& w, int64_t row0, int64_t rows, int n_chunks, bool prefetch,
                                             const uint8_t* (&q)[kRows], const uint8_t* (&m)[kRows],
                                             const uint8_t* (&d)[kRows]) {
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r < rows ? row0 + r : rows - 1;
    q[r] = w.q + row * w.q_row, m[r] = w.m + row * w.m_row, d[r] = w.d + row * w.d_row;
  }
  const int64_t chunk_bytes = w.q_row / n_chunks;
  if (prefetch)
    for (int i = threadIdx.x; i < n_chunks; i += kWarps * kWarp)
#pragma unroll
      for (int r = 0; r < kRows; ++r) prefetch_l2(q[r] + i * chunk_bytes);
}

// The 1 / RMS of token t's pending parallel RMSNorm (RmsIn): every warp sums the row's parts itself (no
// barrier), and the first blocks scale the norm's f32 output in place (nothing else reads it while the GEMV
// runs). 1 when the input is plain.
__device__ __forceinline__ float gemv_rms_scale(const RmsIn& rms, int64_t t) {
  if (!rms.parts) return 1.0f;
  const float scale = rms_scale_from_parts(rms.parts + t * (rms.dim / 32), rms.dim / 32, rms.dim, rms.eps);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rms.dim; i += int64_t(gridDim.x) * blockDim.x)
    rms.xn[t * rms.dim + i] *= scale;
  return scale;
}

// Quantized GEMV: a block of kWarps warps owns kRows rows; its threads stride over the row's chunks (see
// MvQ4_0 & co. in kernels.cuh), each loading a chunk's int8 activations once for all kRows rows, so every
// thread has kRows independent 16-byte weight loads in flight; the warps' sums meet in shared memory.
template <typename T, int kRows, int kWarps>
__global__ void __launch_bounds__(kWarps * kWarp)
    gemv_q8_kernel(const __grid_constant__ GemvSegs g, int n_chunks, const int8_t* __restrict__ xq,
                   const float4* __restrict__ xs, bool prefetch) {
  int64_t row0;
  const int s = gemv_segment<kRows>(g, row0);
  const WView& w = g.w[s];
  const int64_t rows = g.rows[s], t = blockIdx.y;
  xq += int64_t(t) * n_chunks * T::kChunkValues, xs += int64_t(t) * n_chunks * (T::kChunkValues / 32);
  float acc[kRows] = {};
  const uint8_t *q[kRows], *m[kRows], *d[kRows];
  gemv_q8_rows<kRows, kWarps>(w, row0, rows, n_chunks, prefetch, q, m, d);
  pdl_wait();
  pdl_trigger();
  const float scale = gemv_rms_scale(g.rms, t);
#pragma unroll 2
  for (int i = threadIdx.x; i < n_chunks; i += kWarps * kWarp) {
    typename T::X xv;
    T::load_x(xq, xs, i, xv);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] += T::dot(q[r], m[r], d[r], i, xv);
  }
  finish_rows<kRows, kWarps>(acc, row0, rows, g.y[s] + t * rows, g.bias[s], scale);
}

// ---- Decode GEMV through bulk copies (sm_90; CudaBackend::bulk_config says where) -----------------------------
// The blocks above hold a weight load in registers until it arrives, so the bytes in flight are bounded by
// registers and occupancy, and a block can only load once it is resident. Here one thread of each block (one
// block an SM) copies stages of whole rows (the rows' quant bytes, and their scales: each contiguous across
// consecutive rows in the repacked layout) into a ring of shared-memory slots with cp.async.bulk (the TMA
// engine), each completing an mbarrier; 8 to 24 consumer warps compute from shared memory with the dot
// pieces of kernels.cuh (4 rows at a time, activations loaded once for them) and give the slot back. The
// producer issues its first stages before the PDL wait: no earlier kernel writes weights, so a GEMV that
// starts early has up to 2 x 96 KB of its matrix on the way while the kernels before it finish (with 96 KB
// stages a 4096 x 4096 Q4_0 matrix is fewer stages than there are SMs).
struct BulkShape {
  int stage_rows, n_slots, slot_bytes, parts_floats;  // rows a stage; ring slots (<= 8); bytes a slot; part buffer
  int n_stages;                                       // stages over all segments (g.first is in stages)
};
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // mbarrier transactions and bulk copies: Hopper on
__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }
__device__ __forceinline__ void mbar_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_addr(bar)), "r"(bytes) : "memory");
}
// bytes (a multiple of 16, both addresses 16-byte aligned) from global memory into shared memory; completes
// `bar`'s transaction count.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   smem_addr(dst)),
               "l"(src), "r"(bytes), "r"(smem_addr(bar))
               : "memory");
}
#endif

// Plain types in the bulk GEMV: chunk i is 16 bytes of a row, and the activations are f32 (passed as xq).
template <GgmlType kType>
struct MvPlain {
  using P = GemvPlain<kType>;
  static constexpr int kChunkValues = P::N;
  struct X {
    float v[P::N];
  };
  __device__ static void load_x(const int8_t* xq, const float4*, int i, X& x) {
    P::load_x(reinterpret_cast<const float*>(xq) + i * P::N, 0, x.v);
  }
  __device__ static float dot(const uint8_t* q, const uint8_t*, const uint8_t*, int i, const X& x) {
    return P::dot(q + 16 * i, 0, x.v);
  }
};

template <typename T, int kConsumers>
__global__ void __launch_bounds__((kConsumers + 1) * kWarp)
    gemv_bulk_kernel(const __grid_constant__ GemvSegs g, int n_chunks, const int8_t* __restrict__ xq,
                     const float4* __restrict__ xs, BulkShape sh) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // (launched only there: bulk_allowed_)
  constexpr int kItemRows = 4;  // rows a warp takes at once (activations loaded once for them)
  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* full = reinterpret_cast<uint64_t*>(smem);
  uint64_t* empty = full + sh.n_slots;
  float* parts = reinterpret_cast<float*>(smem + 128);
  uint8_t* slots = smem + 128 + 2 * sh.parts_floats * sizeof(float);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t q_row = g.w[0].q_row, m_row = g.w[0].m_row, d_row = g.w[0].d_row;
  // Stage st: its segment, first row and row count.
  auto stage = [&](int st, int& s, int64_t& row0, int& n_rows) {
    s = segment_of(g, st);
    row0 = int64_t(st - g.first[s]) * sh.stage_rows;
    n_rows = int(min(int64_t(sh.stage_rows), g.rows[s] - row0));
  };
  auto produce = [&](int k) {  // this block's k-th stage into slot k % n_slots
    const int st = int(blockIdx.x) + k * int(gridDim.x);
    int s, n_rows;
    int64_t row0;
    stage(st, s, row0, n_rows);
    uint8_t* dst = slots + (k % sh.n_slots) * sh.slot_bytes;
    uint64_t* bar = full + k % sh.n_slots;
    mbar_expect_tx(bar, uint32_t(n_rows * (q_row + m_row + d_row)));
    bulk_copy(dst, g.w[s].q + row0 * q_row, uint32_t(n_rows * q_row), bar);
    if (m_row) bulk_copy(dst + n_rows * q_row, g.w[s].m + row0 * m_row, uint32_t(n_rows * m_row), bar);
    if (d_row) bulk_copy(dst + n_rows * (q_row + m_row), g.w[s].d + row0 * d_row, uint32_t(n_rows * d_row), bar);
  };
  const int mine = (sh.n_stages - int(blockIdx.x) + int(gridDim.x) - 1) / int(gridDim.x);  // stages of this block
  if (threadIdx.x == 0) {
    for (int i = 0; i < sh.n_slots; ++i) mbar_init(full + i, 1), mbar_init(empty + i, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  const bool producer = warp == kConsumers && lane == 0;
  if (producer)
    for (int k = 0; k < min(mine, sh.n_slots); ++k) produce(k);
  pdl_wait();
  pdl_trigger();
  const float scale = gemv_rms_scale(g.rms, 0);
  if (producer) {
    for (int k = sh.n_slots; k < mine; ++k) {
      mbar_wait(empty + k % sh.n_slots, uint32_t((k / sh.n_slots - 1) & 1));
      produce(k);
    }
    return;
  }
  if (warp == kConsumers) return;
  for (int k = 0; k < mine; ++k) {
    const int st = int(blockIdx.x) + k * int(gridDim.x);
    int s, n_rows;
    int64_t row0;
    stage(st, s, row0, n_rows);
    mbar_wait(full + k % sh.n_slots, uint32_t((k / sh.n_slots) & 1));
    const uint8_t* qs = slots + (k % sh.n_slots) * sh.slot_bytes;
    const uint8_t* ms = qs + n_rows * q_row;
    const uint8_t* ds = ms + n_rows * m_row;
    // Work items: groups of kItemRows rows, each split over `split` warps when there are fewer groups than warps.
    const int groups = (n_rows + kItemRows - 1) / kItemRows;
    const int split = groups < kConsumers ? kConsumers / groups : 1;
    float* part = parts + (k & 1) * sh.parts_floats;
    for (int item = warp; item < groups * split; item += kConsumers) {
      const int r0 = (item / split) * kItemRows, p = item % split;
      const uint8_t *q[kItemRows], *m[kItemRows], *d[kItemRows];
#pragma unroll
      for (int r = 0; r < kItemRows; ++r) {
        const int row = min(r0 + r, n_rows - 1);
        q[r] = qs + row * q_row, m[r] = ms + row * m_row, d[r] = ds + row * d_row;
      }
      float acc[kItemRows] = {};
      for (int i = p * kWarp + lane; i < n_chunks; i += split * kWarp) {
        typename T::X xv;
        T::load_x(xq, xs, i, xv);
#pragma unroll
        for (int r = 0; r < kItemRows; ++r) acc[r] += T::dot(q[r], m[r], d[r], i, xv);
      }
#pragma unroll
      for (int r = 0; r < kItemRows; ++r) {
        const float v = warp_sum(acc[r]);
        if (lane == 0) part[(r0 + r) * split + p] = v;
      }
    }
    asm volatile("bar.sync 1, %0;" ::"r"(kConsumers * kWarp) : "memory");  // the consumers only
    if (threadIdx.x == 0) mbar_arrive(empty + k % sh.n_slots);
    if (int(threadIdx.x) < n_rows) {
      float v = 0;
      for (int j = 0; j < split; ++j) v += part[threadIdx.x * split + j];
      const int64_t row = row0 + threadIdx.x;
      g.y[s][row] = v * scale + (g.bias[s] ? g.bias[s][row] : 0.0f);
    }
  }
#endif
}

// The same for a step of 2 to kTok tokens (the server's sequences, a short prompt): a block takes its rows for
// every token (grid.y = 1), so each weight byte comes from DRAM once a step instead of once a token; a chunk's
// weights are read again for each token from L1. Same arithmetic, token by token. kTok 4 or 8 (8 accumulators
// a row cost a 4-token step 8 % in registers). Kept apart from gemv_q8_kernel on purpose: one kernel templated
// on the token count ran single-token decode 3-9 % slower (llama-7b Q4_0 tg128 439 -> 401, Q4_K_M 364 -> 352
// t/s, tools/device/ab_decode.sh, one H100).
template <typename T, int kRows, int kWarps, int kTok>
__global__ void __launch_bounds__(kWarps * kWarp)
    gemv_q8_tokens_kernel(const __grid_constant__ GemvSegs g, int n_chunks, const int8_t* __restrict__ xq,
                          const float4* __restrict__ xs, bool prefetch, int n_tokens) {
  int64_t row0;
  const int s = gemv_segment<kRows>(g, row0);
  const WView& w = g.w[s];
  const int64_t rows = g.rows[s];
  const int64_t xq_token = int64_t(n_chunks) * T::kChunkValues, xs_token = int64_t(n_chunks) * (T::kChunkValues / 32);
  float acc[kTok][kRows] = {};
  const uint8_t *q[kRows], *m[kRows], *d[kRows];
  gemv_q8_rows<kRows, kWarps>(w, row0, rows, n_chunks, prefetch, q, m, d);
  pdl_wait();
  pdl_trigger();
  float scale[kTok];
#pragma unroll
  for (int t = 0; t < kTok; ++t) scale[t] = t < n_tokens ? gemv_rms_scale(g.rms, t) : 1.0f;
  for (int i = threadIdx.x; i < n_chunks; i += kWarps * kWarp) {
#pragma unroll
    for (int t = 0; t < kTok; ++t) {
      if (t >= n_tokens) break;
      typename T::X xv;
      T::load_x(xq + t * xq_token, xs + t * xs_token, i, xv);
#pragma unroll
      for (int r = 0; r < kRows; ++r) acc[t][r] += T::dot(q[r], m[r], d[r], i, xv);
    }
  }
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  __shared__ float part_sum[kTok][kWarps][kRows];
#pragma unroll
  for (int t = 0; t < kTok; ++t)
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float v = warp_sum(acc[t][r]);
      if (lane == 0) part_sum[t][warp][r] = v;
    }
  __syncthreads();
  const int t = threadIdx.x / kRows, r = threadIdx.x % kRows;
  if (t < n_tokens && row0 + r < rows) {
    float v = 0;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) v += part_sum[t][k][r];
    g.y[s][t * rows + row0 + r] = v * scale[t] + (g.bias[s] ? g.bias[s][row0 + r] : 0.0f);
  }
}

// Plain types (f32 activations): each of kWarps * 32 threads takes
// every (kWarps * 32)-th part of kRows rows, and the warps' partial sums meet in shared memory. A block
// owns kRows rows, so a 4096-row matrix gives 1024 blocks of 4 warps (~31 warps per SM on 132 SMs) with
// kRows independent weight loads per thread in flight, while each activation load serves kRows rows.
template <typename T, int kRows, int kWarps>
__global__ void __launch_bounds__(kWarps * kWarp)
    gemv_split_kernel(const __grid_constant__ GemvSegs g, int64_t cols, const float* __restrict__ x) {
  int64_t row0;
  const int s = gemv_segment<kRows>(g, row0);
  const int64_t rows = g.rows[s], row_bytes = g.w[s].q_row, t = blockIdx.y;
  x += t * cols;
  const int n_parts = int(cols / T::kBlockValues * T::kParts);
  float acc[kRows] = {};
  const uint8_t* wrow[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wrow[r] = g.w[s].q + (row0 + r < rows ? row0 + r : rows - 1) * row_bytes;
  pdl_wait();
  pdl_trigger();
#pragma unroll 2
  for (int i = threadIdx.x; i < n_parts; i += kWarps * kWarp) {
    const int blk = i / T::kParts;
    const int part = i % T::kParts;
    float xv[T::N];
    T::load_x(x + int64_t(blk) * T::kBlockValues, part, xv);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] += T::dot(wrow[r] + int64_t(blk) * T::kBlockBytes, part, xv);
  }
  finish_rows<kRows, kWarps>(acc, row0, rows, g.y[s] + t * rows, g.bias[s]);
}

// Any type and shape: one warp per row through weight_value (plain types with odd widths).
__global__ void gemv_generic_kernel(WView w, int64_t rows, int64_t cols, const float* x, float* y, const float* bias) {
  const int lane = threadIdx.x % kWarp;
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (r >= rows) return;
  float s = 0;
  for (int64_t c = lane; c < cols; c += kWarp) s += weight_value(w, r, c) * x[c];
  s = warp_sum(s);
  if (lane == 0) y[r] = s + (bias ? bias[r] : 0.0f);
}

// Weight rows → f16 (prefill operand): one thread per 32 values of a row, read from the repacked layout
// with the block formulas of src/quant, written as four 16-byte stores. Bandwidth-bound: a llama-7b Q4_0
// layer reads 0.12 GB and writes 0.4 GB.
template <GgmlType kType>
__device__ __forceinline__ void dequant_group(const WView& w, int64_t r, int64_t g, float (&v)[32]) {
  if constexpr (kType == GgmlType::Q4_0) {
    const uint4 q = reinterpret_cast<const uint4*>(w.q + r * w.q_row)[g];
    const float d = f16(w.d + r * w.d_row + 2 * g);
    const uint32_t b[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      const int byte = (b[j / 4] >> (8 * (j % 4))) & 0xFF;
      v[j] = d * float((byte & 0xF) - 8);
      v[j + 16] = d * float((byte >> 4) - 8);
    }
  } else if constexpr (kType == GgmlType::Q8_0) {
    const int4* q = reinterpret_cast<const int4*>(w.q + r * w.q_row) + 2 * g;
    const float d = f16(w.d + r * w.d_row + 2 * g);
    const int4 a = q[0], b = q[1];
    const int words[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
    for (int j = 0; j < 32; ++j) v[j] = d * float(int8_t(words[j / 4] >> (8 * (j % 4))));
  } else if constexpr (kType == GgmlType::Q4_K || kType == GgmlType::Q5_K) {
    constexpr bool q5 = kType == GgmlType::Q5_K;
    const int64_t sb = g / 8;
    const int j = int(g % 8), cc = j / 2, h = j % 2;
    const uint8_t* q = w.q + r * w.q_row + sb * (q5 ? 160 : 128);
    const uint8_t* meta = w.m + r * w.m_row + 16 * sb;
    float sc, mn;
    k4_scale_min(j, meta + 4, sc, mn);
    const float d = f16(meta) * sc, m = f16(meta + 2) * mn;
    const uint4* qs = reinterpret_cast<const uint4*>(q + (q5 ? 32 : 0) + 32 * cc);
    const uint4 lo = qs[0], hi = qs[1];
    const uint32_t b[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
    uint32_t qh[8] = {};
    if constexpr (q5) {
      const uint4 a = reinterpret_cast<const uint4*>(q)[0], c = reinterpret_cast<const uint4*>(q)[1];
      const uint32_t t[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
#pragma unroll
      for (int k = 0; k < 8; ++k) qh[k] = t[k];
    }
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      int n = (b[l / 4] >> (8 * (l % 4) + 4 * h)) & 0xF;
      if constexpr (q5) n |= ((qh[l / 4] >> (8 * (l % 4) + j)) & 1) << 4;
      v[l] = d * float(n) - m;
    }
  } else if constexpr (kType == GgmlType::Q6_K) {
    const int64_t sb = g / 8;
    const int e0 = int(g % 8) * 32, n = e0 / 128, k = (e0 % 128) / 32;
    const uint8_t* q = w.q + r * w.q_row + 192 * sb;
    const uint4* ql = reinterpret_cast<const uint4*>(q + 64 * n + 32 * (k & 1));
    const uint4* qh = reinterpret_cast<const uint4*>(q + 128 + 32 * n);
    const uint4 l0 = ql[0], l1 = ql[1], h0 = qh[0], h1 = qh[1];
    const uint32_t lw[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
    const uint32_t hw[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    const float d = f16(w.d + r * w.d_row + 2 * sb);
    const int8_t* sc = reinterpret_cast<const int8_t*>(w.m + r * w.m_row + 16 * sb) + e0 / 16;
    const float d0 = d * float(sc[0]), d1 = d * float(sc[1]);
#pragma unroll
    for (int l = 0; l < 32; ++l) {
      const int low = (lw[l / 4] >> (8 * (l % 4) + 4 * (k >> 1))) & 0xF;
      const int high = (hw[l / 4] >> (8 * (l % 4) + 2 * k)) & 3;
      v[l] = (l < 16 ? d0 : d1) * float((low | (high << 4)) - 32);
    }
  } else if constexpr (kType == GgmlType::BF16) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(w.q + r * w.q_row) + 32 * g;
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = bf16(p[l]);
  } else {
#pragma unroll
    for (int l = 0; l < 32; ++l) v[l] = weight_value(w, r, 32 * g + l);
  }
}

template <GgmlType kType>
__global__ void dequant_f16_kernel(WView w, int64_t rows, int64_t cols, __half* out) {
  const int64_t groups = cols / 32, total = rows * groups;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / groups, g = i % groups;
    float v[32];
    dequant_group<kType>(w, r, g, v);
    uint4* o = reinterpret_cast<uint4*>(out + r * cols + 32 * g);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      __half2 h[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) h[e] = __floats2half2_rn(v[8 * k + 2 * e], v[8 * k + 2 * e + 1]);
      o[k] = *reinterpret_cast<const uint4*>(h);
    }
  }
}

// Any width: one thread a value (types whose rows are not whole 32-value groups).
__global__ void dequant_f16_any_kernel(WView w, int64_t rows, int64_t cols, __half* out) {
  const int64_t total = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2half(weight_value(w, i / cols, i % cols));
}

__global__ void f32_to_f16_kernel(const float* x, int64_t n, __half* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = __float2half(x[i]);
}

__global__ void add_bias_kernel(float* y, const float* b, int64_t rows, int64_t n_tokens) {
  const int64_t total = rows * n_tokens;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += b[i % rows];
}

}  // namespace

// Whether this binary holds the bulk GEMV's sm_90 code: a build for an older architecture runs on a Hopper GPU
// too, with the kernel's body compiled out.
bool bulk_gemv_compiled() {
  cudaFuncAttributes a{};
  return cudaFuncGetAttributes(&a, gemv_bulk_kernel<MvQ8_0, 16>) == cudaSuccess && a.binaryVersion >= 90;
}

void CudaBackend::matmul(const Weight& w, const float* x, int64_t n_tokens, float* y, const Weight* bias) {
  const MatmulTarget target{&w, y, bias};
  matmul_many(x, n_tokens, &target, 1);
}

void CudaBackend::matmul_many(const float* x, int64_t n_tokens, const MatmulTarget* targets, size_t n_targets) {
  if (!decode_sized(n_tokens)) {
    q8_src_ = nullptr;
    flush();  // cuBLAS and scratch growth stay out of recorded steps
    execute(profile_ ? profile_name(n_targets > 1 ? "gemm×" : "gemm", device_weight(*targets[0].w)) : "gemm", 0,
            [&] { gemm_many(x, n_tokens, targets, n_targets); });
    return;
  }
  // Consecutive targets of one type and width share a launch (UMA_CUDA_MERGE=0: one launch each).
  for (size_t i = 0; i < n_targets;) {
    GemvTargets g{};
    const DeviceWeight& first = device_weight(*targets[i].w);
    size_t j = i;
    for (; j < n_targets && g.n < (merge_ ? kMaxGemvSegs : 1); ++j) {
      const DeviceWeight& d = device_weight(*targets[j].w);
      if (d.type != first.type || d.cols != first.cols) break;
      const Weight* b = targets[j].bias;
      g.d[g.n] = &d;
      g.y[g.n] = targets[j].y;
      g.b[g.n] = (b && *b) ? reinterpret_cast<const float*>(device_weight(*b).data) : nullptr;
      ++g.n;
    }
    gemv(g, x, n_tokens);
    i = j;
  }
  for (size_t i = 0; i < n_targets; ++i) {
    const float* y = targets[i].y;
    if (q8_src_ && y < q8_src_ + q8_n_ && q8_src_ < y + n_tokens * targets[i].w->rows()) q8_src_ = nullptr;
  }
}

void CudaBackend::quantize_activations(const float* x, int64_t n_tokens, int64_t cols, const int8_t*& xq, const float4*& xs) {
  const int64_t n = n_tokens * cols;
  if (x != q8_src_ || n != q8_n_) {
    const Q8Buffer q = q8_buffer(x, n);
    submit("quantize_q8", 0, [this](const float* x, int64_t n_blocks, int8_t* xq, float4* xs) {
      quantize_q8_kernel<<<unsigned((n_blocks + 7) / 8), 256, 0, stream_>>>(x, n_blocks, xq, xs);
      UMA_LAUNCHED("quantize_q8");
    }, x, n / 32, q.xq, q.xs);
  }
  xq = reinterpret_cast<const int8_t*>(q8_base_);
  xs = reinterpret_cast<const float4*>(q8_base_ + n);
}

CudaBackend::Q8Buffer CudaBackend::q8_buffer(const float* x, int64_t n) {
  settle_norm();  // a pending norm's int8 blocks may live in q8_
  auto* base = static_cast<uint8_t*>(q8_.get(size_t(n) + size_t(n / 32) * sizeof(float4), deferred_));
  q8_src_ = x, q8_n_ = n, q8_base_ = base;
  return {reinterpret_cast<int8_t*>(base), reinterpret_cast<float4*>(base + n)};
}

// One launch for the matrices of g (same type and width) on n_tokens rows of x.
void CudaBackend::gemv(const GemvTargets& g, const float* x, int64_t n_tokens) {
  const DeviceWeight& d0 = *g.d[0];
  double bytes = 0;
  int64_t rows = 0;
  for (int s = 0; s < g.n; ++s) bytes += double(g.d[s]->row_bytes) * g.d[s]->rows, rows += g.d[s]->rows;
  const char* name = profile_ ? profile_name(g.n > 1 ? "gemv×" : "gemv", d0, rows) : "gemv";
  const bool plain_ok = (d0.type == GgmlType::F32 ? d0.cols % 4 : d0.cols % 8) == 0;
  if (soa_split(d0.type).q_len) {
    // The int8 GEMV reading a pending parallel norm's output applies its 1 / RMS (RmsIn).
    RmsIn rms{};
    if (norm_pending_.parts && x == norm_pending_.out && n_tokens == norm_pending_.n_rows && d0.cols == norm_pending_.dim) {
      rms = RmsIn{norm_pending_.parts, norm_pending_.out, norm_pending_.dim, norm_pending_.eps};
      norm_pending_ = {};
    }
    const int8_t* xq;
    const float4* xs;
    quantize_activations(x, n_tokens, d0.cols, xq, xs);
    submit(name, bytes * n_tokens, [this](GemvTargets g, const int8_t* xq, const float4* xs, int64_t n_tokens,
                                          RmsIn rms) {
      launch_gemv(g, nullptr, xq, xs, n_tokens, rms);
    }, g, xq, xs, n_tokens, rms);
    if (rms.parts) q8_src_ = nullptr;  // the int8 blocks lack the scale the f32 output now has
  } else if ((d0.type == GgmlType::F32 || d0.type == GgmlType::F16 || d0.type == GgmlType::BF16) && plain_ok) {
    submit(name, bytes * n_tokens, [this](GemvTargets g, const float* x, int64_t n_tokens) {
      launch_gemv(g, x, nullptr, nullptr, n_tokens, RmsIn{});
    }, g, x, n_tokens);
  } else {
    for (int s = 0; s < g.n; ++s)
      submit(name, double(g.d[s]->row_bytes) * g.d[s]->rows * n_tokens,
             [this](const DeviceWeight* d, const float* x, float* y, const float* b, int64_t n_tokens) {
               for (int64_t t = 0; t < n_tokens; ++t) {
                 gemv_generic_kernel<<<unsigned((d->rows + 3) / 4), 128, 0, stream_>>>(
                     d->view, d->rows, d->cols, x + t * d->cols, y + t * d->rows, b);
                 UMA_LAUNCHED("gemv_generic");
               }
             }, g.d[s], x, g.y[s], g.b[s], n_tokens);
  }
}

// The launch: int8 activations (xq, xs) for the repacked quantized types, f32 (x) for plain types. A block
// owns 4 rows when that still gives >= 4 blocks per SM, else 1 (small matrices: GQA k/v alone).
void CudaBackend::launch_gemv(const GemvTargets& g, const float* x, const int8_t* xq, const float4* xs,
                              int64_t n_tokens, const RmsIn& rms) {
  const DeviceWeight& d0 = *g.d[0];
  int64_t rows = 0;
  for (int s = 0; s < g.n; ++s) rows += g.d[s]->rows;
  // Chunks of 64 values (MvQ4_0x2, MvQ45_Kx2) for Q4_K/Q5_K always, for Q4_0 up to 8192 rows; there a
  // row of 4096 values has 64 chunks, so the block takes 2 warps, not 4 (GB/s measured per shape, "GEMV
  // alone" in docs/PERFORMANCE.md: Q4_K +13-17 %, Q4_0 4096-row matrices +11-31 %, while Q4_0's merged
  // q/k/v and gate/up launches stay faster on 32-value chunks). UMA_CUDA_GEMV_PAIR=0: 32 always.
  const bool k_quant = d0.type == GgmlType::Q4_K || d0.type == GgmlType::Q5_K;
  const bool pair = gemv_pair_ && d0.cols % 64 == 0 && (k_quant || (d0.type == GgmlType::Q4_0 && rows <= 8192));
  // Block shapes (rows a block x warps): 4 x 4 (4 x 2 with 64-value chunks); 1 x 4 when the matrix is too
  // small for >= 4 blocks per SM. UMA_CUDA_GEMV=RxW picks another wide shape (8x4, 4x2, 8x2) for measurements.
  const bool wide = rows >= 4 * 4 * sm_count_;
  const int per_block = wide ? gemv_rows_ : 1;
  const int warps = !wide ? 4 : gemv_warps_ ? gemv_warps_ : pair ? 2 : 4;
  GemvSegs segs{};
  segs.n = g.n;
  segs.rms = rms;
  for (int s = 0; s < g.n; ++s) {
    segs.w[s] = g.d[s]->view;
    segs.y[s] = g.y[s];
    segs.bias[s] = g.b[s];
    segs.rows[s] = g.d[s]->rows;
    segs.first[s + 1] = segs.first[s] + int((g.d[s]->rows + per_block - 1) / per_block);
  }
  const dim3 grid(unsigned(segs.first[g.n]), unsigned(n_tokens)), block(warps * kWarp);
  const int shape = per_block * 16 + warps;
  auto pick = [&](auto k1x4, auto k4x4, auto k8x4, auto k4x2, auto k8x2, auto launch) {
    switch (shape) {
      case 1 * 16 + 4: return launch(k1x4);
      case 8 * 16 + 4: return launch(k8x4);
      case 4 * 16 + 2: return launch(k4x2);
      case 8 * 16 + 2: return launch(k8x2);
      default: return launch(k4x4);
    }
  };
  // 2-8 tokens: one block for all of them (gemv_q8_tokens_kernel, 4 or 8 wide); UMA_CUDA_GEMV_TOKENS=0: a block
  // a token.
  static_assert(kMaxDecodeSeqs <= 8, "gemv_q8_tokens_kernel holds at most 8 tokens");
  const bool tokens = gemv_tokens_ && n_tokens > 1 && xq;
  const dim3 grid_tokens{grid.x, 1};
  auto q8 = [&](const auto& k, int chunk_values) {
    const int n_chunks = int(d0.cols / chunk_values);
    if (!tokens) return launch(pdl_, grid, block, stream_, std::get<0>(k), segs, n_chunks, xq, xs, prefetch_);
    if (n_tokens <= 4)
      return launch(pdl_, grid_tokens, block, stream_, std::get<1>(k), segs, n_chunks, xq, xs, prefetch_, int(n_tokens));
    launch(pdl_, grid_tokens, block, stream_, std::get<2>(k), segs, n_chunks, xq, xs, prefetch_, int(n_tokens));
  };
  auto plain = [&](auto kernel) { launch(pdl_, grid, block, stream_, kernel, segs, d0.cols, x); };
  // A single token through bulk copies (gemv_bulk_kernel) where they pay (see bulk_config).
  if (n_tokens == 1 && launch_gemv_bulk(bulk_config(d0.type), segs, g, x, xq, xs, pair)) return;
#define UMA_Q8_SHAPE(T, R, W) std::tuple{gemv_q8_kernel<T, R, W>, gemv_q8_tokens_kernel<T, R, W, 4>, gemv_q8_tokens_kernel<T, R, W, 8>}
#define UMA_Q8(T)                                                                                          \
  return pick(UMA_Q8_SHAPE(T, 1, 4), UMA_Q8_SHAPE(T, 4, 4), UMA_Q8_SHAPE(T, 8, 4), UMA_Q8_SHAPE(T, 4, 2),    \
              UMA_Q8_SHAPE(T, 8, 2), [&](const auto& k) { q8(k, T::kChunkValues); })
#define UMA_PLAIN(T) return pick(gemv_split_kernel<T, 1, 4>, gemv_split_kernel<T, 4, 4>, \
                                 gemv_split_kernel<T, 8, 4>, gemv_split_kernel<T, 4, 2>, gemv_split_kernel<T, 8, 2>, plain)
  switch (d0.type) {
    case GgmlType::Q4_0: if (pair) UMA_Q8(MvQ4_0x2); else UMA_Q8(MvQ4_0);
    case GgmlType::Q8_0: UMA_Q8(MvQ8_0);
    case GgmlType::Q4_K: if (pair) UMA_Q8(MvQ45_Kx2<false>); else UMA_Q8(MvQ45_K<false>);
    case GgmlType::Q5_K: if (pair) UMA_Q8(MvQ45_Kx2<true>); else UMA_Q8(MvQ45_K<true>);
    case GgmlType::Q6_K: UMA_Q8(MvQ6_K);
    case GgmlType::F32: UMA_PLAIN(GemvPlain<GgmlType::F32>);
    case GgmlType::F16: UMA_PLAIN(GemvPlain<GgmlType::F16>);
    case GgmlType::BF16: UMA_PLAIN(GemvPlain<GgmlType::BF16>);
    default: fail("no GEMV kernel for {}", type_name(d0.type));
  }
#undef UMA_Q8
#undef UMA_Q8_SHAPE
#undef UMA_PLAIN
}

// Bulk-copy GEMV settings for a type: UMA_CUDA_GEMV_BULK=KB,slots,blocks,warps for every type, =0 for none;
// by default 96 KB stages in a ring of 2, one block an SM, for the int8 types (24 consumer warps for Q4_0, 16
// for the k-quants and Q8_0, whose dot products hold more registers). llama-7b tg128 on one H100, against
// the register-load kernels (tools/device/build_and_test.sh ab, AB_VALUES, two alternating rounds): Q8_0
// 266 -> 305-310 t/s, Q4_K_M 364-368 -> 379-384, Q4_0 432-442 -> 469-470; F16 180 -> 172 (so plain types keep
// gemv_split_kernel: their GEMVs already stream at 96 % of copy and the f32 dot is heavier than a dp4a).
// Smaller stages lost everywhere (32 KB x 4: Q4_0 373, Q4_K_M 296): with 96 KB stages a 4096-row Q4_0 or
// Q4_K matrix is fewer stages than there are SMs, so the whole matrix is on its way before the PDL wait.
CudaBackend::BulkConfig CudaBackend::bulk_config(GgmlType type) const {
  if (!bulk_allowed_) return {};
  if (bulk_explicit_.kb) return bulk_explicit_;
  switch (type) {
    case GgmlType::Q4_0: return {96, 2, 1, 24};
    case GgmlType::Q8_0:
    case GgmlType::Q4_K:
    case GgmlType::Q5_K:
    case GgmlType::Q6_K: return {96, 2, 1, 16};
    default: return {};
  }
}

// Launches the GEMV of segs through gemv_bulk_kernel when c allows it for these matrices (every region's rows
// whole 16-byte units on 16-byte boundaries); false: nothing launched.
template <typename Segs>
bool CudaBackend::launch_gemv_bulk(const BulkConfig& c, const Segs& segs, const GemvTargets& g, const float* x,
                                   const int8_t* xq, const float4* xs, bool pair) {
  const DeviceWeight& d0 = *g.d[0];
  const WView& v0 = d0.view;
  if (!c.kb || !(xq || x) || v0.q_row % 16 || v0.m_row % 16 || v0.d_row % 16) return false;
  for (int s = 0; s < g.n; ++s)
    for (const uint8_t* p : {g.d[s]->view.q, g.d[s]->view.m, g.d[s]->view.d})
      if (reinterpret_cast<uintptr_t>(p) % 16) return false;
  auto with = [&](auto consumers) {
    constexpr int kConsumers = decltype(consumers)::value;
    const int64_t row_total = v0.q_row + v0.m_row + v0.d_row;
    BulkShape sh{};
    sh.stage_rows = int(std::clamp<int64_t>(int64_t(c.kb) * 1024 / row_total, 1, kConsumers * kWarp));
    if (sh.stage_rows >= 8) sh.stage_rows -= sh.stage_rows % 4;  // whole 4-row work items
    sh.n_slots = c.slots;
    sh.slot_bytes = int((sh.stage_rows * row_total + 127) / 128 * 128);
    sh.parts_floats = std::max((sh.stage_rows + 3) / 4, kConsumers) * 4 + 4;
    Segs bs = segs;  // g.first counted in stages
    for (int s = 0; s < g.n; ++s)
      bs.first[s + 1] = bs.first[s] + int((g.d[s]->rows + sh.stage_rows - 1) / sh.stage_rows);
    sh.n_stages = bs.first[g.n];
    // A matrix of fewer stages than half the blocks leaves most SMs idle, and the register kernel (a row a
    // block for small matrices) is faster there: deepseek-v3-mini Q4_0, whose attention matrices are 10-25
    // stages, ran tg128 at 564-582 t/s with them in bulk, 603-620 with a stage for every SM, 674 without bulk
    // copies (one H100); llama-7b's smallest matrix is 103 stages.
    if (2 * int64_t(sh.n_stages) < int64_t(c.blocks) * sm_count_) return false;
    const size_t smem = 128 + 2 * sh.parts_floats * sizeof(float) + size_t(sh.n_slots) * sh.slot_bytes;
    const dim3 grid{unsigned(std::min(sh.n_stages, c.blocks * sm_count_))}, block{(kConsumers + 1) * kWarp};
    const int8_t* xa = xq ? xq : reinterpret_cast<const int8_t*>(x);  // plain types: f32 activations
    auto go = [&](auto kernel, int chunk_values) {
      UMA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      launch_smem(pdl_, grid, block, smem, stream_, kernel, bs, int(d0.cols / chunk_values), xa, xs, sh);
      return true;
    };
    switch (d0.type) {
      case GgmlType::Q4_0:
        if (pair) return go(gemv_bulk_kernel<MvQ4_0x2, kConsumers>, 64);
        return go(gemv_bulk_kernel<MvQ4_0, kConsumers>, 32);
      case GgmlType::Q8_0: return go(gemv_bulk_kernel<MvQ8_0, kConsumers>, 32);
      case GgmlType::Q4_K:
        if (pair) return go(gemv_bulk_kernel<MvQ45_Kx2<false>, kConsumers>, 64);
        return go(gemv_bulk_kernel<MvQ45_K<false>, kConsumers>, 32);
      case GgmlType::Q5_K:
        if (pair) return go(gemv_bulk_kernel<MvQ45_Kx2<true>, kConsumers>, 64);
        return go(gemv_bulk_kernel<MvQ45_K<true>, kConsumers>, 32);
      case GgmlType::Q6_K: return go(gemv_bulk_kernel<MvQ6_K, kConsumers>, 32);
      case GgmlType::F16: return go(gemv_bulk_kernel<MvPlain<GgmlType::F16>, kConsumers>, 8);
      case GgmlType::BF16: return go(gemv_bulk_kernel<MvPlain<GgmlType::BF16>, kConsumers>, 8);
      case GgmlType::F32: return go(gemv_bulk_kernel<MvPlain<GgmlType::F32>, kConsumers>, 4);
      default: return false;
    }
  };
  if (c.warps >= 24) return with(std::integral_constant<int, 24>{});
  if (c.warps >= 16) return with(std::integral_constant<int, 16>{});
  return with(std::integral_constant<int, 8>{});
}

// Weight rows → f16 into w16 (the prefill GEMM's operand), on `stream`.
void CudaBackend::dequant_f16(const DeviceWeight& d, __half* w16, cudaStream_t stream) {
  const int64_t m = d.rows, k = d.cols;
  const int grid = grid_for(m * (k / 32), 256);
  auto typed = [&](auto kernel) { kernel<<<grid, 256, 0, stream>>>(d.view, m, k, w16); };
  if (k % 32 != 0) {
    dequant_f16_any_kernel<<<grid_for(m * k, 256), 256, 0, stream>>>(d.view, m, k, w16);
  } else {
    switch (d.type) {
      case GgmlType::Q4_0: typed(dequant_f16_kernel<GgmlType::Q4_0>); break;
      case GgmlType::Q8_0: typed(dequant_f16_kernel<GgmlType::Q8_0>); break;
      case GgmlType::Q4_K: typed(dequant_f16_kernel<GgmlType::Q4_K>); break;
      case GgmlType::Q5_K: typed(dequant_f16_kernel<GgmlType::Q5_K>); break;
      case GgmlType::Q6_K: typed(dequant_f16_kernel<GgmlType::Q6_K>); break;
      case GgmlType::BF16: typed(dequant_f16_kernel<GgmlType::BF16>); break;
      default: typed(dequant_f16_kernel<GgmlType::F16>); break;  // F16 rows with padding: weight_value
    }
  }
  UMA_LAUNCHED("dequant_f16");
}

// Prefill products of one input: Y[t, r] = sum_k W[r, k] X[t, k] through cuBLAS. Column-major, W is a
// cols x rows matrix and X cols x n_tokens, so Y (rows x n_tokens) = W^T X. F32 weights take an f32 SGEMM
// (f32 models keep f32 accuracy); the others an f16 tensor-core GEMM with f32 accumulation, x converted to f16
// once for the group. Weights that are not F16 are dequantized into one of two buffers on a side stream one
// matrix ahead, so the next matrix's dequantization (bandwidth-bound) runs under this one's GEMM (compute-bound).
void CudaBackend::gemm_many(const float* x, int64_t n_tokens, const MatmulTarget* targets, size_t n_targets) {
  const auto& blas = cuda::cublas_api();
  const float one = 1.0f, zero = 0.0f;
  std::vector<const DeviceWeight*> ds(n_targets);
  size_t w16_bytes = 0;
  int64_t k16 = 0;
  for (size_t i = 0; i < n_targets; ++i) {
    ds[i] = &device_weight(*targets[i].w);
    const DeviceWeight& d = *ds[i];
    if (d.type == GgmlType::F32) continue;
    k16 = std::max(k16, d.cols);
    if (!(d.type == GgmlType::F16 && d.row_bytes == size_t(d.cols) * 2))
      w16_bytes = std::max(w16_bytes, size_t(d.rows) * d.cols * sizeof(__half));
  }
  auto plain_f16 = [](const DeviceWeight& d) { return d.type == GgmlType::F16 && d.row_bytes == size_t(d.cols) * 2; };
  if (w16_bytes > wf16_[0].bytes || w16_bytes > wf16_[1].bytes) {  // no queued work may hold the old buffers
    UMA_CHECK(cudaStreamSynchronize(side_));
    UMA_CHECK(cudaStreamSynchronize(stream_));
  }
  __half* w16[2] = {nullptr, nullptr};
  if (w16_bytes)
    for (int b = 0; b < 2; ++b) w16[b] = static_cast<__half*>(wf16_[b].get(w16_bytes));
  __half* x16 = nullptr;
  if (k16) {
    x16 = static_cast<__half*>(xf16_.get(size_t(n_tokens) * k16 * sizeof(__half)));
    f32_to_f16_kernel<<<grid_for(n_tokens * ds[0]->cols, 256), 256, 0, stream_>>>(x, n_tokens * ds[0]->cols, x16);
    UMA_LAUNCHED("f32_to_f16");
  }
  auto prepare = [&](size_t i) {  // dequantize target i into buffer i % 2 once its last GEMM is done
    if (i >= n_targets || ds[i]->type == GgmlType::F32 || plain_f16(*ds[i])) return;
    UMA_CHECK(cudaStreamWaitEvent(side_, gemm_done_[i % 2]));
    dequant_f16(*ds[i], w16[i % 2], side_);
    UMA_CHECK(cudaEventRecord(dequant_done_[i % 2], side_));
  };
  prepare(0);
  for (size_t i = 0; i < n_targets; ++i) {
    prepare(i + 1);
    const DeviceWeight& d = *ds[i];
    const int m = int(d.rows), n = int(n_tokens), k = int(d.cols);
    float* y = targets[i].y;
    if (d.type == GgmlType::F32) {
      check(blas.sgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, reinterpret_cast<const float*>(d.data), k,
                       x, k, &zero, y, m),
            "cublasSgemm");
    } else {
      const __half* A = reinterpret_cast<const __half*>(d.data);
      if (!plain_f16(d)) {
        UMA_CHECK(cudaStreamWaitEvent(stream_, dequant_done_[i % 2]));
        A = w16[i % 2];
      }
      if (d.cols != ds[0]->cols) fail("matmul_many: inputs of different widths ({} and {})", d.cols, ds[0]->cols);
      check(blas.gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_16F, k, x16, CUDA_R_16F, k, &zero,
                         y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmEx");
      UMA_CHECK(cudaEventRecord(gemm_done_[i % 2], stream_));
    }
    const Weight* bias = targets[i].bias;
    if (bias && *bias) {
      const float* b = reinterpret_cast<const float*>(device_weight(*bias).data);
      add_bias_kernel<<<grid_for(d.rows * n_tokens, 256), 256, 0, stream_>>>(y, b, d.rows, n_tokens);
      UMA_LAUNCHED("add_bias");
    }
  }
}

}  // namespace uma::cuda
