// Small device and host helpers shared by the CUDA backend's translation units.
#pragma once
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include "uma/error.h"

namespace uma::cuda {

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in {}: {}", what, cudaGetErrorString(e));
}
inline void check(cublasStatus_t s, const char* what) {
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

// 1 / RMS of a row from the sums of squares of its 32-value blocks (rms_norm_parts_kernel), computed by a
// whole warp in a fixed order, so that every warp of every kernel that reads the same parts gets the same bits.
__device__ __forceinline__ float rms_scale_from_parts(const float* parts, int n_parts, int dim, float eps) {
  float s = 0;
  for (int i = threadIdx.x % 32; i < n_parts; i += 32) s += __ldcg(parts + i);
  return rsqrtf(warp_sum(s) / float(dim) + eps);
}


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

// One warp quantizes the 32 values it holds (value `v` in lane `lane`) into an int8 block for the decode
// GEMVs: d = amax / 127, q = round(v / d) (ties to even), plus d·Σq over each half block (the GEMVs' weight
// offsets and mins need the sums). Every lane of the warp must call it.
__device__ __forceinline__ void quantize_warp_block(float v, int lane, int8_t* xq, float4* xs) {
  float amax = fabsf(v);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float d = amax / 127.0f;
  const int q = d > 0 ? __float2int_rn(v / d) : 0;
  xq[lane] = int8_t(q);
  int half_sum = q;  // over the 16 lanes of this half
#pragma unroll
  for (int o = 8; o > 0; o >>= 1) half_sum += __shfl_xor_sync(0xffffffffu, half_sum, o);
  const int other = __shfl_xor_sync(0xffffffffu, half_sum, 16);
  if (lane == 0) *xs = make_float4(d, d * float(half_sum), d * float(other), 0.0f);
}

// KV cache cells, f32 or f16 (KvCacheOptions::f16), written as floats; kv_get4 reads four consecutive values
// from a 16-byte (f32) or 8-byte (f16) aligned address. The kernels address cells through KvCells (below).
__device__ __forceinline__ void kv_put(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void kv_put(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ float4 kv_get4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 kv_get4(const __half* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&u.x));
  const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}

// A layer's KV cells as the kernels address them, value i of the layer (cell c, column j: i = c * width + j):
// KV = float or __half (KvCacheOptions::f16) in p; KV = int8_t (KvCacheOptions::q8): the int8 values in p and
// one f16 scale per 32 of them in d (after the values in the same buffer: kv_cells).
template <typename KV>
struct KvCells {
  KV* p;
  __half* d;
};
__device__ __forceinline__ float kv_load(const KvCells<float>& c, int64_t i) { return c.p[i]; }
__device__ __forceinline__ float kv_load(const KvCells<__half>& c, int64_t i) { return __half2float(c.p[i]); }
__device__ __forceinline__ float kv_load(const KvCells<int8_t>& c, int64_t i) {
  return float(c.p[i]) * __half2float(c.d[i / 32]);
}
// Four values from i, a multiple of 4 (rows aligned for four values).
__device__ __forceinline__ float4 kv_load4(const KvCells<float>& c, int64_t i) { return kv_get4(c.p + i); }
__device__ __forceinline__ float4 kv_load4(const KvCells<__half>& c, int64_t i) { return kv_get4(c.p + i); }
__device__ __forceinline__ float4 kv_load4(const KvCells<int8_t>& c, int64_t i) {
  const char4 q = *reinterpret_cast<const char4*>(c.p + i);
  const float d = __half2float(c.d[i / 32]);  // the four share a block
  return make_float4(d * float(q.x), d * float(q.y), d * float(q.z), d * float(q.w));
}
// 16 bytes of values from i (16-byte aligned): 4 floats, 8 halves, or 16 8-bit values (of one block).
template <typename KV>
constexpr int kKvPer16 = 16 / int(sizeof(KV));
__device__ __forceinline__ void kv_load16(const KvCells<float>& c, int64_t i, float (&v)[4]) {
  const float4 f = *reinterpret_cast<const float4*>(c.p + i);
  v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
}
__device__ __forceinline__ void kv_load16(const KvCells<__half>& c, int64_t i, float (&v)[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(c.p + i);
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[k]));
    v[2 * k] = f.x, v[2 * k + 1] = f.y;
  }
}
__device__ __forceinline__ void kv_load16(const KvCells<int8_t>& c, int64_t i, float (&v)[16]) {
  const int4 u = *reinterpret_cast<const int4*>(c.p + i);
  const float d = __half2float(c.d[i / 32]);
  const int w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const char4 q = *reinterpret_cast<const char4*>(&w[k]);
    v[4 * k] = d * float(q.x), v[4 * k + 1] = d * float(q.y), v[4 * k + 2] = d * float(q.z), v[4 * k + 3] = d * float(q.w);
  }
}

// Stores v at i, called by all 32 lanes of a warp together: for 8-bit cells the lanes hold the 32 values of
// one block (i = block * 32 + lane), which they quantize together (d = amax / 127 rounded to f16, then the
// values on that d, clamped); lanes with `valid` false add nothing and store nothing (a whole warp past the
// row's end).
template <typename KV>
__device__ __forceinline__ void kv_store_warp(const KvCells<KV>& c, int64_t i, float v, int lane, bool valid) {
  if constexpr (std::is_same_v<KV, int8_t>) {
    float amax = valid ? fabsf(v) : 0.0f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const __half dh = __float2half_rn(amax / 127.0f);
    const float d = __half2float(dh);
    if (!valid) return;
    c.p[i] = int8_t(d > 0 ? max(-127, min(127, __float2int_rn(v / d))) : 0);
    if (lane == 0) c.d[i / 32] = dh;
  } else {
    if (valid) kv_put(c.p, i, v);
  }
}

// Launches `kernel` on `stream`, with programmatic dependent launch when `pdl` (see pdl_wait): the kernel may
// start while the previous one finishes, so it must pdl_wait() before reading what earlier kernels wrote.
// launch_smem: with `smem` bytes of dynamic shared memory.
template <typename... KernelArgs, typename... Args>
inline void launch_smem(bool pdl, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                        void (*kernel)(KernelArgs...), Args&&... args) {
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), "cudaLaunchKernelEx");
}
template <typename... KernelArgs, typename... Args>
inline void launch(bool pdl, dim3 grid, dim3 block, cudaStream_t stream, void (*kernel)(KernelArgs...),
                   Args&&... args) {
  launch_smem(pdl, grid, block, 0, stream, kernel, std::forward<Args>(args)...);
}

inline int grid_for(int64_t n, int threads) { return int(std::min<int64_t>((n + threads - 1) / threads, 65535)); }
inline bool env_on(const char* name, bool dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  return std::strcmp(v, "0") != 0;
}

}  // namespace uma::cuda
