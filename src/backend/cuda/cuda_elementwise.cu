// Element-wise and row ops: embedding rows, RMSNorm, add, SwiGLU, row gathers, RoPE.
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
  q8_src_ = nullptr;
  if (w.type != GgmlType::F32) fail("norm weight '{}' must be F32, got {}", w.name, type_name(w.type));
  const float* g = reinterpret_cast<const float*>(device_weight(w).data);
  submit("rms_norm", 0, [this](const float* x, const float* g, int64_t n_rows, int64_t dim, float eps, float* out) {
    const int threads = dim >= 1024 ? 1024 : std::max(32, int((dim + 31) / 32 * 32));
    rms_norm_kernel<<<unsigned(n_rows), threads, 0, stream_>>>(x, g, dim, eps, out);
    UMA_LAUNCHED("rms_norm");
  }, x, g, n_rows, dim, eps, out);
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
  submit("swiglu", 0, [this](const float* gate, const float* up, int64_t n, float* out) {
    swiglu_kernel<<<grid_for(n, 256), 256, 0, stream_>>>(gate, up, n, out);
    UMA_LAUNCHED("swiglu");
  }, gate, up, n, out);
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


}  // namespace uma::cuda
