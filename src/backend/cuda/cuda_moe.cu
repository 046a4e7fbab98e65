// Mixture-of-experts feed-forward on the device (Backend::moe_ffn; docs/MOE.md, docs/CUDA.md), and the
// expert GEMV it shares with latent attention (cuda_mla.cu).
//
// One MoE block, with no host round trip (a decode step stays one CUDA graph):
//   1. router logits [n, n_expert]: the ordinary matmul;
//   2. moe_route_kernel: per token, softmax or sigmoid, selection bias, group limit, top-k, weights
//      -> ids [n, k], weights [n, k] in device memory;
//   3. decode (decode_sized: up to 4 tokens, 8 of distinct sequences): one block per (token, slot) pair reads its expert id from ids (kDirect);
//      prefill: moe_group_kernel sorts the pairs by expert on the device and cuts each expert's pairs into
//      tiles of 8 (kGrouped), so a block streams its expert's rows once for up to 8 tokens;
//   4. expert_gemv (gate and up fused: h = silu(gate x) * up x), expert_gemv (down) -> y [n, k, n_embd];
//   5. moe_combine_kernel: out[t] = Σ_k w[t, k] y[t, k] in routing order (best expert first, as the CPU).
// Only the selected experts' rows are read. The grid of steps 3-4 is sized for the worst case known on the
// host (n * k pairs, or the tile bound); blocks past the device's tile count return at once.
#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {
namespace {

constexpr int kWarps = 4;       // warps a block of the expert GEMV
constexpr int kRows = 2;        // rows a warp (each lane: kRows independent weight streams per matrix)
constexpr int kPrefillTok = 8;  // pairs a tile when grouped (each weight chunk is used 8 times)
constexpr int kMaxTopK = 16;

// Activations of an expert GEMV: f32 rows (plain weights) or their int8 blocks (quantized weights).
struct Act {
  const float* x;     // [rows, cols]
  const int8_t* xq;   // [rows, cols]
  const float4* xs;   // [rows, cols / 32]
  int64_t cols;
};
static_assert(sizeof(Act) == 32, "no padding: Act enters graph signatures");

// CudaBackend::ExpertTiles as the kernels see it (the class keeps its own private).
struct Tiles {
  const int32_t *ids, *list, *order, *n_tiles;
  int32_t mode, heads, n_pairs, unused;
};

// The dot pieces of kernels.cuh behind one interface: a row is cut into chunks, lane i of a warp takes
// chunks i, i + 32, ...; load() fetches a chunk's activations once for all the rows a lane owns.
template <class T>  // MvQ4_0, MvQ8_0, MvQ45_K, MvQ6_K on int8 activations: chunks of 32 values
struct Int8Dot {
  using X = typename T::X;
  struct Row {
    const uint8_t *q, *m, *d;
  };
  __device__ static Row row(const WView& w, int64_t r) { return {w.q + r * w.q_row, w.m + r * w.m_row, w.d + r * w.d_row}; }
  __device__ static int chunks(int64_t cols) { return int(cols / 32); }
  __device__ static void load(const Act& a, int64_t ar, int i, X& x) {
    T::load_x(a.xq + ar * a.cols, a.xs + ar * (a.cols / 32), i, x);
  }
  __device__ static float dot(const Row& r, int i, const X& x) { return T::dot(r.q, r.m, r.d, i, x); }
};

template <GgmlType kType>  // F32/F16/BF16 rows on f32 activations: chunks of 16 weight bytes
struct PlainDot {
  using P = GemvPlain<kType>;
  struct X {
    float v[P::N];
  };
  struct Row {
    const uint8_t* p;
  };
  __device__ static Row row(const WView& w, int64_t r) { return {w.q + r * w.q_row}; }
  __device__ static int chunks(int64_t cols) { return int(cols / P::N); }
  __device__ static void load(const Act& a, int64_t ar, int i, X& x) { P::load_x(a.x + ar * a.cols + int64_t(i) * P::N, 0, x.v); }
  __device__ static float dot(const Row& r, int i, const X& x) { return P::dot(r.p + int64_t(i) * 16, 0, x.v); }
};

struct AnyDot {  // any width, f32 activations, through weight_value (plain rows whose width is not a multiple of 16 bytes)
  struct X {
    const float* x;
    int64_t cols;
  };
  struct Row {
    WView w;
    int64_t r;
  };
  __device__ static Row row(const WView& w, int64_t r) { return {w, r}; }
  __device__ static int chunks(int64_t cols) { return int((cols + 31) / 32); }
  __device__ static void load(const Act& a, int64_t ar, int, X& x) { x = {a.x + ar * a.cols, a.cols}; }
  __device__ static float dot(const Row& r, int i, const X& x) {
    float s = 0;
    for (int64_t c = int64_t(i) * 32; c < min(x.cols, int64_t(i) * 32 + 32); ++c) s += weight_value(r.w, r.r, c) * x.x[c];
    return s;
  }
};

// The expert and pairs of tile `tile` (see ExpertTiles); returns how many pairs (0: nothing to do).
template <int kTok>
__device__ __forceinline__ int resolve_tile(const Tiles& t, int tile, int& expert, int (&pair)[kTok]) {
  if (t.mode == 0) {  // kDirect
    if (tile >= t.n_pairs) return 0;
    expert = t.ids[tile];
    pair[0] = tile;
    return 1;
  }
  if (t.mode == 1) {  // kGrouped
    if (tile >= *t.n_tiles) return 0;
    expert = t.list[3 * tile];
    const int first = t.list[3 * tile + 1], n = t.list[3 * tile + 2];
#pragma unroll
    for (int j = 0; j < kTok; ++j) pair[j] = j < n ? t.order[first + j] : 0;
    return n;
  }
  // kHeads: pairs (token c * kTok + j, head h), expert = head.
  expert = tile % t.heads;
  const int c = tile / t.heads;
  int n = 0;
#pragma unroll
  for (int j = 0; j < kTok; ++j) {
    const int tok = c * kTok + j;
    pair[j] = tok * t.heads + expert;
    n += tok < t.n_pairs;
  }
  return n;
}

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// grid (tiles, row blocks): a warp owns kRows rows of its tile's expert (and the same rows of `up`), its
// lanes stride over the row's chunks; every chunk's weights are loaded once and used for each of the tile's
// pairs. Tiles vary fastest in the grid, so blocks running together read the same rows of one expert
// (L2 hits when an expert has several tiles).
template <class D, int kTok, bool kUp>
__global__ void __launch_bounds__(kWarps * kWarp)
    expert_gemv_kernel(WView w, WView u, int64_t rows, Act act, int act_div, Tiles tiles, float* __restrict__ y) {
  int expert = 0, pair[kTok];
  const int n = resolve_tile<kTok>(tiles, blockIdx.x, expert, pair);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row0 = (int64_t(blockIdx.y) * kWarps + warp) * kRows;
  if (n == 0 || row0 >= rows) return;  // whole warps leave: no block-wide barrier below
  typename D::Row rw[kRows], ru[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t er = int64_t(expert) * rows + min(row0 + r, rows - 1);
    rw[r] = D::row(w, er);
    if constexpr (kUp) ru[r] = D::row(u, er);
  }
  float acc[kTok][kRows] = {}, acc_u[kTok][kRows] = {};
  const int nc = D::chunks(act.cols);
  for (int i = lane; i < nc; i += kWarp) {
#pragma unroll
    for (int j = 0; j < kTok; ++j) {
      if (j >= n) break;
      typename D::X x;
      D::load(act, pair[j] / act_div, i, x);
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        acc[j][r] += D::dot(rw[r], i, x);
        if constexpr (kUp) acc_u[j][r] += D::dot(ru[r], i, x);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kTok; ++j) {
    if (j >= n) break;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float s = warp_sum(acc[j][r]);
      float v = s;
      if constexpr (kUp) v = silu(s) * warp_sum(acc_u[j][r]);
      if (lane == 0 && row0 + r < rows) y[int64_t(pair[j]) * rows + row0 + r] = v;
    }
  }
}

struct RouteArgs {
  int32_t n_expert, k, sigmoid, norm, n_group, n_group_used;
  float scale;
  int32_t unused;
};

// One warp per token: probabilities (softmax or sigmoid), selection scores (+ bias), group limit, top-k
// (ties: the lower index, as the CPU's top_k), weights (unbiased probabilities, renormalised, scaled).
// Shared memory: prob[n_expert], choice[n_expert], taken[n_expert] bytes.
__global__ void moe_route_kernel(const float* __restrict__ logits, const float* __restrict__ bias, RouteArgs a,
                                 int32_t* __restrict__ ids, float* __restrict__ wts) {
  extern __shared__ float sh[];
  const int E = a.n_expert, lane = threadIdx.x;
  const int64_t t = blockIdx.x;
  float* prob = sh;
  float* choice = sh + E;
  uint8_t* taken = reinterpret_cast<uint8_t*>(sh + 2 * E);
  __shared__ float group_score[kWarp];
  __shared__ int32_t sel[kMaxTopK];
  const float* l = logits + t * E;
  if (a.sigmoid) {
    for (int e = lane; e < E; e += kWarp) prob[e] = 1.0f / (1.0f + expf(-l[e]));
  } else {
    float mx = -INFINITY;
    for (int e = lane; e < E; e += kWarp) mx = fmaxf(mx, l[e]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0;
    for (int e = lane; e < E; e += kWarp) sum += prob[e] = expf(l[e] - mx);
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += kWarp) prob[e] /= sum;
  }
  for (int e = lane; e < E; e += kWarp) {
    choice[e] = prob[e] + (bias ? bias[e] : 0.0f);
    taken[e] = 0;
  }
  __syncwarp();
  if (a.n_group > 1 && a.n_group_used < a.n_group) {
    // A group scores the sum of its two best choices; keep the n_group_used best groups (ties: lower index).
    const int per = E / a.n_group;
    if (lane < a.n_group) {
      float b0 = -INFINITY, b1 = -INFINITY;
      for (int e = lane * per; e < (lane + 1) * per; ++e) {
        const float v = choice[e];
        if (v > b0) b1 = b0, b0 = v;
        else if (v > b1) b1 = v;
      }
      group_score[lane] = per >= 2 ? b0 + b1 : b0;
    }
    __syncwarp();
    bool keep = false;
    if (lane < a.n_group) {
      int rank = 0;
      for (int g = 0; g < a.n_group; ++g)
        rank += group_score[g] > group_score[lane] || (group_score[g] == group_score[lane] && g < lane);
      keep = rank < a.n_group_used;
    }
    const uint32_t kept = __ballot_sync(0xffffffffu, keep);
    for (int e = lane; e < E; e += kWarp)
      if (!((kept >> (e / per)) & 1u)) choice[e] = -INFINITY;
    __syncwarp();
  }
  for (int k = 0; k < a.k; ++k) {
    float bv = -INFINITY;
    int bi = INT32_MAX;
    for (int e = lane; e < E; e += kWarp)
      if (!taken[e] && (choice[e] > bv || (choice[e] == bv && e < bi))) bv = choice[e], bi = e;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) {
      taken[bi] = 1;
      sel[k] = bi;
    }
    __syncwarp();
  }
  if (lane == 0) {
    double sum = 0;
    for (int k = 0; k < a.k; ++k) sum += prob[sel[k]];
    for (int k = 0; k < a.k; ++k) {
      float w = prob[sel[k]];
      if (a.norm) w = float(w / sum);
      ids[t * a.k + k] = sel[k];
      wts[t * a.k + k] = w * a.scale;
    }
  }
}

// Counting sort of the (token, slot) pairs by expert, and the tiles of up to kTok pairs of one expert.
// One block; shared memory: count[n_expert], cursor[n_expert]. Pairs of an expert land in any order:
// each pair's result does not depend on its tile.
__global__ void moe_group_kernel(const int32_t* __restrict__ ids, int n_pairs, int n_expert, int k_tok,
                                 int32_t* __restrict__ order, int32_t* __restrict__ list, int32_t* __restrict__ n_tiles) {
  extern __shared__ int32_t cnt[];
  int32_t* cursor = cnt + n_expert;
  for (int e = threadIdx.x; e < n_expert; e += blockDim.x) cnt[e] = 0;
  __syncthreads();
  for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) atomicAdd(&cnt[ids[p]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int off = 0, nt = 0;
    for (int e = 0; e < n_expert; ++e) {
      cursor[e] = off;
      for (int b = 0; b < cnt[e]; b += k_tok, ++nt) {
        list[3 * nt] = e;
        list[3 * nt + 1] = off + b;
        list[3 * nt + 2] = min(k_tok, cnt[e] - b);
      }
      off += cnt[e];
    }
    *n_tiles = nt;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < n_pairs; p += blockDim.x) order[atomicAdd(&cursor[ids[p]], 1)] = p;
}

// out[t, i] = Σ_k w[t, k] y[t, k, i], slot 0 first (the CPU's order).
__global__ void moe_combine_kernel(const float* __restrict__ y, const float* __restrict__ wts, int64_t n, int k,
                                   int64_t dim, float* __restrict__ out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n * dim; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / dim, c = i % dim;
    const float* yt = y + t * k * dim + c;
    float o = yt[0] * wts[t * k];
    for (int s = 1; s < k; ++s) o += yt[s * dim] * wts[t * k + s];
    out[i] = o;
  }
}

template <class D, int kTok>
void launch_expert_gemv(cudaStream_t st, const DeviceWeight* w, const DeviceWeight* up, int64_t rows, Act act,
                        int act_div, const Tiles& t, int64_t max_tiles, float* y) {
  const dim3 grid(unsigned(max_tiles), unsigned((rows + kWarps * kRows - 1) / (kWarps * kRows)));
  if (up) expert_gemv_kernel<D, kTok, true><<<grid, kWarps * kWarp, 0, st>>>(w->view, up->view, rows, act, act_div, t, y);
  else expert_gemv_kernel<D, kTok, false><<<grid, kWarps * kWarp, 0, st>>>(w->view, w->view, rows, act, act_div, t, y);
  UMA_LAUNCHED("expert_gemv");
}

template <class D>
void launch_expert_gemv_tok(cudaStream_t st, int tok, const DeviceWeight* w, const DeviceWeight* up, int64_t rows, Act act,
                        int act_div, const Tiles& t, int64_t max_tiles, float* y) {
  if (tok == 1) launch_expert_gemv<D, 1>(st, w, up, rows, act, act_div, t, max_tiles, y);
  else launch_expert_gemv<D, kPrefillTok>(st, w, up, rows, act, act_div, t, max_tiles, y);
}

}  // namespace

void CudaBackend::expert_gemv(const DeviceWeight& w, const DeviceWeight* up, int64_t rows, const float* x,
                              int64_t act_rows, int act_div, const ExpertTiles& tiles, int64_t max_tiles,
                              int tok_per_tile, float* y) {
  if (up && (up->type != w.type || up->cols != w.cols || up->rows != w.rows))
    fail("expert_gemv: the fused pair needs two weights of one type and shape");
  if (max_tiles <= 0 || rows <= 0) return;
  if (max_tiles > INT32_MAX || (rows + kWarps * kRows - 1) / (kWarps * kRows) > 65535)
    fail("expert GEMV of {} rows over {} tiles is too large for one launch", rows, max_tiles);
  Act act{x, nullptr, nullptr, w.cols};
  const bool int8 = soa_split(w.type).q_len != 0;
  if (int8) quantize_activations(x, act_rows, w.cols, act.xq, act.xs);
  submit("expert_gemv", 0, [this](const DeviceWeight* w, const DeviceWeight* up, int64_t rows, Act act, int act_div,
                                  ExpertTiles t, int64_t max_tiles, int tok, float* y) {
    auto go = [&](auto dot) {
      launch_expert_gemv_tok<decltype(dot)>(stream_, tok, w, up, rows, act, act_div,
                                            Tiles{t.ids, t.list, t.order, t.n_tiles, t.mode, t.heads, t.n_pairs, 0},
                                            max_tiles, y);
    };
    const int64_t cols = w->cols;
    switch (w->type) {
      case GgmlType::Q4_0: return go(Int8Dot<MvQ4_0>{});
      case GgmlType::Q8_0: return go(Int8Dot<MvQ8_0>{});
      case GgmlType::Q4_K: return go(Int8Dot<MvQ45_K<false>>{});
      case GgmlType::Q5_K: return go(Int8Dot<MvQ45_K<true>>{});
      case GgmlType::Q6_K: return go(Int8Dot<MvQ6_K>{});
      case GgmlType::F32: if (cols % 4 == 0) return go(PlainDot<GgmlType::F32>{}); break;
      case GgmlType::F16: if (cols % 8 == 0) return go(PlainDot<GgmlType::F16>{}); break;
      case GgmlType::BF16: if (cols % 8 == 0) return go(PlainDot<GgmlType::BF16>{}); break;
      default: break;
    }
    go(AnyDot{});
  }, &w, up, rows, act, act_div, tiles, max_tiles, tok_per_tile, y);
}

void CudaBackend::moe_ffn(const MoeWeights& w, const MoeParams& p, const float* x, int64_t n, float* out) {
  const int64_t E = w.router->ne[0], F = w.gate->ne[1], K = p.n_expert_used, NE = p.n_expert;
  if (w.router->ne[1] != NE || w.gate->ne[2] != NE || w.up->ne[2] != NE || w.down->ne[2] != NE || K <= 0 || K > NE)
    fail("moe_ffn: router '{}' / experts '{}' do not match {} experts, top {}", w.router->name, w.gate->name, NE, K);
  if (w.gate->ne[0] != E || w.up->ne[0] != E || w.up->ne[1] != F || w.down->ne[0] != F || w.down->ne[1] != E)
    fail("moe_ffn: expert tensors '{}' / '{}' / '{}' have inconsistent shapes", w.gate->name, w.up->name, w.down->name);
  if (K > kMaxTopK || NE > 4096 || (p.n_group > 1 && (NE % p.n_group || p.n_group > kWarp)))
    fail("moe_ffn on CUDA supports top-k <= {}, <= 4096 experts and <= 32 groups that divide them (got {}, {}, {})",
         kMaxTopK, K, NE, p.n_group);
  if (n == 0) return;
  const float* bias = nullptr;
  if (w.select_bias && *w.select_bias) {
    if (w.select_bias->type != GgmlType::F32 || w.select_bias->ne[0] != NE)
      fail("moe_ffn: selection bias '{}' must be F32 [{}]", w.select_bias->name, NE);
    bias = reinterpret_cast<const float*>(device_weight(*w.select_bias).data);
  }
  const DeviceWeight& dg = device_weight(*w.gate);
  const DeviceWeight& du = device_weight(*w.up);
  const DeviceWeight& dd = device_weight(*w.down);
  const int64_t pairs = n * K;
  const bool decode = decode_sized(n);
  const int tok = decode ? 1 : kPrefillTok;
  const int64_t max_tiles = decode ? pairs : std::min(pairs, pairs / tok + std::min(NE, pairs));
  const bool fused = dg.type == du.type;

  // Scratch, 16-byte aligned pieces. floats: logits [n, NE], weights [n, K], h [n, K, F], y [n, K, E]
  // (+ gate and up [n, K, F] each when the two types differ). ints: ids, order [n, K], n_tiles, tiles.
  auto up4 = [](int64_t v) { return (v + 3) / 4 * 4; };
  const int64_t o_w = up4(n * NE), o_h = o_w + up4(pairs), o_y = o_h + up4(pairs * F), o_g = o_y + up4(pairs * E);
  const int64_t n_f = o_g + (fused ? 0 : 2 * up4(pairs * F));
  auto* fs = static_cast<float*>(moe_f_.get(size_t(n_f) * sizeof(float), deferred_));
  auto* is = static_cast<int32_t*>(moe_i_.get(size_t(2 * up4(pairs) + 4 + 3 * max_tiles) * sizeof(int32_t), deferred_));
  float *logits = fs, *wts = fs + o_w, *h = fs + o_h, *y = fs + o_y;
  int32_t *ids = is, *order = is + up4(pairs), *n_tiles = is + 2 * up4(pairs), *list = n_tiles + 4;

  matmul(*w.router, x, n, logits, nullptr);  // [n, NE]
  const RouteArgs ra{int32_t(NE), int32_t(K), p.gating == MoeGating::sigmoid, p.norm_weights, p.n_group,
                     p.n_group_used, p.weights_scale, 0};
  submit("moe_route", 0, [this](const float* logits, const float* bias, RouteArgs ra, int32_t* ids, float* wts, int64_t n) {
    const size_t shm = size_t(ra.n_expert) * (2 * sizeof(float) + 1);
    moe_route_kernel<<<unsigned(n), kWarp, shm, stream_>>>(logits, bias, ra, ids, wts);
    UMA_LAUNCHED("moe_route");
  }, logits, bias, ra, ids, wts, n);

  ExpertTiles tiles{ids, list, order, n_tiles, kDirect, 0, int32_t(pairs)};
  if (!decode) {
    tiles.mode = kGrouped;
    submit("moe_group", 0, [this](const int32_t* ids, int64_t pairs, int64_t ne, int tok, int32_t* order, int32_t* list,
                                  int32_t* n_tiles) {
      moe_group_kernel<<<1, 1024, size_t(2 * ne) * sizeof(int32_t), stream_>>>(ids, int(pairs), int(ne), tok, order,
                                                                                list, n_tiles);
      UMA_LAUNCHED("moe_group");
    }, ids, pairs, NE, tok, order, list, n_tiles);
  }

  // Experts: h = silu(gate x) * up x per pair, then y = down h.
  if (fused) {
    expert_gemv(dg, &du, F, x, n, int(K), tiles, max_tiles, tok, h);
  } else {
    float *g = fs + o_g, *u = g + up4(pairs * F);
    expert_gemv(dg, nullptr, F, x, n, int(K), tiles, max_tiles, tok, g);
    expert_gemv(du, nullptr, F, x, n, int(K), tiles, max_tiles, tok, u);
    swiglu(g, u, pairs * F, h);
  }
  expert_gemv(dd, nullptr, E, h, pairs, 1, tiles, max_tiles, tok, y);
  submit("moe_combine", 0, [this](const float* y, const float* wts, int64_t n, int64_t k, int64_t e, float* out) {
    moe_combine_kernel<<<grid_for(n * e, 256), 256, 0, stream_>>>(y, wts, n, int(k), e, out);
    UMA_LAUNCHED("moe_combine");
  }, y, wts, n, K, E, out);
  q8_src_ = nullptr;  // out was written (the int8 scratch holds h now anyway)
}

}  // namespace uma::cuda
