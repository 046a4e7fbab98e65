// Device helpers shared by the decode GEMVs of cuda_matmul.cu (register loads) and cuda_gemv_bulk.cu (bulk
// copies): which segment of a merged launch a unit computes, and the 1 / RMS of a pending parallel norm.
#pragma once
#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {

// The segment that unit `index` (a block, or a bulk stage) of g.first belongs to.
__device__ __forceinline__ int segment_of(const GemvSegs& g, int index) {
  int s = 0;
#pragma unroll
  for (int i = 1; i < kMaxGemvSegs; ++i)
    if (i < g.n && index >= g.first[i]) s = i;
  return s;
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

}  // namespace uma::cuda
