#include "kv/kv_cache.h"

#include <algorithm>

#include "backend/backend.h"
#include "uma/error.h"

namespace uma {

KvCache::KvCache(Backend& backend, const KvCacheOptions& options) : backend_(backend), opt_(options) {
  opt_.n_cells = (opt_.n_cells + kPageSize - 1) / kPageSize * kPageSize;
  if (opt_.f16 && !backend_.supports_f16_kv())
    fail("the {} backend keeps its KV cache in f32; use --kv-type f32 (an f16 cache needs the CUDA backend)",
         backend_.name());
  if (opt_.q8 && !backend_.supports_q8_kv())
    fail("the {} backend cannot keep its KV cache in 8 bits; use --kv-type auto (a q8_0 cache needs the CUDA "
         "backend)", backend_.name());
  if (opt_.q8 && opt_.f16) fail("a KV cache holds f16 or 8-bit cells, not both; pick one --kv-type");
  if (opt_.q8 && (opt_.k_width % 32 || opt_.v_width % 32))
    fail("a q8_0 KV cache needs key and value widths that are multiples of 32 (got {} and {}); use --kv-type f16",
         opt_.k_width, opt_.v_width);
  const int64_t n_pages = opt_.n_cells / kPageSize;
  auto floats = [&](int width) { return (bytes_per_cell(width) * static_cast<size_t>(opt_.n_cells) + 3) / 4; };
  for (int l = 0; l < opt_.n_layer; ++l) {
    k_.push_back(backend_.alloc(floats(opt_.k_width)));
    v_.push_back(opt_.v_width ? backend_.alloc(floats(opt_.v_width)) : nullptr);
  }
  seqs_.resize(opt_.n_seq);
  page_refs_.assign(n_pages, 0);
  // Hand out low pages first (pop from the back).
  for (int64_t p = n_pages - 1; p >= 0; --p) free_pages_.push_back(static_cast<int32_t>(p));
}

KvCache::~KvCache() {
  for (float* p : k_) backend_.free_buffer(p);
  for (float* p : v_)
    if (p) backend_.free_buffer(p);
}

// Bytes a cell of `width` values takes: floats, halves, or int8 values plus an f16 scale per 32.
size_t KvCache::bytes_per_cell(int width) const {
  const size_t w = static_cast<size_t>(width);
  return opt_.q8 ? w + w / 32 * 2 : opt_.f16 ? 2 * w : 4 * w;
}

size_t KvCache::bytes() const {
  return static_cast<size_t>(opt_.n_layer) * opt_.n_cells * (bytes_per_cell(opt_.k_width) + bytes_per_cell(opt_.v_width));
}

void KvCache::reserve(int seq, int64_t n_tokens) {
  if (seq < 0 || seq >= opt_.n_seq) fail("KV cache: sequence slot {} out of range (0..{})", seq, opt_.n_seq - 1);
  Sequence& s = seqs_[seq];
  const int64_t pages_needed = (n_tokens + kPageSize - 1) / kPageSize;
  const int64_t more = pages_needed - static_cast<int64_t>(s.pages.size());
  if (more > static_cast<int64_t>(free_pages_.size()))
    fail("the KV cache is full: {} more tokens need {} cells but only {} of {} are free; use a larger context "
         "(-c) or fewer parallel sequences", n_tokens - s.length, more * kPageSize, free_cells(), opt_.n_cells);
  for (int64_t i = 0; i < more; ++i) {
    const int32_t p = free_pages_.back();
    free_pages_.pop_back();
    page_refs_[p] = 1;
    s.pages.push_back(p);
  }
  if (n_tokens > s.length) s.length = n_tokens;
}

void KvCache::release_page(int32_t page) {
  if (--page_refs_[page] == 0) free_pages_.push_back(page);
}

void KvCache::truncate(int seq, int64_t n_tokens) {
  Sequence& s = seqs_[seq];
  const size_t keep = static_cast<size_t>((n_tokens + kPageSize - 1) / kPageSize);
  while (s.pages.size() > keep) {
    release_page(s.pages.back());
    s.pages.pop_back();
  }
  s.length = std::min(s.length, n_tokens);
}

int64_t KvCache::share_prefix(int src, int dst, int64_t n_tokens) {
  truncate(dst, 0);
  const Sequence& from = seqs_[src];
  const int64_t full_pages = std::min(n_tokens, from.length) / kPageSize;
  Sequence& to = seqs_[dst];
  for (int64_t i = 0; i < full_pages; ++i) {
    const int32_t p = from.pages[i];
    ++page_refs_[p];
    to.pages.push_back(p);
  }
  to.length = full_pages * kPageSize;
  return to.length;
}

}  // namespace uma
