// The CUDA backend: weights uploaded once into device memory, activations and the KV cache in device
// memory, every op a kernel on one stream. Decode (few tokens) multiplies with a GEMV that reads each
// weight byte once, straight from the GGUF block layout; prefill dequantizes a weight to f16 and runs a
// cuBLAS GEMM on the tensor cores (f32 weights: an f32 SGEMM, so f32 models keep f32 accuracy).
#include <cublas_v2.h>

#include "backend/cuda/cublas_api.h"
#include "backend/rope_tables.h"
#include <cuda_runtime.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/kernels.cuh"
#include "kv/kv_cache.h"
#include "quant/quant.h"
#include "uma/error.h"

namespace uma {
namespace {

using namespace uma::cuda;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in {}: {}", what, cudaGetErrorString(e));
}
void check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLAS error {} in {}", static_cast<int>(s), what);
}
#define UMA_CHECK(call) check((call), #call)
#define UMA_LAUNCHED(name) check(cudaGetLastError(), name)

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// ---- GEMV: y[r] = W[r, :] · x (+ bias). -------------------------------------------------------------------
constexpr int kGemvWarps = 4;

// Programmatic dependent launch (sm_90): a kernel launched with the attribute (launch_pdl) may start once
// every block of the kernel before it in the stream has called pdl_trigger (or exited); it must pdl_wait()
// before reading anything that kernel (or an earlier one) writes: the wait returns when the previous kernel
// has completed and its writes are visible. Without the attribute both are no-ops. The GEMVs use it to
// fetch their weights (which no kernel writes) into L2 while the previous kernel finishes.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// Activations → int8 blocks of 32 for the quantized GEMV: one warp a block, d = amax / 127, q = round(x / d),
// and d·Σq over each half block (the GEMV's weight offsets and mins need the sums). The CPU backend quantizes
// activations to 8 bits as well (Q8_0/Q8_K), so the error against an f32 reference is of the same kind.
__global__ void quantize_q8_kernel(const float* __restrict__ x, int64_t n_blocks, int8_t* __restrict__ xq,
                                   float4* __restrict__ xs) {
  pdl_trigger();  // the GEMVs after it may start prefetching their weights
  const int lane = threadIdx.x % kWarp;
  const int64_t blk = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  if (blk >= n_blocks) return;
  const float v = x[blk * 32 + lane];
  float amax = fabsf(v);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f;
  const int q = d > 0 ? __float2int_rn(v / d) : 0;
  xq[blk * 32 + lane] = int8_t(q);
  int half_sum = q;  // over the 16 lanes of this half
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) half_sum += __shfl_xor_sync(0xffffffffu, half_sum, o);
  const int other = __shfl_xor_sync(0xffffffffu, half_sum, 16);
  if (lane == 0) xs[blk] = make_float4(d, d * float(half_sum), d * float(other), 0.0f);
}

// Repacks GGUF blocks into the regions of WView (kernels.cuh): one thread a block.
__global__ void repack_kernel(SoaSplit sp, const uint8_t* __restrict__ src, size_t block_bytes, int64_t rows,
                              int64_t blocks_per_row, WView w) {
  const int64_t total = rows * blocks_per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / blocks_per_row, b = i % blocks_per_row;
    const uint8_t* blk = src + i * block_bytes;
    uint8_t* q = const_cast<uint8_t*>(w.q) + r * w.q_row + b * sp.q_len;
    for (int k = 0; k < sp.q_len; ++k) q[k] = blk[sp.q_off + k];
    if (sp.m_len) {
      uint8_t* m = const_cast<uint8_t*>(w.m) + r * w.m_row + b * sp.m_len;
      for (int k = 0; k < sp.m_len; ++k) m[k] = blk[sp.m_off + k];
    }
    if (sp.d_len) {
      uint8_t* d = const_cast<uint8_t*>(w.d) + r * w.d_row + b * sp.d_len;
      for (int k = 0; k < sp.d_len; ++k) d[k] = blk[sp.d_off + k];
    }
  }
}

// The end of every GEMV block: each warp reduces its kRows partial sums, and the block's first kRows threads add
// the warps' sums (plus the bias) and write the rows.
template <int kRows, int kWarps>
__device__ __forceinline__ void finish_rows(const float (&acc)[kRows], int64_t row0, int64_t rows, float* y,
                                            const float* bias) {
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
    y[row0 + threadIdx.x] = s + (bias ? bias[row0 + threadIdx.x] : 0.0f);
  }
}

// Quantized GEMV: a block of kWarps warps owns kRows rows; its threads stride over the row's chunks (see
// MvQ4_0 & co. in kernels.cuh), each loading a chunk's int8 activations once for all kRows rows, so every
// thread has kRows independent 16-byte weight loads in flight; the warps' sums meet in shared memory.
template <typename T, int kRows, int kWarps>
__global__ void __launch_bounds__(kWarps * kWarp)
    gemv_q8_kernel(WView w, int64_t rows, int n_chunks, const int8_t* __restrict__ xq, const float4* __restrict__ xs,
                   float* __restrict__ y, const float* __restrict__ bias, bool prefetch) {
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  float acc[kRows] = {};
  const uint8_t *q[kRows], *m[kRows], *d[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t row = row0 + r < rows ? row0 + r : rows - 1;
    q[r] = w.q + row * w.q_row, m[r] = w.m + row * w.m_row, d[r] = w.d + row * w.d_row;
  }
  // Weights into L2 before waiting for the activations (see pdl_wait): this thread's quant bytes of its rows.
  const int64_t chunk_bytes = w.q_row / n_chunks;
  if (prefetch)
    for (int i = threadIdx.x; i < n_chunks; i += kWarps * kWarp)
#pragma unroll
      for (int r = 0; r < kRows; ++r) prefetch_l2(q[r] + i * chunk_bytes);
  pdl_wait();
  pdl_trigger();
#pragma unroll 2
  for (int i = threadIdx.x; i < n_chunks; i += kWarps * kWarp) {
    typename T::X xv;
    T::load_x(xq, xs, i, xv);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] += T::dot(q[r], m[r], d[r], i, xv);
  }
  finish_rows<kRows, kWarps>(acc, row0, rows, y, bias);
}

// Plain types (f32 activations): each of kWarps * 32 threads takes
// every (kWarps * 32)-th part of kRows rows, and the warps' partial sums meet in shared memory. A block
// owns kRows rows, so a 4096-row matrix gives 1024 blocks of 4 warps (~31 warps per SM on 132 SMs) with
// kRows independent weight loads per thread in flight, while each activation load serves kRows rows.
template <typename T, int kRows, int kWarps>
__global__ void __launch_bounds__(kWarps * kWarp)
    gemv_split_kernel(const uint8_t* __restrict__ W, size_t row_bytes, int64_t rows, int64_t cols,
                      const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ bias) {
  const int64_t row0 = int64_t(blockIdx.x) * kRows;
  const int n_parts = int(cols / T::kBlockValues * T::kParts);
  float acc[kRows] = {};
  const uint8_t* wrow[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) wrow[r] = W + (row0 + r < rows ? row0 + r : rows - 1) * row_bytes;
#pragma unroll 2
  for (int i = threadIdx.x; i < n_parts; i += kWarps * kWarp) {
    const int blk = i / T::kParts;
    const int part = i % T::kParts;
    float xv[T::N];
    T::load_x(x + int64_t(blk) * T::kBlockValues, part, xv);
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] += T::dot(wrow[r] + int64_t(blk) * T::kBlockBytes, part, xv);
  }
  finish_rows<kRows, kWarps>(acc, row0, rows, y, bias);
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

// ---- element-wise and small kernels -------------------------------------------------------------------
__global__ void dequant_rows_kernel(WView w, const int32_t* ids, int64_t n, int64_t cols, float* out) {
  const int64_t i = blockIdx.y;
  const int64_t row = ids ? ids[i] : i;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x)
    out[i * cols + c] = weight_value(w, row, c);
}

// Weight rows → f16 (prefill operand).
__global__ void dequant_f16_kernel(WView w, int64_t rows, int64_t cols, __half* out) {
  const int64_t total = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    out[i] = __float2half(weight_value(w, r, c));
  }
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

__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

__global__ void swiglu_kernel(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
  }
}

// One block per row; the sum of squares in f32 with a tree reduction (the CPU sums in double).
__global__ void rms_norm_kernel(const float* x, const float* w, int64_t dim, float eps, float* out) {
  const float* xr = x + int64_t(blockIdx.x) * dim;
  float* o = out + int64_t(blockIdx.x) * dim;
  float ss = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  __shared__ float part[32];
  ss = warp_sum(ss);
  if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp] = ss;
  __syncthreads();
  if (threadIdx.x < kWarp) {
    float v = threadIdx.x < blockDim.x / kWarp ? part[threadIdx.x] : 0.0f;
    v = warp_sum(v);
    if (threadIdx.x == 0) part[0] = v;
  }
  __syncthreads();
  const float scale = rsqrtf(part[0] / float(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = (xr[i] * scale) * w[i];
}

__global__ void gather_rows_kernel(const float* src, int64_t dim, const int32_t* rows, float* dst) {
  const int64_t i = blockIdx.y;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim; c += int64_t(gridDim.x) * blockDim.x)
    dst[i * dim + c] = src[int64_t(rows[i]) * dim + c];
}

// Rotary embedding: one thread per (token, head, pair). inv_freq and the YaRN mix come precomputed from the
// host with the CPU backend's arithmetic; the angle is pos * freq in f32 as there.
__global__ void rope_kernel(float* x, int64_t n_tokens, int n_heads, int head_stride, const int32_t* pos,
                            const float* inv_freq, const float* ramp_mix, int half, bool neox, float freq_scale,
                            bool yarn, float attn_factor) {
  const int64_t total = n_tokens * n_heads * half;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int pair = int(i % half);
    const int64_t th = i / half;
    const int64_t t = th / n_heads;
    const float p = float(pos[t]);
    float theta;
    if (yarn) {
      const float interp = p * (inv_freq[pair] * freq_scale), extrap = p * inv_freq[pair];
      theta = interp * (1 - ramp_mix[pair]) + extrap * ramp_mix[pair];
    } else {
      theta = p * (inv_freq[pair] * freq_scale);
    }
    const float cs = cosf(theta) * attn_factor, sn = sinf(theta) * attn_factor;
    float* v = x + th * head_stride;
    const int a = neox ? pair : 2 * pair, b = neox ? pair + half : 2 * pair + 1;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * cs - x1 * sn;
    v[b] = x0 * sn + x1 * cs;
  }
}

// Where a token's sequence keeps position p: the cell of the paged KV cache (kv_cache.h).
struct DeviceLayout {
  const int32_t* pos;      // [n_tokens]
  const int32_t* pageoff;  // [n_tokens] offset of the token's sequence in `pages`
  const int32_t* pages;    // page lists of the batch's sequences, concatenated
};
__device__ __forceinline__ int64_t kv_cell(const DeviceLayout& L, int64_t t, int64_t p) {
  return int64_t(L.pages[L.pageoff[t] + p / KvCache::kPageSize]) * KvCache::kPageSize + p % KvCache::kPageSize;
}

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
  int kw, vw, n_head, group, hdk, hdv, n_split;
  float scale;
};
static_assert(sizeof(AttnArgs) == 5 * sizeof(void*) + 8 * 4, "no padding: AttnArgs enters graph signatures");

__global__ void __launch_bounds__(kAttnWarps * kWarp) attention_kernel(AttnArgs a, DeviceLayout L) {
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
    } else {
      a.partial[(th * a.n_split + split) * (a.hdv + 2) + 2 + j] = v;
    }
  }
  if (a.n_split > 1 && threadIdx.x == 0) {
    a.partial[(th * a.n_split + split) * (a.hdv + 2)] = M;
    a.partial[(th * a.n_split + split) * (a.hdv + 2) + 1] = Lsum;
  }
}

__global__ void attn_combine_kernel(const float* partial, int n_split, int hdv, float* out) {
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
  }
}

int grid_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 65535)); }

// A device copy of a weight, in the type the kernels read (types without a kernel become F16; the
// quantized types with a GEMV are repacked, see WView).
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

bool has_gemv(GgmlType t) {
  switch (t) {
    case GgmlType::F32: case GgmlType::F16: case GgmlType::BF16: case GgmlType::Q4_0: case GgmlType::Q8_0:
    case GgmlType::Q4_K: case GgmlType::Q5_K: case GgmlType::Q6_K: return true;
    default: return false;
  }
}

bool env_on(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  return std::strcmp(v, "0") != 0;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    UMA_CHECK(cudaSetDevice(device));
    UMA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    check(cuda::cublas_api().create(&cublas_), "cublasCreate");
    check(cuda::cublas_api().set_stream(cublas_, stream_), "cublasSetStream");
    cudaDeviceProp prop{};
    UMA_CHECK(cudaGetDeviceProperties(&prop, device));
    name_ = std::string("cuda:") + std::to_string(device) + " (" + prop.name + ")";
    UMA_CHECK(cudaEventCreateWithFlags(&step_done_, cudaEventDisableTiming));
    // UMA_CUDA_PROFILE=1: time every op with events (no graphs) and print a table when the backend dies.
    // UMA_CUDA_GRAPHS=0: run decode steps op by op instead of replaying a captured graph.
    profile_ = env_on("UMA_CUDA_PROFILE", false);
    graphs_ = env_on("UMA_CUDA_GRAPHS", true) && !profile_;
    // UMA_CUDA_PDL=0: launch the GEMVs without programmatic dependent launch (for comparison).
    pdl_ = env_on("UMA_CUDA_PDL", true) && prop.major >= 9;
    prefetch_ = env_on("UMA_CUDA_PREFETCH", true);  // =0: no L2 prefetch of the weights before pdl_wait
    sm_count_ = prop.multiProcessorCount;
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    if (profile_) print_profile();
    for (auto& g : graph_cache_) cudaGraphExecDestroy(g.exec);
    for (float* p : buffers_) cudaFree(p);
    for (auto& [host, w] : weights_) cudaFree(w.data);
    for (auto& [key, tab] : rope_tabs_) cudaFree(tab);
    if (staging_[0]) cudaFreeHost(staging_[0]);
    if (staging_[1]) cudaFreeHost(staging_[1]);
    cudaEventDestroy(step_done_);
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
    buffers_.insert(static_cast<float*>(p));
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
    flush();
    UMA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    UMA_CHECK(cudaStreamSynchronize(stream_));
    if (profile_) collect_profile();
  }

  void prepare_weight(Weight& w) override { w.device = const_cast<DeviceWeight*>(&device_weight(w)); }

  void begin_step(const BatchLayout& batch, const KvCache& kv) override;
  void end_step() override;

  void get_rows(const Weight& table, const int32_t* ids, int64_t n, float* out) override {
    q8_src_ = nullptr;
    const DeviceWeight& d = device_weight(table);
    for (int64_t i = 0; i < n; ++i)
      if (ids[i] < 0 || ids[i] >= table.rows())
        fail("token id {} is outside the vocabulary of {} tokens", ids[i], table.rows());
    const int32_t* dids = stage_ints(ids_, ids, n);
    submit("get_rows", 0, [this](const DeviceWeight* d, const int32_t* dids, int64_t n, float* out) {
      dim3 grid(grid_for(d->cols, 256), unsigned(n));
      dequant_rows_kernel<<<grid, 256, 0, stream_>>>(d->view, dids, n, d->cols, out);
      UMA_LAUNCHED("get_rows");
    }, &d, dids, n, out);
  }

  void rms_norm(const float* x, const Weight& w, int64_t n_rows, int64_t dim, float eps, float* out) override {
    q8_src_ = nullptr;
    if (w.type != GgmlType::F32) fail("norm weight '{}' must be F32, got {}", w.name, type_name(w.type));
    const float* g = reinterpret_cast<const float*>(device_weight(w).data);
    submit("rms_norm", 0, [this](const float* x, const float* g, int64_t n_rows, int64_t dim, float eps, float* out) {
      const int threads = dim >= 1024 ? 1024 : std::max(32, int((dim + 31) / 32 * 32));
      rms_norm_kernel<<<unsigned(n_rows), threads, 0, stream_>>>(x, g, dim, eps, out);
      UMA_LAUNCHED("rms_norm");
    }, x, g, n_rows, dim, eps, out);
  }

  void matmul(const Weight& w, const float* x, int64_t n_tokens, float* y, const Weight* bias) override {
    const DeviceWeight& d = device_weight(w);
    const float* b = (bias && *bias) ? reinterpret_cast<const float*>(device_weight(*bias).data) : nullptr;
    if (n_tokens <= kMaxGemvTokens) {
      const double bytes = double(d.row_bytes) * d.rows;
      if (soa_split(d.type).q_len) {
        const int8_t* xq;
        const float4* xs;
        quantize_activations(x, n_tokens, d.cols, xq, xs);
        for (int64_t t = 0; t < n_tokens; ++t)
          submit(profile_ ? profile_name("gemv", d) : "gemv", bytes,
                 [this](const DeviceWeight* d, const int8_t* xq, const float4* xs, float* y, const float* b) {
                   gemv_q8(*d, xq, xs, y, b);
                 }, &d, xq + t * d.cols, xs + t * d.cols / 32, y + t * d.rows, b);
      } else {
        for (int64_t t = 0; t < n_tokens; ++t)
          submit(profile_ ? profile_name("gemv", d) : "gemv", bytes,
                 [this](const DeviceWeight* d, const float* x, float* y, const float* b) { gemv(*d, x, y, b); }, &d,
                 x + t * d.cols, y + t * d.rows, b);
      }
      if (q8_src_ && y < q8_src_ + q8_n_ && q8_src_ < y + n_tokens * d.rows) q8_src_ = nullptr;
      return;
    }
    q8_src_ = nullptr;
    flush();  // cuBLAS and scratch growth stay out of recorded steps
    const auto op = [&] {
      gemm(d, x, n_tokens, y);
      if (b) {
        add_bias_kernel<<<grid_for(d.rows * n_tokens, 256), 256, 0, stream_>>>(y, b, d.rows, n_tokens);
        UMA_LAUNCHED("add_bias");
      }
    };
    execute(profile_ ? profile_name("gemm", d) : "gemm", 0, op);
  }

  void gather_rows(const float* src, int64_t dim, const int32_t* rows, int64_t n, float* dst) override {
    q8_src_ = nullptr;
    if (n == 0) return;
    const int32_t* drows = stage_ints(rows_, rows, n);
    submit("gather_rows", 0, [this](const float* src, int64_t dim, const int32_t* drows, int64_t n, float* dst) {
      dim3 grid(grid_for(dim, 256), unsigned(n));
      gather_rows_kernel<<<grid, 256, 0, stream_>>>(src, dim, drows, dst);
      UMA_LAUNCHED("gather_rows");
    }, src, dim, drows, n, dst);
  }

  void add(float* y, const float* x, int64_t n) override {
    q8_src_ = nullptr;
    submit("add", 0, [this](float* y, const float* x, int64_t n) {
      add_kernel<<<grid_for(n, 256), 256, 0, stream_>>>(y, x, n);
      UMA_LAUNCHED("add");
    }, y, x, n);
  }

  void swiglu(const float* gate, const float* up, int64_t n, float* out) override {
    q8_src_ = nullptr;
    submit("swiglu", 0, [this](const float* gate, const float* up, int64_t n, float* out) {
      swiglu_kernel<<<grid_for(n, 256), 256, 0, stream_>>>(gate, up, n, out);
      UMA_LAUNCHED("swiglu");
    }, gate, up, n, out);
  }

  void rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
            const RopeParams& p) override;
  void store_kv(KvCache& kv, int layer, const float* k, const float* v, const BatchLayout& batch) override;
  void attention(const KvCache& kv, int layer, const float* q, const BatchLayout& batch, const AttentionShape& s,
                 float* out) override;

 private:
  static constexpr int64_t kMaxGemvTokens = 4;

  const DeviceWeight& device_weight(const Weight& w);
  void gemv(const DeviceWeight& d, const float* x, float* y, const float* bias);
  void gemv_q8(const DeviceWeight& d, const int8_t* xq, const float4* xs, float* y, const float* bias);
  // x [n_tokens, cols] as int8 blocks (quantize_q8_kernel) in the q8_ scratch. Consecutive matmuls of the
  // same activations (q/k/v, gate/up) quantize once: every other op that writes device memory forgets it.
  void quantize_activations(const float* x, int64_t n_tokens, int64_t cols, const int8_t*& xq, const float4*& xs) {
    const int64_t n = n_tokens * cols;
    if (x != q8_src_ || n != q8_n_) {
      auto* base = static_cast<uint8_t*>(q8_.get(size_t(n) + size_t(n / 32) * sizeof(float4), deferred_));
      submit("quantize_q8", 0, [this](const float* x, int64_t n_blocks, int8_t* xq, float4* xs) {
        quantize_q8_kernel<<<unsigned((n_blocks + 7) / 8), 256, 0, stream_>>>(x, n_blocks, xq, xs);
        UMA_LAUNCHED("quantize_q8");
      }, x, n / 32, reinterpret_cast<int8_t*>(base), reinterpret_cast<float4*>(base + n));
      q8_src_ = x, q8_n_ = n;
      q8_base_ = base;
    }
    xq = reinterpret_cast<const int8_t*>(q8_base_);
    xs = reinterpret_cast<const float4*>(q8_base_ + n);
  }
  void gemm(const DeviceWeight& d, const float* x, int64_t n_tokens, float* y);
  DeviceLayout upload_layout(const KvCache& kv, const BatchLayout& batch);
  DeviceLayout layout_for(const KvCache& kv, const BatchLayout& batch);
  std::vector<int32_t> host_layout(const KvCache& kv, const BatchLayout& batch) const;
  const float* rope_table(const RopeParams& p);
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
  template <class F>
  void execute(const char* name, double bytes, F&& f) {
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
  const char* profile_name(const char* op, const DeviceWeight& d) {
    std::string key = fmt::format("{} {} {}x{}", op, type_name(d.type), d.rows, d.cols);
    return profile_names_.insert(std::move(key)).first->c_str();
  }
  void collect_profile();
  void print_profile();

  int device_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  std::mutex mutex_;
  std::unordered_set<float*> buffers_;
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
  size_t uploaded_ = 0, last_report_ = 0;
  void* staging_[2] = {nullptr, nullptr};
  cudaEvent_t staging_done_[2] = {nullptr, nullptr};
  Scratch ids_, rows_, wf16_, xf16_, partial_, repack_src_, q8_;
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
  bool graphs_ = true, profile_ = false, pdl_ = true, prefetch_ = true;
  int sm_count_ = 132;
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

void CudaBackend::collect_profile() {
  for (auto& p : pending_) {
    float ms = 0;
    UMA_CHECK(cudaEventElapsedTime(&ms, p.start, p.end));
    OpStats& s = op_stats_[p.name];
    s.calls++, s.ms += ms, s.bytes += p.bytes;
    event_pool_.push_back(p.start);
    event_pool_.push_back(p.end);
  }
  pending_.clear();
}

void CudaBackend::print_profile() {
  collect_profile();
  std::vector<std::pair<std::string, OpStats>> rows(op_stats_.begin(), op_stats_.end());
  std::sort(rows.begin(), rows.end(), [](auto& a, auto& b) { return a.second.ms > b.second.ms; });
  double total = 0;
  for (auto& r : rows) total += r.second.ms;
  std::fprintf(stderr, "\n== UMA_CUDA_PROFILE (%s): GPU time per op, events around each launch\n", name_.c_str());
  std::fprintf(stderr, "%-36s %9s %11s %9s %7s %9s\n", "op", "calls", "total ms", "avg us", "share", "GB/s");
  for (auto& [name, s] : rows)
    std::fprintf(stderr, "%-36s %9lld %11.3f %9.2f %6.1f%% %9.0f\n", name.c_str(), (long long)s.calls, s.ms,
                 1e3 * s.ms / s.calls, 100 * s.ms / total, s.bytes > 0 ? s.bytes / (s.ms * 1e6) : 0.0);
  for (auto& ev : event_pool_) cudaEventDestroy(ev);
  event_pool_.clear();
}

// Uploads through two pinned staging buffers so that reading the mmap (page faults, disk) overlaps the
// PCIe copy of the previous chunk.
void CudaBackend::copy_to_device(uint8_t* dst, const uint8_t* src, size_t n) {
  constexpr size_t kChunk = 32u << 20;
  if (!staging_[0]) {
    for (int i = 0; i < 2; ++i) {
      UMA_CHECK(cudaMallocHost(&staging_[i], kChunk));
      UMA_CHECK(cudaEventCreateWithFlags(&staging_done_[i], cudaEventDisableTiming));
    }
  }
  int which = 0;
  for (size_t off = 0; off < n; off += kChunk, which ^= 1) {
    const size_t len = std::min(kChunk, n - off);
    UMA_CHECK(cudaEventSynchronize(staging_done_[which]));
    std::memcpy(staging_[which], src + off, len);
    UMA_CHECK(cudaMemcpyAsync(dst + off, staging_[which], len, cudaMemcpyHostToDevice, stream_));
    UMA_CHECK(cudaEventRecord(staging_done_[which], stream_));
  }
  uploaded_ += n;
  // A progress line for large models (only on a terminal; every GiB).
  if (uploaded_ - last_report_ >= (1ull << 30) && isatty(2)) {
    last_report_ = uploaded_;
    std::fprintf(stderr, "\ruploading weights to %s: %.1f GiB", name_.c_str(), uploaded_ / double(1ull << 30));
    std::fflush(stderr);
  }
}

const DeviceWeight& CudaBackend::device_weight(const Weight& w) {
  if (w.device) return *static_cast<const DeviceWeight*>(w.device);
  std::lock_guard lock(mutex_);
  const WeightKey key{w.host, w.nbytes, w.type, w.cols()};
  auto it = weights_.find(key);
  if (it != weights_.end()) return it->second;
  if (!w.host) fail("weight '{}' has no data", w.name);
  DeviceWeight d{w.type, nullptr, 0, w.rows() * w.ne[2] * w.ne[3], w.cols()};
  if (!supports(w.type)) fail("the CUDA backend cannot compute with {} weights ('{}')", type_name(w.type), w.name);
  const SoaSplit sp = soa_split(w.type);
  if (sp.q_len) {
    // Upload the GGUF bytes into scratch, then repack into the regions of WView (kernels.cuh).
    const int64_t bs = traits(w.type).block_size, nb = d.cols / bs;
    d.row_bytes = row_bytes(w.type, d.cols);
    const int64_t q_row = nb * sp.q_len, m_row = nb * sp.m_len, d_row = nb * sp.d_len;
    const size_t q_bytes = size_t(q_row) * d.rows, m_bytes = size_t(m_row) * d.rows;
    const size_t total = q_bytes + m_bytes + size_t(d_row) * d.rows;
    UMA_CHECK(cudaMalloc(&d.data, total + 16));
    d.view = WView{w.type, d.data, d.data + q_bytes, d.data + q_bytes + m_bytes, q_row, m_row, d_row};
    auto* raw = static_cast<uint8_t*>(repack_src_.get(d.row_bytes * d.rows));
    copy_to_device(raw, w.host, d.row_bytes * d.rows);
    repack_kernel<<<grid_for(d.rows * nb, 256), 256, 0, stream_>>>(sp, raw, traits(w.type).type_size, d.rows, nb,
                                                                   d.view);
    UMA_LAUNCHED("repack");
  } else if (has_gemv(w.type)) {
    d.row_bytes = row_bytes(w.type, d.cols);
    UMA_CHECK(cudaMalloc(&d.data, std::max<size_t>(w.nbytes, 16)));
    copy_to_device(d.data, w.host, d.row_bytes * d.rows);
  } else {
    // No kernel reads this type: dequantize on the host and keep f16 (exact for the few-bit types' grids
    // up to f16 rounding of the scale products).
    d.type = GgmlType::F16;
    d.row_bytes = size_t(d.cols) * 2;
    std::vector<float> row(d.cols);
    std::vector<uint16_t> half(size_t(d.rows) * d.cols);
    const size_t src_stride = row_bytes(w.type, d.cols);
    for (int64_t r = 0; r < d.rows; ++r) {
      dequantize_row(w.type, w.host + r * src_stride, row.data(), d.cols);
      for (int64_t c = 0; c < d.cols; ++c) half[r * d.cols + c] = fp32_to_fp16(row[c]);
    }
    UMA_CHECK(cudaMalloc(&d.data, std::max<size_t>(half.size() * 2, 16)));
    copy_to_device(d.data, reinterpret_cast<const uint8_t*>(half.data()), half.size() * 2);
  }
  if (!sp.q_len) d.view = WView{d.type, d.data, d.data, d.data, int64_t(d.row_bytes), 0, 0};
  UMA_CHECK(cudaStreamSynchronize(stream_));
  return weights_.emplace(key, d).first->second;
}

// Plain types: f32 activations.
void CudaBackend::gemv(const DeviceWeight& d, const float* x, float* y, const float* bias) {
  const int64_t rows = d.rows, cols = d.cols;
  const bool plain_ok = (d.type == GgmlType::F32 ? cols % 4 : cols % 8) == 0;
  // 4 rows a block when that still gives >= 4 blocks per SM, else 1 (small projections: GQA k/v).
  const bool wide = rows >= 4 * 4 * sm_count_;
  auto go = [&](auto k4, auto k1) {
    if (wide) k4<<<unsigned((rows + 3) / 4), kGemvWarps * kWarp, 0, stream_>>>(d.data, d.row_bytes, rows, cols, x, y, bias);
    else k1<<<unsigned(rows), kGemvWarps * kWarp, 0, stream_>>>(d.data, d.row_bytes, rows, cols, x, y, bias);
    UMA_LAUNCHED("gemv");
  };
#define UMA_GEMV(T) return go(gemv_split_kernel<T, 4, kGemvWarps>, gemv_split_kernel<T, 1, kGemvWarps>)
  switch (d.type) {
    case GgmlType::F32: if (plain_ok) UMA_GEMV(GemvPlain<GgmlType::F32>); break;
    case GgmlType::F16: if (plain_ok) UMA_GEMV(GemvPlain<GgmlType::F16>); break;
    case GgmlType::BF16: if (plain_ok) UMA_GEMV(GemvPlain<GgmlType::BF16>); break;
    default: break;
  }
#undef UMA_GEMV
  gemv_generic_kernel<<<unsigned((rows + 3) / 4), 128, 0, stream_>>>(d.view, rows, cols, x, y, bias);
  UMA_LAUNCHED("gemv_generic");
}

// Repacked quantized types: int8 activations (xq, xs from quantize_q8_kernel).
void CudaBackend::gemv_q8(const DeviceWeight& d, const int8_t* xq, const float4* xs, float* y, const float* bias) {
  const int64_t rows = d.rows;
  const int n_chunks = int(d.cols / 32);  // every type's chunk covers 32 values (see kernels.cuh)
  const bool wide = rows >= 4 * 4 * sm_count_;
  auto go = [&](auto k4, auto k1) {
    cudaLaunchConfig_t cfg{};
    cfg.blockDim = dim3(kGemvWarps * kWarp);
    cfg.stream = stream_;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl_ ? 1 : 0;
    if (wide) {
      cfg.gridDim = dim3(unsigned((rows + 3) / 4));
      UMA_CHECK(cudaLaunchKernelEx(&cfg, k4, d.view, rows, n_chunks, xq, xs, y, bias, prefetch_));
    } else {
      cfg.gridDim = dim3(unsigned(rows));
      UMA_CHECK(cudaLaunchKernelEx(&cfg, k1, d.view, rows, n_chunks, xq, xs, y, bias, prefetch_));
    }
  };
#define UMA_GEMV(T) return go(gemv_q8_kernel<T, 4, kGemvWarps>, gemv_q8_kernel<T, 1, kGemvWarps>)
  switch (d.type) {
    case GgmlType::Q4_0: UMA_GEMV(MvQ4_0);
    case GgmlType::Q8_0: UMA_GEMV(MvQ8_0);
    case GgmlType::Q4_K: UMA_GEMV(MvQ45_K<false>);
    case GgmlType::Q5_K: UMA_GEMV(MvQ45_K<true>);
    case GgmlType::Q6_K: UMA_GEMV(MvQ6_K);
    default: fail("no int8 GEMV for {}", type_name(d.type));
  }
#undef UMA_GEMV
}

// Y[t, r] = sum_k W[r, k] X[t, k]. Column-major, W is a cols x rows matrix and X cols x n_tokens, so
// Y (rows x n_tokens) = W^T X.
void CudaBackend::gemm(const DeviceWeight& d, const float* x, int64_t n_tokens, float* y) {
  const int m = int(d.rows), n = int(n_tokens), k = int(d.cols);
  const float one = 1.0f, zero = 0.0f;
  if (d.type == GgmlType::F32) {
    check(cuda::cublas_api().sgemm(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, reinterpret_cast<const float*>(d.data), k,
                      x, k, &zero, y, m),
          "cublasSgemm");
    return;
  }
  const __half* A;
  if (d.type == GgmlType::F16 && d.row_bytes == size_t(k) * 2) {
    A = reinterpret_cast<const __half*>(d.data);
  } else {
    auto* w16 = static_cast<__half*>(wf16_.get(size_t(m) * k * sizeof(__half)));
    dequant_f16_kernel<<<grid_for(int64_t(m) * k, 256), 256, 0, stream_>>>(d.view, m, k, w16);
    UMA_LAUNCHED("dequant_f16");
    A = w16;
  }
  auto* x16 = static_cast<__half*>(xf16_.get(size_t(n) * k * sizeof(__half)));
  f32_to_f16_kernel<<<grid_for(int64_t(n) * k, 256), 256, 0, stream_>>>(x, int64_t(n) * k, x16);
  UMA_LAUNCHED("f32_to_f16");
  check(cuda::cublas_api().gemm_ex(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &one, A, CUDA_R_16F, k, x16, CUDA_R_16F, k, &zero, y,
                     CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        "cublasGemmEx");
}

// Positions and page tables of a batch: [pos (n) | page-list offset per token (n) | page lists].
std::vector<int32_t> CudaBackend::host_layout(const KvCache& kv, const BatchLayout& batch) const {
  const int64_t n = batch.n_tokens;
  std::vector<int32_t> host(2 * n);
  std::unordered_map<int32_t, int32_t> seq_off;
  for (int64_t t = 0; t < n; ++t) {
    host[t] = batch.pos[t];
    if (int64_t(kv.pages(batch.seq[t]).size()) * KvCache::kPageSize <= batch.pos[t])
      fail("KV cache: position {} of sequence {} has no cell; reserve() it first", batch.pos[t], batch.seq[t]);
    auto [it, inserted] = seq_off.try_emplace(batch.seq[t], 0);
    if (inserted) {
      it->second = int32_t(host.size());
      const auto& pages = kv.pages(batch.seq[t]);
      host.insert(host.end(), pages.begin(), pages.end());
    }
    host[n + t] = it->second - int32_t(2 * n);
  }
  return host;
}

// Outside a step: uploaded when it changes (every layer of a forward sees the same layout).
DeviceLayout CudaBackend::upload_layout(const KvCache& kv, const BatchLayout& batch) {
  const int64_t n = batch.n_tokens;
  std::vector<int32_t> host = host_layout(kv, batch);
  if (host != layout_host_ || !layout_dev_.p) {
    auto* p = static_cast<int32_t*>(layout_dev_.get(host.size() * sizeof(int32_t)));
    UMA_CHECK(cudaMemcpyAsync(p, host.data(), host.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    layout_host_ = std::move(host);
    layout_ = DeviceLayout{p, p + n, p + 2 * n};
  }
  return layout_;
}

DeviceLayout CudaBackend::layout_for(const KvCache& kv, const BatchLayout& batch) {
  if (in_step_ && &kv == step_kv_ && batch.pos == step_pos_host_ && batch.n_tokens == step_tokens_)
    return step_layout_;
  flush();  // an op outside the step's layout: stop recording
  return upload_layout(kv, batch);
}

// A forward step: the layout goes up once into a buffer whose address stays put (sized for the whole
// cache, so a growing context never moves it); decode steps (<= 4 tokens) are recorded for end_step.
void CudaBackend::begin_step(const BatchLayout& batch, const KvCache& kv) {
  flush();
  repack_src_.release(stream_);  // weights are loaded by the first step
  if (step_pending_) UMA_CHECK(cudaEventSynchronize(step_done_));  // the pinned buffers are free again
  step_pending_ = false;
  const int64_t n = batch.n_tokens;
  std::vector<int32_t> host = host_layout(kv, batch);
  const size_t want = std::max(host.size(), size_t(2 * n + kv.capacity() / KvCache::kPageSize + 1));
  step_layout_buf_.reserve(want, stream_);
  std::memcpy(step_layout_buf_.host, host.data(), host.size() * sizeof(int32_t));
  UMA_CHECK(cudaMemcpyAsync(step_layout_buf_.dev, step_layout_buf_.host, host.size() * sizeof(int32_t),
                            cudaMemcpyHostToDevice, stream_));
  int32_t* p = step_layout_buf_.dev;
  step_layout_ = DeviceLayout{p, p + n, p + 2 * n};
  step_kv_ = &kv;
  step_pos_host_ = batch.pos;
  step_tokens_ = n;
  in_step_ = true;
  n_staged_ = 0;
  sig_.clear();
  ops_.clear();
  deferred_ = graphs_ && n <= kMaxGemvTokens;
}

void CudaBackend::end_step() {
  if (!in_step_) return;
  in_step_ = false;
  if (deferred_) {
    deferred_ = false;
    ++steps_;
    CachedGraph* g = nullptr;
    for (auto& c : graph_cache_)
      if (c.sig == sig_) g = &c;
    if (!g) {
      // Capture the recorded ops (thread-local mode: other threads' CUDA calls are not affected).
      cudaGraph_t graph = nullptr;
      UMA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        for (auto& op : ops_) op();
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        ops_.clear();
        throw;
      }
      UMA_CHECK(cudaStreamEndCapture(stream_, &graph));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      UMA_CHECK(e);
      constexpr size_t kMaxGraphs = 4;  // decode at 1..4 tokens, say; the least recently used goes
      if (graph_cache_.size() == kMaxGraphs) {
        auto lru = std::min_element(graph_cache_.begin(), graph_cache_.end(),
                                    [](auto& a, auto& b) { return a.used < b.used; });
        UMA_CHECK(cudaStreamSynchronize(stream_));
        cudaGraphExecDestroy(lru->exec);
        graph_cache_.erase(lru);
      }
      graph_cache_.push_back({sig_, exec, steps_});
      g = &graph_cache_.back();
      ++graph_captures_;
    } else {
      ++graph_replays_;
    }
    g->used = steps_;
    UMA_CHECK(cudaGraphLaunch(g->exec, stream_));
    ops_.clear();
  }
  UMA_CHECK(cudaEventRecord(step_done_, stream_));
  step_pending_ = true;
}

const float* CudaBackend::rope_table(const RopeParams& p) {
  const int half = p.n_rot / 2;
  auto same = [&](const RopeParams& q) {
    return q.n_rot == p.n_rot && q.freq_base == p.freq_base && q.neox == p.neox &&
           q.freq_factors == p.freq_factors && q.freq_bf16 == p.freq_bf16 && q.ext_factor == p.ext_factor &&
           q.beta_fast == p.beta_fast && q.beta_slow == p.beta_slow && q.n_ctx_orig == p.n_ctx_orig;
  };
  for (auto& [q, tab] : rope_tabs_)
    if (same(q)) return tab;
  // inv_freq and the YaRN ramp as the CPU backend computes them; one table per parameter set, kept, so
  // that a recorded step never sees a table rewritten under it.
  const RopeTables tables = rope_tables(p);
  std::vector<float> t(2 * half, 0.0f);
  std::copy(tables.inv_freq.begin(), tables.inv_freq.end(), t.begin());
  std::copy(tables.ramp_mix.begin(), tables.ramp_mix.end(), t.begin() + half);
  float* tab = nullptr;
  UMA_CHECK(cudaMalloc(&tab, t.size() * sizeof(float)));
  UMA_CHECK(cudaMemcpy(tab, t.data(), t.size() * sizeof(float), cudaMemcpyHostToDevice));
  rope_tabs_.emplace_back(p, tab);
  return tab;
}

void CudaBackend::rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
                       const RopeParams& p) {
  q8_src_ = nullptr;
  const int half = p.n_rot / 2;
  if (half == 0 || n_tokens == 0) return;
  const float* tab = rope_table(p);
  const int32_t* pos;
  if (in_step_ && batch.pos == step_pos_host_ && n_tokens == step_tokens_) {
    pos = step_layout_.pos;
  } else {
    flush();
    if (rope_pos_host_.size() != size_t(n_tokens) || !rope_pos_.p ||
        !std::equal(rope_pos_host_.begin(), rope_pos_host_.end(), batch.pos)) {
      rope_pos_host_.assign(batch.pos, batch.pos + n_tokens);
      auto* d = static_cast<int32_t*>(rope_pos_.get(n_tokens * sizeof(int32_t)));
      UMA_CHECK(cudaMemcpyAsync(d, batch.pos, n_tokens * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    }
    pos = static_cast<const int32_t*>(rope_pos_.p);
  }
  submit("rope", 0, [this](float* x, int64_t n_tokens, int n_heads, int head_stride, const int32_t* pos,
                           const float* tab, int half, bool neox, float freq_scale, bool yarn, float attn_factor) {
    rope_kernel<<<grid_for(n_tokens * n_heads * half, 256), 256, 0, stream_>>>(
        x, n_tokens, n_heads, head_stride, pos, tab, tab + half, half, neox, freq_scale, yarn, attn_factor);
    UMA_LAUNCHED("rope");
  }, x, n_tokens, n_heads, head_stride, pos, tab, half, p.neox, p.freq_scale, p.ext_factor > 0, p.attn_factor);
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
  AttnArgs a{kv.k(layer), kv.v(layer), q, out, nullptr, kv.options().k_width, kv.options().v_width, s.n_head,
             s.n_head / s.n_head_kv, s.head_dim_k, s.head_dim_v, n_split, s.scale};
  if (n_split > 1)
    a.partial = static_cast<float*>(
        partial_.get(size_t(blocks) * n_split * (s.head_dim_v + 2) * sizeof(float), deferred_));
  submit("attention", 0, [this](AttnArgs a, DeviceLayout L, int64_t n_tokens) {
    dim3 grid(unsigned(a.n_head), unsigned(n_tokens), unsigned(a.n_split));
    attention_kernel<<<grid, kAttnWarps * kWarp, 0, stream_>>>(a, L);
    UMA_LAUNCHED("attention");
    if (a.n_split > 1) {
      attn_combine_kernel<<<unsigned(n_tokens * a.n_head), 128, 0, stream_>>>(a.partial, a.n_split, a.hdv, a.out);
      UMA_LAUNCHED("attn_combine");
    }
  }, a, L, batch.n_tokens);
}

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

size_t cuda_free_bytes(int device) {
  if (cudaSetDevice(device) != cudaSuccess) return 0;
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
  return free_b;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int n = cuda_device_count();
  if (device < 0 || device >= n) fail("CUDA device {} does not exist ({} found)", device, n);
  return std::make_unique<CudaBackend>(device);
}

}  // namespace uma
