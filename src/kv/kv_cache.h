// The KV cache: per layer, a pool of token cells, handed out to sequences in fixed-size pages so that
// sequences of different lengths coexist without fragmentation (continuous batching), and pages can be
// shared between sequences with a common prefix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace uma {

class Backend;

struct KvCacheOptions {
  int n_layer = 0;
  int64_t n_cells = 0;  // token slots in total (all sequences)
  int k_width = 0;      // floats per token per layer for keys (n_head_kv * head_dim_k, or the MLA latent)
  int v_width = 0;      // floats per token per layer for values (0 when values derive from the keys)
  int n_seq = 1;        // sequence slots
  // Keys and values stored as f16 (half the memory and the bytes a decode step reads); a backend that cannot
  // (Backend::supports_f16_kv) refuses it. The buffers below then hold halves.
  bool f16 = false;
  // Keys and values as int8 blocks of 32 with an f16 scale each (llama.cpp's q8_0 cache: 34 bytes a block,
  // 53 % of f16's bytes); a backend that cannot (Backend::supports_q8_kv) refuses it, and so does a width
  // that is not whole blocks. A layer's buffer then holds every cell's int8 values, then their scales
  // (n_cells * width / 32 halves).
  bool q8 = false;
};

class KvCache {
 public:
  static constexpr int kPageSize = 16;  // tokens per page

  KvCache(Backend& backend, const KvCacheOptions& options);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  const KvCacheOptions& options() const { return opt_; }
  // Grows sequence `seq` so that positions [0, n_tokens) have cells; throws uma::Error when the cache is full.
  void reserve(int seq, int64_t n_tokens);
  // Drops positions >= n_tokens of a sequence (0 frees it entirely), returning unused pages to the pool.
  void truncate(int seq, int64_t n_tokens);
  // Makes `dst` share the first n_tokens of `src` (whole pages are shared; the partial tail page is copied
  // by the caller re-running those tokens). Returns how many tokens are now shared.
  int64_t share_prefix(int src, int dst, int64_t n_tokens);
  int64_t length(int seq) const { return seqs_[seq].length; }
  int64_t free_cells() const { return static_cast<int64_t>(free_pages_.size()) * kPageSize; }
  int64_t capacity() const { return opt_.n_cells; }

  // Cell index of (seq, pos); pos must be < length(seq).
  int64_t cell(int seq, int64_t pos) const {
    return static_cast<int64_t>(seqs_[seq].pages[pos / kPageSize]) * kPageSize + pos % kPageSize;
  }
  const std::vector<int32_t>& pages(int seq) const { return seqs_[seq].pages; }

  // The layer's key and value cells: [n_cells, k_width] and [n_cells, v_width] floats, or halves when
  // options().f16, or int8 values and their scales when options().q8.
  float* k(int layer) const { return k_[layer]; }
  float* v(int layer) const { return v_[layer]; }
  size_t bytes() const;
  size_t bytes_per_cell(int width) const;

 private:
  struct Sequence {
    std::vector<int32_t> pages;
    int64_t length = 0;
  };
  void release_page(int32_t page);

  Backend& backend_;
  KvCacheOptions opt_;
  std::vector<float*> k_, v_;
  std::vector<Sequence> seqs_;
  std::vector<int32_t> free_pages_;
  std::vector<int32_t> page_refs_;
};

}  // namespace uma
