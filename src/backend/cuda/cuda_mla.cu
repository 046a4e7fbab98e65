// Multi-head latent attention on the device (Backend::attention_mla; MlaShape in backend.h, docs/MOE.md):
// the absorbed form over the compressed cache (latent c [kv_lora] in the K slot, rotated RoPE key [n_rot] in
// the V slot). Per step:
//   1. q_nope of every (token, head) gathered into rows, then q_lat = W_uk,h^T q_nope (expert_gemv, the head
//      as the "expert": wk_b's rows of head h start at h * kv_lora);
//   2. mla_attention_kernel: scores q_lat·c + q_rope·k_rope, online softmax, o_lat = Σ a_p c_p. All heads
//      share one cache row, so a block takes 8 heads of one token and loads each tile of 16 cache rows
//      into shared memory once for all of them; when that grid is small (decode) the context splits over
//      blocks (flash-decoding) and the parts merge in mla_combine_kernel. The context length comes from the
//      position in device memory (graph-safe).
//   3. out = W_uv,h o_lat (expert_gemv again).
#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {
namespace {

constexpr int kMlaWarps = 4;
constexpr int kHeadsPerWarp = 2;
constexpr int kMlaHeads = kMlaWarps * kHeadsPerWarp;  // heads a block
constexpr int kMlaKeys = 16;                          // cache rows a shared-memory tile
constexpr int kMaxLat = 512, kMaxRot = 64;            // DeepSeek-V2/V3: 512 + 64
constexpr int kLatPerLane = kMaxLat / kWarp, kRotPerLane = kMaxRot / kWarp;

struct MlaArgs {
  const float *C, *KR;  // cache: latent [cells, lat], rope key [cells, rot]
  const float *q_lat;   // [n, n_head, lat]
  const float *q;       // [n, n_head, nope + rot] (the rope tail)
  float* out;           // [n, n_head, lat] (n_split == 1) ...
  float* partial;       // ... or [n, n_head, n_split, lat + 2] states {max, sum, acc}
  int32_t n_head, lat, rot, nope, n_split;
  float scale;
};
static_assert(sizeof(MlaArgs) == 6 * sizeof(void*) + 6 * 4, "no padding: MlaArgs enters graph signatures");

// grid (head groups of 8, tokens, splits); each warp owns 2 heads over the split's keys, so the warps never
// merge. A tile: every warp loads whole cache rows (latent at [0, lat), rope key at [kMaxLat, +rot)).
__global__ void __launch_bounds__(kMlaWarps * kWarp) mla_attention_kernel(MlaArgs a, DeviceLayout L) {
  __shared__ float tile[kMlaKeys][kMaxLat + kMaxRot];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t t = blockIdx.y;
  const int split = blockIdx.z;
  const int64_t n_ctx = int64_t(L.pos[t]) + 1;
  const int64_t per_split = (n_ctx + a.n_split - 1) / a.n_split;
  const int64_t p0 = int64_t(split) * per_split, p1 = min(n_ctx, p0 + per_split);

  int head[kHeadsPerWarp];
  float ql[kHeadsPerWarp][kLatPerLane], qr[kHeadsPerWarp][kRotPerLane];
  float m[kHeadsPerWarp], l[kHeadsPerWarp], acc[kHeadsPerWarp][kLatPerLane];
#pragma unroll
  for (int i = 0; i < kHeadsPerWarp; ++i) {
    head[i] = blockIdx.x * kMlaHeads + warp * kHeadsPerWarp + i;
    const bool ok = head[i] < a.n_head;
    const int64_t th = t * a.n_head + (ok ? head[i] : 0);
#pragma unroll
    for (int j = 0; j < kLatPerLane; ++j) {
      const int c = lane + kWarp * j;
      ql[i][j] = ok && c < a.lat ? a.q_lat[th * a.lat + c] : 0.0f;
      acc[i][j] = 0.0f;
    }
#pragma unroll
    for (int j = 0; j < kRotPerLane; ++j) {
      const int c = lane + kWarp * j;
      qr[i][j] = ok && c < a.rot ? a.q[th * (a.nope + a.rot) + a.nope + c] : 0.0f;
    }
    m[i] = -INFINITY, l[i] = 0.0f;
  }

  for (int64_t k0 = p0; k0 < p1; k0 += kMlaKeys) {
    const int nk = p1 - k0 < kMlaKeys ? int(p1 - k0) : kMlaKeys;
    __syncthreads();  // the previous tile is consumed
    for (int k = warp; k < nk; k += kMlaWarps) {
      const int64_t c = kv_cell(L, t, k0 + k);
      for (int j = lane; j < a.lat; j += kWarp) tile[k][j] = a.C[c * a.lat + j];
      for (int j = lane; j < a.rot; j += kWarp) tile[k][kMaxLat + j] = a.KR[c * a.rot + j];
    }
    __syncthreads();
    float s[kHeadsPerWarp][kMlaKeys];
#pragma unroll
    for (int k = 0; k < kMlaKeys; ++k) {
      if (k >= nk) break;
#pragma unroll
      for (int i = 0; i < kHeadsPerWarp; ++i) {
        float d = 0;
#pragma unroll
        for (int j = 0; j < kLatPerLane; ++j)
          if (lane + kWarp * j < a.lat) d += ql[i][j] * tile[k][lane + kWarp * j];
#pragma unroll
        for (int j = 0; j < kRotPerLane; ++j)
          if (lane + kWarp * j < a.rot) d += qr[i][j] * tile[k][kMaxLat + lane + kWarp * j];
        s[i][k] = warp_sum(d) * a.scale;
      }
    }
#pragma unroll
    for (int i = 0; i < kHeadsPerWarp; ++i) {
      float mt = m[i];
#pragma unroll
      for (int k = 0; k < kMlaKeys; ++k)
        if (k < nk) mt = fmaxf(mt, s[i][k]);
      const float corr = expf(m[i] - mt);  // 0 on the first tile (m = -inf)
      l[i] *= corr;
#pragma unroll
      for (int j = 0; j < kLatPerLane; ++j) acc[i][j] *= corr;
#pragma unroll
      for (int k = 0; k < kMlaKeys; ++k) {
        if (k >= nk) break;
        const float e = expf(s[i][k] - mt);
        l[i] += e;
#pragma unroll
        for (int j = 0; j < kLatPerLane; ++j)
          if (lane + kWarp * j < a.lat) acc[i][j] += e * tile[k][lane + kWarp * j];
      }
      m[i] = mt;
    }
  }

#pragma unroll
  for (int i = 0; i < kHeadsPerWarp; ++i) {
    if (head[i] >= a.n_head) continue;
    const int64_t th = t * a.n_head + head[i];
    if (a.n_split == 1) {
      const float inv = 1.0f / l[i];
#pragma unroll
      for (int j = 0; j < kLatPerLane; ++j)
        if (lane + kWarp * j < a.lat) a.out[th * a.lat + lane + kWarp * j] = acc[i][j] * inv;
    } else {
      float* P = a.partial + (th * a.n_split + split) * (a.lat + 2);
      if (lane == 0) P[0] = m[i], P[1] = l[i];
#pragma unroll
      for (int j = 0; j < kLatPerLane; ++j)
        if (lane + kWarp * j < a.lat) P[2 + lane + kWarp * j] = acc[i][j];
    }
  }
}

// One block per (token, head): merges the splits' {max, sum, acc} states (empty splits have max -inf).
__global__ void mla_combine_kernel(const float* __restrict__ partial, int n_split, int lat, float* __restrict__ out) {
  const int64_t th = blockIdx.x;
  const float* P = partial + th * n_split * (lat + 2);
  float M = -INFINITY;
  for (int s = 0; s < n_split; ++s) M = fmaxf(M, P[s * (lat + 2)]);
  float sum = 0;
  for (int s = 0; s < n_split; ++s)
    if (P[s * (lat + 2)] != -INFINITY) sum += P[s * (lat + 2) + 1] * expf(P[s * (lat + 2)] - M);
  for (int j = threadIdx.x; j < lat; j += blockDim.x) {
    float v = 0;
    for (int s = 0; s < n_split; ++s)
      if (P[s * (lat + 2)] != -INFINITY) v += P[s * (lat + 2) + 2 + j] * expf(P[s * (lat + 2)] - M);
    out[th * lat + j] = v / sum;
  }
}

// q_nope of each (token, head) as a dense row [n * n_head, nope] (the expert GEMV's activation rows).
__global__ void gather_nope_kernel(const float* __restrict__ q, int64_t rows, int nope, int qw, float* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * nope; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = q[(i / nope) * qw + i % nope];
}

}  // namespace

void CudaBackend::attention_mla(const KvCache& kv, int layer, const float* q, const Weight& wk_b, const Weight& wv_b,
                                const BatchLayout& batch, const MlaShape& s, float* out) {
  const int64_t n = batch.n_tokens, H = s.n_head, lat = s.kv_lora, rot = s.n_rot, nope = s.head_dim_nope;
  if (kv.options().k_width != lat || kv.options().v_width != rot)
    fail("attention_mla: the cache stores {} + {} floats per token, the model needs latent {} + rope {}",
         kv.options().k_width, kv.options().v_width, lat, rot);
  if (wk_b.ne[0] != nope || wk_b.ne[1] != lat || wk_b.ne[2] != H || wv_b.ne[0] != lat ||
      wv_b.ne[1] != s.head_dim_v || wv_b.ne[2] != H)
    fail("attention_mla: '{}' / '{}' do not match the MLA shape", wk_b.name, wv_b.name);
  if (lat > kMaxLat || rot > kMaxRot)
    fail("attention_mla on CUDA supports a latent of <= {} and a RoPE key of <= {} floats (got {}, {})", kMaxLat,
         kMaxRot, lat, rot);
  q8_src_ = nullptr;
  if (n == 0) return;
  const DeviceWeight& dk = device_weight(wk_b);
  const DeviceWeight& dv = device_weight(wv_b);
  const DeviceLayout L = layout_for(kv, batch);

  // Splits (flash-decoding): a decode token has only n_head / 8 blocks, so split the keys into chunks of
  // >= 64 whenever the grid is smaller than the GPU (at most 64 splits); a recorded step sizes them for the
  // whole cache (each split takes its share of the actual context, empty ones return at once).
  int64_t max_ctx = 0;
  if (deferred_) {
    max_ctx = kv.capacity();
  } else {
    for (int64_t t = 0; t < n; ++t) max_ctx = std::max<int64_t>(max_ctx, batch.pos[t] + 1);
  }
  const int64_t groups = (H + kMlaHeads - 1) / kMlaHeads;
  int n_split = 1;
  if (n * groups < sm_count_ && max_ctx > 64) n_split = int(std::min<int64_t>(64, (max_ctx + 63) / 64));

  // Scratch: q_nope rows [n*H, nope], q_lat and o_lat [n*H, lat].
  auto up4 = [](int64_t v) { return (v + 3) / 4 * 4; };
  const int64_t rows = n * H;
  auto* fs = static_cast<float*>(mla_f_.get(size_t(up4(rows * nope) + 2 * up4(rows * lat)) * sizeof(float), deferred_));
  float *qn = fs, *q_lat = fs + up4(rows * nope), *o_lat = q_lat + up4(rows * lat);
  float* partial = nullptr;
  if (n_split > 1)
    partial = static_cast<float*>(mla_part_.get(size_t(rows) * n_split * (lat + 2) * sizeof(float), deferred_));

  submit("mla_gather", 0, [this](const float* q, int64_t rows, int64_t nope, int64_t qw, float* qn) {
    gather_nope_kernel<<<grid_for(rows * nope, 256), 256, 0, stream_>>>(q, rows, int(nope), int(qw), qn);
    UMA_LAUNCHED("mla_gather");
  }, q, rows, nope, nope + rot, qn);

  // Heads as experts: decode one pair a block, prefill 8 tokens of one head a block.
  const int tok = decode_sized(n) ? 1 : 8;
  const ExpertTiles tiles{nullptr, nullptr, nullptr, nullptr, kHeads, int32_t(H), int32_t(n)};
  const int64_t max_tiles = H * ((n + tok - 1) / tok);
  expert_gemv(dk, nullptr, lat, qn, rows, 1, tiles, max_tiles, tok, q_lat);  // q_lat [n, H, lat]

  if (kv.options().f16 || kv.options().q8) fail("latent attention (MLA) on CUDA reads an f32 cache; use --kv-type f32");
  const MlaArgs a{kv.k(layer), kv.v(layer), q_lat, q, o_lat, partial, int32_t(H), int32_t(lat), int32_t(rot),
                  int32_t(nope), n_split, s.scale};
  submit("mla_attention", 0, [this](MlaArgs a, DeviceLayout L, int64_t n) {
    const dim3 grid(unsigned((a.n_head + kMlaHeads - 1) / kMlaHeads), unsigned(n), unsigned(a.n_split));
    mla_attention_kernel<<<grid, kMlaWarps * kWarp, 0, stream_>>>(a, L);
    UMA_LAUNCHED("mla_attention");
    if (a.n_split > 1) {
      mla_combine_kernel<<<unsigned(n * a.n_head), 128, 0, stream_>>>(a.partial, a.n_split, a.lat, a.out);
      UMA_LAUNCHED("mla_combine");
    }
  }, a, L, n);

  expert_gemv(dv, nullptr, s.head_dim_v, o_lat, rows, 1, tiles, max_tiles, tok, out);  // [n, H, v]
  q8_src_ = nullptr;
}

}  // namespace uma::cuda
