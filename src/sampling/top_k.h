// The first stages of the sampling chain, penalties and top-k, as one reference that every path shares:
// Sampler::sample runs them on its row, Backend::top_k_row's default and Model::forward_top_k's default run
// them on a downloaded row, and the CUDA kernels (cuda_sampling.cu) are tested against them. So a token
// sampled where the logits are is the token the host would have sampled, bit for bit.
//
// The order of candidates: higher logit first, equal logits by lower id. NaN counts as -inf ("never"), and
// -0 as +0 (they compare equal, so a bitwise sort key must not tell them apart).
// Plain C++17 (pointers, no std::span): backend.h includes it, and nvcc compiles the CUDA backend as C++17.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace uma {

// The penalties of one sample: each distinct token of the recent window once, with how often it occurs
// there (host memory; Sampler::penalties builds them from its history). The ids must be distinct.
struct LogitPenalties {
  const int32_t* ids = nullptr;
  const int32_t* counts = nullptr;
  int64_t n = 0;
  float repeat = 1.0f;     // divides positive logits, multiplies negative ones; 1: off
  float frequency = 0.0f;  // OpenAI: logit -= frequency * count
  float presence = 0.0f;   // OpenAI: logit -= presence (count > 0 for every listed token)

  bool active() const { return n > 0 && (repeat != 1.0f || frequency != 0.0f || presence != 0.0f); }
};

// A candidate token with its (penalised) logit.
struct TokenLogit {
  int32_t id;
  float logit;
};

// One penalised logit: the repeat penalty (dividing a negative logit would raise its probability, hence the
// two cases), then logit -= count * frequency + presence. Compiled without FMA contraction (CMakeLists.txt);
// the CUDA kernel does the same operations with round-to-nearest intrinsics.
float penalized_logit(float logit, int32_t count, const LogitPenalties& pen);

// Applies the penalties to a row of n logits in place; listed ids outside the row are ignored (e.g. a control
// token that has no logit).
void apply_penalties(float* logits, size_t n, const LogitPenalties& pen);

// The value a logit is ranked by (see the order above).
inline float ranking_logit(float l) {
  if (std::isnan(l)) return -std::numeric_limits<float>::infinity();
  return l == 0.0f ? 0.0f : l;
}

// Whether a ranks before b: a total order, so std::nth_element and std::sort (neither stable) agree with
// every other implementation.
inline bool ranks_before(const TokenLogit& a, const TokenLogit& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

#ifdef __CUDACC__
#define UMA_HOST_DEVICE __host__ __device__
#else
#define UMA_HOST_DEVICE
#endif

// A 64-bit key whose ascending order is the sampler's order. High half: the logit (NaN as -inf, -0 as +0, as
// ranking_logit does) mapped to an unsigned integer that grows as the logit falls: positive floats order
// like their bits with the sign bit set, negative ones like their inverted bits; then all of it inverted.
// Low half: the id, so equal logits rank by lower id. The highest real key (-inf) is 0xFF800000'xxxxxxxx.
// The CUDA top-k sorts these; the host's sort of a whole row radix-sorts their high halves.
UMA_HOST_DEVICE inline uint64_t rank_key(float l, int32_t id) {
  if (l != l) l = -INFINITY;  // the macro: device code may not call numeric_limits without relaxed constexpr
  if (l == 0.0f) l = 0.0f;
  uint32_t b;
  memcpy(&b, &l, sizeof b);
  const uint32_t ascending = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (uint64_t(~ascending) << 32) | uint32_t(id);
}

// The candidate a rank_key stands for (its logit as ranking_logit gives it).
UMA_HOST_DEVICE inline TokenLogit key_candidate(uint64_t key) {
  const uint32_t ascending = ~uint32_t(key >> 32);
  const uint32_t b = (ascending & 0x80000000u) ? (ascending & 0x7fffffffu) : ~ascending;
  float l;
  memcpy(&l, &b, sizeof l);
  return {int32_t(uint32_t(key)), l};
}

// The k best of n logits (k clamped to [1, n]) sorted best first in scratch[0, k), with ranking_logit values;
// scratch is resized to n. Returns k. O(n + k log k); for k above n / 16 (a chain without top-k sorts the
// whole row), a radix sort of the rank keys, O(n): the same order, since the order is total.
size_t sort_top_k(const float* logits, size_t n, size_t k, std::vector<TokenLogit>& scratch);

// The probability mass of a penalised row, for sampler chains that see the whole row (no top-k; see
// Sampler::sample_head): with m its best logit (ranking_logit), sum1 = Σ exp(l − m) and sum_t = Σ exp((l − m)
// · inv_t) over every logit (NaN and -inf add nothing). Float exponentials, double sums: within
// kRowMassError (relative) of the exact sums, which the sampler allows for. Bound: the float argument is
// off by ≤ 2^-24 · |x| and expf by ≤ 2 ulp, so a term by ≤ 7e-6 for |x| ≤ 104 (below, expf gives ≤ 1.2e-38
// and so does the exact term); 2^-53 per double add. sum1 >= 1 (the best logit's term).
struct RowMass {
  double sum1 = 0, sum_t = 0;
};
constexpr double kRowMassError = 1e-4;
UMA_HOST_DEVICE inline float row_mass_term(float logit, float max_logit, double inv_t, bool tempered) {
  if (logit != logit || logit == -INFINITY) return 0.0f;  // NaN ranks as -inf
  const float d = logit - max_logit;
  return expf(tempered ? float(double(d) * inv_t) : d);
}
RowMass row_mass(const float* logits, size_t n, float max_logit, double inv_t);

// The whole of Backend::top_k_row on host memory: penalties on the n logits in place, then the k best into
// out[0, k). Throws uma::Error unless 1 <= k <= n.
void penalized_top_k(float* logits, size_t n, int k, const LogitPenalties& pen, TokenLogit* out);

}  // namespace uma
