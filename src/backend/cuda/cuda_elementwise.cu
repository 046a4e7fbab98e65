// Element-wise and row ops: embedding rows, RMSNorm, add, SwiGLU, row gathers, RoPE, greedy argmax.
#include <climits>

#include "backend/cuda/cuda_backend.h"
#include "backend/rope_tables.h"

namespace uma::cuda {
namespace {
__global__ void dequant_rows_kernel(WView w, const int32_t* ids, int64_t n, int64_t cols, float* out) {
  const int64_t i = blockIdx.y;
  const int64_t row = ids ? ids[i] : i;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < cols; c += int64_t(gridDim.x) * blockDim.x)
    out[i * cols + c] = weight_value(w, row, c);
}


__global__ void add_kernel(float* y, const float* x, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}

// out = silu(gate) * up. With xq (n a multiple of 32): each warp also writes its 32 values as an int8 block
// for the down projection's GEMV (no separate quantize launch).
__global__ void swiglu_kernel(const float* gate, const float* up, int64_t n, float* out, int8_t* xq, float4* xs) {
  pdl_trigger();
  pdl_wait();
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    const float v = g / (1.0f + expf(-g)) * up[i];
    out[i] = v;
    if (xq) quantize_warp_block(v, threadIdx.x % kWarp, xq + (i & ~int64_t(31)), xs + i / 32);
  }
}

// One block per row; the sum of squares in f32 with a tree reduction (the CPU sums in double). With y, the
// residual add first (x += y, written back). With xq (dim a multiple of 32): the int8 blocks of the output as
// well, each warp quantizing whole 32-value blocks.
__global__ void rms_norm_kernel(float* x, const float* y, const float* w, int64_t dim, float eps, float* out,
                                int8_t* xq, float4* xs) {
  pdl_trigger();
  pdl_wait();
  const int64_t row = blockIdx.x;
  float* xr = x + row * dim;
  float* o = out + row * dim;
  float ss = 0;
  if (y) {
    const float* yr = y + row * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
      const float v = xr[i] + yr[i];
      xr[i] = v;
      ss += v * v;
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  }
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
  if (xq) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
    for (int64_t b = warp; b < dim / 32; b += n_warps) {
      const int64_t i = b * 32 + lane;
      const float v = (xr[i] * scale) * w[i];
      o[i] = v;
      quantize_warp_block(v, lane, xq + row * dim + b * 32, xs + row * (dim / 32) + b);
    }
  } else {
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = (xr[i] * scale) * w[i];
  }
}

// The decode RMSNorm with int8 output (dim a multiple of 32, at most 32 · kNormPer blocks of 32 a warp):
// each warp owns whole 32-value blocks (warp, warp + n_warps, ..) from the load to the quantization, so the
// row stays in registers between the sum of squares and the output, and the norm weight is loaded before
// the wait for the kernel that wrote x and y. Same arithmetic as rms_norm_kernel.
constexpr int kNormPer = 8;
__global__ void __launch_bounds__(1024) rms_norm_q8_kernel(float* x, const float* y, const float* w, int64_t dim,
                                                           float eps, float* out, int8_t* xq, float4* xs) {
  pdl_trigger();
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, n_warps = blockDim.x / kWarp;
  const int n_blk = int(dim / 32);
  const int64_t row = blockIdx.x;
  float wv[kNormPer], v[kNormPer];
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int b = warp + k * n_warps;
    wv[k] = b < n_blk ? w[b * 32 + lane] : 0.0f;
  }
  pdl_wait();
  float* xr = x + row * dim;
  float ss = 0;
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int b = warp + k * n_warps;
    v[k] = 0;
    if (b < n_blk) {
      float val = xr[b * 32 + lane];
      if (y) {
        val += y[row * dim + b * 32 + lane];
        xr[b * 32 + lane] = val;
      }
      v[k] = val;
      ss += val * val;
    }
  }
  __shared__ float part[32];
  ss = warp_sum(ss);
  if (lane == 0) part[warp] = ss;
  __syncthreads();
  if (warp == 0) {
    float t = lane < n_warps ? part[lane] : 0.0f;
    t = warp_sum(t);
    if (lane == 0) part[0] = t;
  }
  __syncthreads();
  const float scale = rsqrtf(part[0] / float(dim) + eps);
#pragma unroll
  for (int k = 0; k < kNormPer; ++k) {
    const int b = warp + k * n_warps;  // the same for the whole warp: quantize_warp_block needs every lane
    if (b < n_blk) {
      const float o = (v[k] * scale) * wv[k];
      out[row * dim + b * 32 + lane] = o;
      quantize_warp_block(o, lane, xq + row * dim + b * 32, xs + row * n_blk + b);
    }
  }
}

// The decode RMSNorm in its parallel form (RmsIn): a warp per 32-value block, no reduction across the row.
// The int8 quants of a block of x ⊙ w do not depend on the row's RMS, only the block scale does, so each
// warp writes x += y, out = x ⊙ w, its int8 block and its block's sum of squares (parts); the GEMV that
// reads the int8 blocks sums the parts and scales its outputs (and out) by 1 / RMS. The single-block norm
// it replaces cost ~5 µs of dependent latency twice a layer; this one is as short as SwiGLU's.
__global__ void rms_norm_parts_kernel(float* x, const float* y, const float* w, int64_t dim, float* out,
                                      int8_t* xq, float4* xs, float* parts) {
  pdl_trigger();
  const int lane = threadIdx.x % kWarp;
  const int64_t n_blk = dim / 32, b = int64_t(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp;
  const int64_t row = blockIdx.y;
  if (b >= n_blk) return;
  const int64_t i = row * dim + b * 32 + lane;
  const float wv = w[b * 32 + lane];
  pdl_wait();
  float v = x[i];
  if (y) {
    v += y[i];
    x[i] = v;
  }
  const float o = v * wv;
  out[i] = o;
  quantize_warp_block(o, lane, xq + row * dim + b * 32, xs + row * n_blk + b);
  const float ss = warp_sum(v * v);
  if (lane == 0) parts[row * n_blk + b] = ss;
}

// A pending parallel norm whose output is read by something other than an int8 GEMV: out and the int8
// block scales times 1 / RMS, as rms_norm_q8_kernel would have left them. One block per row.
__global__ void rms_settle_kernel(const float* parts, int64_t dim, float eps, float* out, float4* xs) {
  const int64_t row = blockIdx.x, n_blk = dim / 32;
  const float scale = rms_scale_from_parts(parts + row * n_blk, int(n_blk), int(dim), eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) out[row * dim + i] *= scale;
  for (int64_t b = threadIdx.x; xs && b < n_blk; b += blockDim.x) {
    float4& s = xs[row * n_blk + b];
    s = make_float4(s.x * scale, s.y * scale, s.z * scale, 0.0f);
  }
}

// Greedy decoding: one block per row; each thread keeps the best (value, index) of its strided share, warp
// shuffles and shared memory then pick the block's. Larger value wins; among equal values the lower index.
__device__ __forceinline__ void keep_better(float& v, int& i, float v2, int i2) {
  if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

__global__ void argmax_rows_kernel(const float* x, int64_t n_cols, int32_t* out) {
  const float* row = x + int64_t(blockIdx.x) * n_cols;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  float best = -INFINITY;
  int idx = INT_MAX;
  for (int64_t c = threadIdx.x; c < n_cols; c += blockDim.x) keep_better(best, idx, row[c], int(c));
  __shared__ float part_v[32];
  __shared__ int part_i[32];
  for (int pass = 0; pass < 2; ++pass) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1)
      keep_better(best, idx, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, idx, o));
    if (pass == 1) break;
    if (lane == 0) part_v[warp] = best, part_i[warp] = idx;
    __syncthreads();
    if (warp != 0) return;
    const bool has = lane < int(blockDim.x / kWarp);
    best = has ? part_v[lane] : -INFINITY;
    idx = has ? part_i[lane] : INT_MAX;
  }
  if (lane == 0) out[blockIdx.x] = idx == INT_MAX ? 0 : idx;  // a row of NaNs: 0
}

__global__ void gather_rows_kernel(const float* src, int64_t dim, const int32_t* rows, float* dst) {
  const int64_t i = blockIdx.y;
  for (int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; c < dim; c += int64_t(gridDim.x) * blockDim.x)
    dst[i * dim + c] = src[int64_t(rows[i]) * dim + c];
}

// Rotary embedding of one pair of a head (RopeArgs: cuda_backend.h); the angle is pos * freq in f32 as on the
// CPU.
__device__ __forceinline__ void rope_pair(float* v, int pair, float p, const RopeArgs& r) {
  float theta;
  if (r.yarn) {
    const float interp = p * (r.inv_freq[pair] * r.freq_scale), extrap = p * r.inv_freq[pair];
    theta = interp * (1 - r.ramp_mix[pair]) + extrap * r.ramp_mix[pair];
  } else {
    theta = p * (r.inv_freq[pair] * r.freq_scale);
  }
  const float cs = cosf(theta) * r.attn_factor, sn = sinf(theta) * r.attn_factor;
  const int a = r.neox ? pair : 2 * pair, b = r.neox ? pair + r.half : 2 * pair + 1;
  const float x0 = v[a], x1 = v[b];
  v[a] = x0 * cs - x1 * sn;
  v[b] = x0 * sn + x1 * cs;
}

// One thread per (token, head, pair).
__global__ void rope_kernel(float* x, int64_t n_tokens, int n_heads, int head_stride, const int32_t* pos,
                            RopeArgs r) {
  const int64_t total = n_tokens * n_heads * r.half;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t th = i / r.half;
    rope_pair(x + th * head_stride, int(i % r.half), float(pos[th / n_heads]), r);
  }
}

// RoPE on q and k, then k and v into the cache: one block per (kv head, token) rotates the kv head's
// query heads and its key head in place, then stores the key and value head in the token's cache cell.
template <typename KV>
__global__ void rope_store_kv_kernel(float* q, float* k, const float* v, KvCells<KV> K, KvCells<KV> V, int n_head,
                                     int n_head_kv, int hd, int hdv, RopeArgs r, DeviceLayout L) {
  pdl_trigger();
  pdl_wait();
  const int hk = blockIdx.x, group = n_head / n_head_kv;
  const int64_t t = blockIdx.y;
  const float p = float(L.pos[t]);
  float* kh = k + (t * n_head_kv + hk) * hd;
  for (int i = threadIdx.x; i < (group + 1) * r.half; i += blockDim.x) {
    const int h = i / r.half;
    rope_pair(h < group ? q + (t * n_head + hk * group + h) * hd : kh, i % r.half, p, r);
  }
  __syncthreads();  // the rotated key is read by other threads below
  const int64_t c = kv_cell(L, t, L.pos[t]);
  const float* vh = v + (t * n_head_kv + hk) * hdv;
  // 8-bit cells: head dims are whole 32-value blocks (rope_store_kv), so each warp stores one block at a time.
  const int lane = threadIdx.x % kWarp;
  for (int j = threadIdx.x; j < hd + hdv; j += blockDim.x) {
    if (j < hd) kv_store_warp(K, (c * n_head_kv + hk) * hd + j, kh[j], lane, true);
    else kv_store_warp(V, (c * n_head_kv + hk) * hdv + j - hd, vh[j - hd], lane, true);
  }
}

}  // namespace

void CudaBackend::get_rows(const Weight& table, const int32_t* ids, int64_t n, float* out) {
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

void CudaBackend::rms_norm(const float* x, const Weight& w, int64_t n_rows, int64_t dim, float eps, float* out) {
  norm_op(const_cast<float*>(x), nullptr, w, n_rows, dim, eps, out);
}

void CudaBackend::add_rms_norm(float* x, const float* y, const Weight& w, int64_t n_rows, int64_t dim, float eps,
                               float* out) {
  if (!fuse_) return Backend::add_rms_norm(x, y, w, n_rows, dim, eps, out);
  norm_op(x, y, w, n_rows, dim, eps, out);
}

// RMSNorm (after x += y when y is given); in a decode step also the int8 blocks of the output.
void CudaBackend::norm_op(float* x, const float* y, const Weight& w, int64_t n_rows, int64_t dim, float eps,
                          float* out) {
  settle_norm();
  q8_src_ = nullptr;
  if (w.type != GgmlType::F32) fail("norm weight '{}' must be F32, got {}", w.name, type_name(w.type));
  const float* g = reinterpret_cast<const float*>(device_weight(w).data);
  Q8Buffer q{nullptr, nullptr};
  if (fuse_ && parallel_norm_ && decode_sized(n_rows) && dim % 32 == 0 && !serial_norms_.count(g)) {
    // The parallel form (rms_norm_parts_kernel): pending until an int8 GEMV reads `out` (gemv) or
    // anything else runs (settle_norm).
    q = q8_buffer(out, n_rows * dim);
    auto* parts = static_cast<float*>(norm_parts_.get(size_t(n_rows * dim / 32) * sizeof(float), deferred_));
    submit(y ? "add_rms_norm" : "rms_norm", 0, [this](float* x, const float* y, const float* g, int64_t n_rows,
                                                      int64_t dim, float* out, Q8Buffer q, float* parts) {
      const dim3 grid{unsigned((dim / 32 + 3) / 4), unsigned(n_rows)};
      launch(pdl_, grid, 4 * kWarp, stream_, rms_norm_parts_kernel, x, y, g, dim, out, q.xq, q.xs, parts);
      UMA_LAUNCHED("rms_norm_parts");
    }, x, y, g, n_rows, dim, out, q, parts);
    norm_pending_ = PendingNorm{parts, out, int32_t(n_rows), int32_t(dim), eps, g};
    return;
  }
  if (fuse_ && decode_sized(n_rows) && dim % 32 == 0) q = q8_buffer(out, n_rows * dim);
  submit(y ? "add_rms_norm" : "rms_norm", 0, [this](float* x, const float* y, const float* g, int64_t n_rows,
                                                    int64_t dim, float eps, float* out, Q8Buffer q) {
    const int threads = dim >= 1024 ? 1024 : std::max(32, int((dim + 31) / 32 * 32));
    if (q.xq && dim / 32 <= threads / kWarp * kNormPer)
      launch(pdl_, unsigned(n_rows), threads, stream_, rms_norm_q8_kernel, x, y, g, dim, eps, out, q.xq, q.xs);
    else
      launch(pdl_, unsigned(n_rows), threads, stream_, rms_norm_kernel, x, y, g, dim, eps, out, q.xq, q.xs);
    UMA_LAUNCHED("rms_norm");
  }, x, y, g, n_rows, dim, eps, out, q);
}

// The pending parallel norm's output is about to be read by something other than an int8 GEMV: scale it
// now, and give this norm (known by its weight) the single-block kernel from now on.
void CudaBackend::settle_norm() {
  if (!norm_pending_.parts) return;
  const PendingNorm n = norm_pending_;
  norm_pending_ = {};
  serial_norms_.insert(n.weight);
  const float4* xs = q8_src_ == n.out ? reinterpret_cast<const float4*>(q8_base_ + q8_n_) : nullptr;
  submit("rms_settle", 0, [this](const float* parts, int64_t n_rows, int64_t dim, float eps, float* out,
                                 const float4* xs) {
    rms_settle_kernel<<<unsigned(n_rows), 256, 0, stream_>>>(parts, dim, eps, out, const_cast<float4*>(xs));
    UMA_LAUNCHED("rms_settle");
  }, n.parts, int64_t(n.n_rows), int64_t(n.dim), n.eps, n.out, xs);
  if (xs) q8_src_ = n.out;  // still valid, now scaled
}

void CudaBackend::gather_rows(const float* src, int64_t dim, const int32_t* rows, int64_t n, float* dst) {
  q8_src_ = nullptr;
  if (n == 0) return;
  const int32_t* drows = stage_ints(rows_, rows, n);
  submit("gather_rows", 0, [this](const float* src, int64_t dim, const int32_t* drows, int64_t n, float* dst) {
    dim3 grid(grid_for(dim, 256), unsigned(n));
    gather_rows_kernel<<<grid, 256, 0, stream_>>>(src, dim, drows, dst);
    UMA_LAUNCHED("gather_rows");
  }, src, dim, drows, n, dst);
}

void CudaBackend::add(float* y, const float* x, int64_t n) {
  q8_src_ = nullptr;
  submit("add", 0, [this](float* y, const float* x, int64_t n) {
    add_kernel<<<grid_for(n, 256), 256, 0, stream_>>>(y, x, n);
    UMA_LAUNCHED("add");
  }, y, x, n);
}

void CudaBackend::swiglu(const float* gate, const float* up, int64_t n, float* out) {
  q8_src_ = nullptr;
  // The int8 blocks of the output, for the down projection of a decode step (a few tokens' worth).
  Q8Buffer q{nullptr, nullptr};
  if (fuse_ && n % 32 == 0 && n <= kMaxDecodeSeqs * 32768) q = q8_buffer(out, n);
  submit("swiglu", 0, [this](const float* gate, const float* up, int64_t n, float* out, Q8Buffer q) {
    launch(pdl_, grid_for(n, 256), 256, stream_, swiglu_kernel, gate, up, n, out, q.xq, q.xs);
    UMA_LAUNCHED("swiglu");
  }, gate, up, n, out, q);
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

RopeArgs CudaBackend::rope_args(const RopeParams& p) {
  const int half = p.n_rot / 2;
  const float* tab = rope_table(p);
  return RopeArgs{tab, tab + half, half, p.neox, p.ext_factor > 0, p.freq_scale, p.attn_factor, 0};
}

void CudaBackend::rope(float* x, int64_t n_tokens, int n_heads, int head_stride, const BatchLayout& batch,
                       const RopeParams& p) {
  q8_src_ = nullptr;
  const int half = p.n_rot / 2;
  if (half == 0 || n_tokens == 0) return;
  const RopeArgs r = rope_args(p);
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
                           RopeArgs r) {
    rope_kernel<<<grid_for(n_tokens * n_heads * r.half, 256), 256, 0, stream_>>>(x, n_tokens, n_heads, head_stride,
                                                                                 pos, r);
    UMA_LAUNCHED("rope");
  }, x, n_tokens, n_heads, head_stride, pos, r);
}

void CudaBackend::rope_store_kv(KvCache& kv, int layer, float* q, float* k, const float* v, int n_head,
                                int n_head_kv, int head_dim, const BatchLayout& batch, const RopeParams& p) {
  const int hdv = n_head_kv > 0 ? kv.options().v_width / n_head_kv : 0;
  const bool fits = n_head_kv > 0 && n_head % n_head_kv == 0 && kv.options().k_width == n_head_kv * head_dim &&
                    kv.options().v_width == n_head_kv * hdv && p.n_rot > 0 && p.n_rot <= head_dim &&
                    (!kv.options().q8 || (head_dim % 32 == 0 && hdv % 32 == 0));  // 8-bit blocks inside a head
  if (!fuse_ || !fits) return Backend::rope_store_kv(kv, layer, q, k, v, n_head, n_head_kv, head_dim, batch, p);
  q8_src_ = nullptr;
  if (batch.n_tokens == 0) return;
  const DeviceLayout L = layout_for(kv, batch);
  const RopeArgs r = rope_args(p);
  submit("rope_store_kv", 0, [this](float* q, float* k, const float* v, float* K, float* V, int n_head, int n_head_kv,
                                    int hd, int hdv, RopeArgs r, DeviceLayout L, int64_t n_tokens, KvKind kind,
                                    int64_t n_cells) {
    const dim3 grid{unsigned(n_head_kv), unsigned(n_tokens)};
    with_kv(kind, [&](auto tag) {
      using KV = typename decltype(tag)::type;
      launch(pdl_, grid, 128, stream_, rope_store_kv_kernel<KV>, q, k, v, kv_cells<KV>(K, n_cells, n_head_kv * hd),
             kv_cells<KV>(V, n_cells, n_head_kv * hdv), n_head, n_head_kv, hd, hdv, r, L);
    });
    UMA_LAUNCHED("rope_store_kv");
  }, q, k, v, kv.k(layer), kv.v(layer), n_head, n_head_kv, head_dim, hdv, r, L, batch.n_tokens, kv_kind(kv),
     kv.capacity());
}

void CudaBackend::argmax_rows(const float* x, int64_t n_rows, int64_t n_cols, int32_t* out) {
  flush();
  if (n_rows == 0) return;
  auto* ids = static_cast<int32_t*>(argmax_.get(size_t(n_rows) * sizeof(int32_t)));
  argmax_rows_kernel<<<unsigned(n_rows), 1024, 0, stream_>>>(x, n_cols, ids);
  UMA_LAUNCHED("argmax_rows");
  UMA_CHECK(cudaMemcpyAsync(out, ids, size_t(n_rows) * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  UMA_CHECK(cudaStreamSynchronize(stream_));
}

}  // namespace uma::cuda
