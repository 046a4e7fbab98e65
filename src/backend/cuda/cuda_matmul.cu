// Matrix products: the decode GEMVs (int8 activations for the repacked quantized types, f32 for plain types)
// and the prefill GEMM through cuBLAS.
#include <tuple>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cublas_api.h"
#include "backend/cuda/gemv_common.cuh"

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

// ---- Decode GEMV: y = W x for up to kMaxGemvSegs matrices of the same type and input in one launch
// (GemvSegs: cuda_backend.h; segment_of: gemv_common.cuh); grid.y is the token.
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
