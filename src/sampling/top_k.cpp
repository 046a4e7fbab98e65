#include "sampling/top_k.h"

#include <algorithm>
#include <utility>

#include "uma/error.h"

namespace uma {

float penalized_logit(float l, int32_t count, const LogitPenalties& pen) {
  if (pen.repeat != 1.0f) l = l > 0.0f ? l / pen.repeat : l * pen.repeat;
  if (pen.frequency != 0.0f || pen.presence != 0.0f) l -= float(count) * pen.frequency + pen.presence;
  return l;
}

void apply_penalties(float* logits, size_t n, const LogitPenalties& pen) {
  if (!pen.active()) return;
  for (int64_t i = 0; i < pen.n; ++i) {
    const int32_t token = pen.ids[i];
    if (token < 0 || size_t(token) >= n) continue;
    logits[size_t(token)] = penalized_logit(logits[size_t(token)], pen.counts[i], pen);
  }
}

namespace {

// The whole order by an LSD radix sort of the keys' high halves in two 16-bit passes: the keys start in id
// order and each pass is stable, so equal logits stay by id, as the low half would order them.
void radix_sort_keys(std::vector<uint64_t>& keys, std::vector<uint64_t>& tmp) {
  constexpr size_t kBuckets = size_t(1) << 16;
  thread_local std::vector<size_t> count(kBuckets);
  tmp.resize(keys.size());
  for (int shift : {32, 48}) {
    std::fill(count.begin(), count.end(), 0);
    for (uint64_t key : keys) ++count[(key >> shift) & (kBuckets - 1)];
    size_t at = 0;
    for (size_t& c : count) at += std::exchange(c, at);
    for (uint64_t key : keys) tmp[count[(key >> shift) & (kBuckets - 1)]++] = key;
    keys.swap(tmp);
  }
}

}  // namespace

size_t sort_top_k(const float* logits, size_t n, size_t k, std::vector<TokenLogit>& scratch) {
  k = std::clamp<size_t>(k, 1, n);
  scratch.resize(n);
  if (k > n / 16 && n > 4096) {
    thread_local std::vector<uint64_t> keys, tmp;  // kept between tokens (2 MB each for 128k logits)
    keys.resize(n);
    for (size_t i = 0; i < n; ++i) keys[i] = rank_key(logits[i], int32_t(i));
    radix_sort_keys(keys, tmp);
    for (size_t i = 0; i < k; ++i) scratch[i] = key_candidate(keys[i]);
    return k;
  }
  for (size_t i = 0; i < n; ++i) scratch[i] = {int32_t(i), ranking_logit(logits[i])};
  if (k < n) std::nth_element(scratch.begin(), scratch.begin() + std::ptrdiff_t(k - 1), scratch.end(), ranks_before);
  std::sort(scratch.begin(), scratch.begin() + std::ptrdiff_t(k), ranks_before);
  return k;
}

RowMass row_mass(const float* logits, size_t n, float max_logit, double inv_t) {
  RowMass m;
  for (size_t i = 0; i < n; ++i) {
    m.sum1 += row_mass_term(logits[i], max_logit, inv_t, false);
    m.sum_t += row_mass_term(logits[i], max_logit, inv_t, true);
  }
  return m;
}

void penalized_top_k(float* logits, size_t n, int k, const LogitPenalties& pen, TokenLogit* out) {
  if (k < 1 || size_t(k) > n) fail("top-k of a row of {} logits: k must be in [1, {}], got {}", n, n, k);
  apply_penalties(logits, n, pen);
  thread_local std::vector<TokenLogit> scratch;  // kept between tokens (1 MB for 128k logits)
  sort_top_k(logits, n, size_t(k), scratch);
  std::copy_n(scratch.begin(), k, out);
}

}  // namespace uma
