// Sampling next to the logits (Backend::top_k_row): the penalties, then the k best of the row by repeated
// slice reduction, so that k (id, logit) pairs come back instead of n_vocab floats (128k for Llama-3); and
// the row's mass for chains without top-k (Backend::row_mass, Sampler::sample_head). The
// order and the arithmetic are the host reference's (sampling/top_k.h), so the sampler then draws the token
// the host path would have drawn.
#include <cstring>

#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {
namespace {

// A block sorts a slice of 2048 keys in shared memory: 16 KB (sm_75 allows 48 KB without opting in), one
// compare-exchange pair per thread of a 1024-thread block. Each slice keeps its first k <= kSlice / 8 keys, so
// a pass shrinks the keys at least 8-fold: 128256 logits -> 63 slices -> at most 16128 keys -> 8 -> 1.
constexpr int kSlice = 2048;
constexpr int kSliceThreads = kSlice / 2;
static_assert(CudaBackend::kMaxTopK <= kSlice / 8, "a pass must shrink the keys");

// Ranks after every real key: pads a short last slice.
constexpr uint64_t kPadKey = ~uint64_t(0);

// rank_key and key_candidate (sampling/top_k.h): 64-bit keys whose ascending order is the sampler's order.

// sampling/top_k.cpp's penalized_logit, operation for operation; the _rn intrinsics keep nvcc from fusing
// the multiplies and adds into FMAs that the host does not use. The ids are distinct: no two threads write the
// same logit.
__global__ void penalize_kernel(float* logits, int64_t n_cols, const int32_t* ids, const int32_t* counts, int64_t n,
                                float repeat, float frequency, float presence) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t token = ids[i];
    if (token < 0 || token >= n_cols) continue;  // e.g. a control token outside the logits row
    float l = logits[token];
    if (repeat != 1.0f) l = l > 0.0f ? __fdiv_rn(l, repeat) : __fmul_rn(l, repeat);
    if (frequency != 0.0f || presence != 0.0f)
      l = __fsub_rn(l, __fadd_rn(__fmul_rn(__int2float_rn(counts[i]), frequency), presence));
    logits[token] = l;
  }
}

// One block per slice of kSlice keys of the n inputs (built from the logits on the first pass, else read from
// `keys`): a bitonic sort in shared memory, then the slice's first k keys to out[slice * k, +k).
__global__ void __launch_bounds__(kSliceThreads)
    top_k_slices_kernel(const float* logits, const uint64_t* keys, int64_t n, int k, uint64_t* out) {
  __shared__ uint64_t s[kSlice];
  const int64_t base = int64_t(blockIdx.x) * kSlice;
  for (int i = threadIdx.x; i < kSlice; i += blockDim.x) {
    const int64_t j = base + i;
    s[i] = j >= n ? kPadKey : logits ? rank_key(logits[j], int32_t(j)) : keys[j];
  }
  // Merges of sorted runs of `size`, ascending where bit `size` of the index is clear; the last is all of it.
  const int t = threadIdx.x;
  for (int size = 2; size <= kSlice; size <<= 1)
    for (int stride = size / 2; stride > 0; stride >>= 1) {
      __syncthreads();
      const int i = 2 * t - (t & (stride - 1)), j = i + stride;
      const uint64_t a = s[i], b = s[j];
      if ((a > b) == ((i & size) == 0)) s[i] = b, s[j] = a;
    }
  __syncthreads();
  for (int i = t; i < k; i += blockDim.x) out[int64_t(blockIdx.x) * k + i] = s[i];
}

// The row's mass (RowMass, sampling/top_k.h) in one block: each thread sums a strided share in double, then
// the warps' sums meet in shared memory in a fixed order. Two doubles come back instead of the row.
constexpr int kMassThreads = 1024;
__global__ void __launch_bounds__(kMassThreads)
    row_mass_kernel(const float* logits, int64_t n, float max_logit, double inv_t, double* out) {
  double s1 = 0, st = 0;
  for (int64_t i = threadIdx.x; i < n; i += kMassThreads) {
    const float l = logits[i];
    s1 += row_mass_term(l, max_logit, inv_t, false);
    st += row_mass_term(l, max_logit, inv_t, true);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) s1 += __shfl_xor_sync(0xffffffffu, s1, o), st += __shfl_xor_sync(0xffffffffu, st, o);
  __shared__ double w1[kMassThreads / kWarp], wt[kMassThreads / kWarp];
  if (threadIdx.x % kWarp == 0) w1[threadIdx.x / kWarp] = s1, wt[threadIdx.x / kWarp] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    double a = 0, b = 0;
    for (int w = 0; w < kMassThreads / kWarp; ++w) a += w1[w], b += wt[w];
    out[0] = a, out[1] = b;
  }
}

}  // namespace

RowMass CudaBackend::row_mass(const float* logits, int64_t n_cols, float max_logit, double inv_t) {
  flush();
  auto* d = static_cast<double*>(mass_.get(2 * sizeof(double)));
  row_mass_kernel<<<1, kMassThreads, 0, stream_>>>(logits, n_cols, max_logit, inv_t, d);
  UMA_LAUNCHED("row_mass");
  double h[2];
  UMA_CHECK(cudaMemcpyAsync(h, d, sizeof h, cudaMemcpyDeviceToHost, stream_));
  UMA_CHECK(cudaStreamSynchronize(stream_));
  return {h[0], h[1]};
}

void CudaBackend::top_k_row(float* logits, int64_t n_cols, int k, const LogitPenalties& pen, TokenLogit* out) {
  if (k < 1 || k > kMaxTopK || k > n_cols || n_cols > INT32_MAX) {
    Backend::top_k_row(logits, n_cols, k, pen, out);  // checks k, serves the large ones
    return;
  }
  flush();
  if (pen.active()) {
    // ids then counts, one upload.
    topk_pen_host_.assign(pen.ids, pen.ids + pen.n);
    topk_pen_host_.insert(topk_pen_host_.end(), pen.counts, pen.counts + pen.n);
    const int32_t* d = stage_ints(topk_pen_, topk_pen_host_.data(), 2 * pen.n);
    penalize_kernel<<<grid_for(pen.n, 256), 256, 0, stream_>>>(logits, n_cols, d, d + pen.n, pen.n, pen.repeat,
                                                                pen.frequency, pen.presence);
    UMA_LAUNCHED("penalize");
  }
  // Ping-pong between two halves: each pass's output is no larger than the first's.
  const int64_t first_out = (n_cols + kSlice - 1) / kSlice * k;
  auto* keys = static_cast<uint64_t*>(topk_keys_.get(size_t(2 * first_out) * sizeof(uint64_t)));
  const float* src_logits = logits;
  const uint64_t* src = nullptr;
  uint64_t* dst = keys;
  for (int64_t n = n_cols;;) {
    const int64_t slices = (n + kSlice - 1) / kSlice;
    top_k_slices_kernel<<<unsigned(slices), kSliceThreads, 0, stream_>>>(src_logits, src, n, k, dst);
    UMA_LAUNCHED("top_k_slices");
    if (slices == 1) break;
    n = slices * k;
    src_logits = nullptr;
    src = dst;
    dst = dst == keys ? keys + first_out : keys;
  }
  topk_keys_host_.resize(size_t(k));
  UMA_CHECK(cudaMemcpyAsync(topk_keys_host_.data(), dst, size_t(k) * sizeof(uint64_t), cudaMemcpyDeviceToHost,
                            stream_));
  UMA_CHECK(cudaStreamSynchronize(stream_));
  for (int i = 0; i < k; ++i) out[i] = key_candidate(topk_keys_host_[size_t(i)]);
}

}  // namespace uma::cuda
