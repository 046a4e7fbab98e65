// Matrix products: the decode GEMVs (int8 activations for the repacked quantized types, f32 for plain types)
// and the prefill GEMM through cuBLAS.
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cublas_api.h"

namespace uma::cuda {
namespace {

constexpr int kGemvWarps = 4;

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

}  // namespace

void CudaBackend::matmul(const Weight& w, const float* x, int64_t n_tokens, float* y, const Weight* bias) {
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

void CudaBackend::quantize_activations(const float* x, int64_t n_tokens, int64_t cols, const int8_t*& xq, const float4*& xs) {
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


}  // namespace uma::cuda
