// The CUDA backend's core: construction, device memory, weight upload (and repacking), forward steps and
// their CUDA graphs, the per-op profile. The ops live in cuda_matmul.cu, cuda_elementwise.cu and
// cuda_attention.cu; the class in cuda_backend.h.
#include <unistd.h>

#include <cstdio>

#include "backend/cuda/cublas_api.h"
#include "backend/cuda/cuda_backend.h"

namespace uma::cuda {
namespace {

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
}  // namespace

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
  if (w.type == GgmlType::F32 && d.rows > 1 && d.cols > 1) f32_weights_ = true;  // a matrix, not a norm
  const SoaSplit sp = soa_split(w.type);
  if (sp.q_len) {
    // Upload the GGUF bytes into scratch, then repack into the regions of WView (kernels.cuh).
    const int64_t bs = traits(w.type).block_size, nb = d.cols / bs;
    d.row_bytes = row_bytes(w.type, d.cols);
    // Each region's rows start on 16-byte boundaries (q and m rows are whole 16-byte units already): the bulk
    // GEMV copies a stage of rows as one region, which needs that. Only the 2-byte scales can fall short, e.g.
    // a Q6_K row of 11008 values has 43 super-blocks, 86 bytes of d, padded to 96 (0.1 % of the row).
    const int64_t q_row = nb * sp.q_len, m_row = nb * sp.m_len, d_row = (nb * sp.d_len + 15) / 16 * 16;
    const size_t q_bytes = size_t(q_row) * d.rows, m_bytes = size_t(m_row) * d.rows;
    const size_t total = q_bytes + m_bytes + size_t(d_row) * d.rows;
    d.data = weights_mem_.take(total + 16);
    d.view = WView{w.type, d.data, d.data + q_bytes, d.data + q_bytes + m_bytes, q_row, m_row, d_row};
    auto* raw = static_cast<uint8_t*>(repack_src_.get(d.row_bytes * d.rows));
    copy_to_device(raw, w.host, d.row_bytes * d.rows);
    repack_kernel<<<grid_for(d.rows * nb, 256), 256, 0, stream_>>>(sp, raw, traits(w.type).type_size, d.rows, nb,
                                                                   d.view);
    UMA_LAUNCHED("repack");
  } else if (has_gemv(w.type)) {
    d.row_bytes = row_bytes(w.type, d.cols);
    d.data = weights_mem_.take(std::max<size_t>(w.nbytes, 16));
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
    d.data = weights_mem_.take(std::max<size_t>(half.size() * 2, 16));
    copy_to_device(d.data, reinterpret_cast<const uint8_t*>(half.data()), half.size() * 2);
  }
  if (!sp.q_len) d.view = WView{d.type, d.data, d.data, d.data, int64_t(d.row_bytes), 0, 0};
  UMA_CHECK(cudaStreamSynchronize(stream_));
  return weights_.emplace(key, d).first->second;
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
// cache, so a growing context never moves it); decode steps (decode_sized) are recorded for end_step.
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
  // 5-8 tokens decode only when each comes from a sequence of its own (decode_sized); checked only then.
  bool one_each = n > kMaxGemvTokens && n <= kMaxDecodeSeqs;
  for (int64_t i = 0; one_each && i < n; ++i)
    for (int64_t j = 0; j < i; ++j) one_each = one_each && batch.seq[i] != batch.seq[j];
  step_decode_max_ = one_each ? kMaxDecodeSeqs : kMaxGemvTokens;
  n_staged_ = 0;
  sig_.clear();
  ops_.clear();
  deferred_ = graphs_ && decode_sized(n);
}

void CudaBackend::end_step() {
  if (!in_step_) return;
  settle_norm();
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
  if (memlog_ && device_used() > mem_peak_) {
    mem_peak_ = device_used();
    mem_peak_buffers_ = 0;
    for (const auto& [p, n] : buffers_) mem_peak_buffers_ += n;
  }
}

void CudaBackend::print_memory() {
  const double mib = 1024.0 * 1024.0;
  const size_t buffers = mem_peak_buffers_;
  std::fprintf(stderr,
               "UMA_CUDA_MEMLOG (%s): device memory used, MiB: context %.1f, with cuBLAS %.1f, peak at a step's end "
               "%.1f = context and cuBLAS + weights %.1f + buffers (KV cache, activations) %.1f + scratch and the "
               "rest %.1f\n",
               name_.c_str(), mem_context_ / mib, mem_cublas_ / mib, mem_peak_ / mib, weights_mem_.held() / mib,
               buffers / mib, (double(mem_peak_) - mem_cublas_ - weights_mem_.held() - buffers) / mib);
}

}  // namespace uma::cuda

namespace uma {

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
  return std::make_unique<cuda::CudaBackend>(device);
}

}  // namespace uma