#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "uma/error.h"

namespace uma {

namespace {

constexpr uint64_t kRandomSeed = 0xFFFFFFFFFFFFFFFF;

}  // namespace

Sampler::Sampler(const SamplerParams& params, int32_t vocab_size) : params_(params), vocab_size_(vocab_size) {
  if (vocab_size <= 0) fail("sampler: vocabulary size must be positive, got {}", vocab_size);
  if (params.top_p < 0.0f) fail("sampler: top_p must be >= 0, got {}", params.top_p);
  if (params.min_p > 1.0f) fail("sampler: min_p must be <= 1, got {}", params.min_p);
  if (params.repeat_penalty <= 0.0f) fail("sampler: repeat_penalty must be > 0, got {}", params.repeat_penalty);
  seed_ = params.seed;
  if (seed_ == kRandomSeed) {
    std::random_device rd;
    seed_ = (uint64_t(rd()) << 32) ^ uint64_t(rd());
  }
  rng_.seed(seed_);
}

void Sampler::reset() {
  history_.clear();
  rng_.seed(seed_);
}

void Sampler::accept(int32_t token) {
  if (params_.repeat_last_n == 0) return;
  history_.push_back(token);
  if (params_.repeat_last_n > 0 && history_.size() > size_t(params_.repeat_last_n)) history_.pop_front();
}

double Sampler::next_uniform() {
  // 53 bits fill a double's mantissa exactly: the result is k / 2^53 for k uniform in [0, 2^53).
  return double(rng_() >> 11) * 0x1.0p-53;
}

LogitPenalties Sampler::penalties() {
  LogitPenalties pen{.repeat = params_.repeat_penalty,
                     .frequency = params_.frequency_penalty,
                     .presence = params_.presence_penalty};
  if (history_.empty() || (pen.repeat == 1.0f && pen.frequency == 0.0f && pen.presence == 0.0f)) return pen;
  // Count each distinct token of the window once: sort a copy, then walk the runs.
  history_sorted_.assign(history_.begin(), history_.end());
  std::sort(history_sorted_.begin(), history_sorted_.end());
  penalty_ids_.clear();
  penalty_counts_.clear();
  for (size_t i = 0; i < history_sorted_.size();) {
    size_t j = i;
    while (j < history_sorted_.size() && history_sorted_[j] == history_sorted_[i]) ++j;
    penalty_ids_.push_back(history_sorted_[i]);
    penalty_counts_.push_back(int32_t(j - i));
    i = j;
  }
  pen.ids = penalty_ids_.data();
  pen.counts = penalty_counts_.data();
  pen.n = int64_t(penalty_ids_.size());
  return pen;
}

int Sampler::backend_top_k() const {
  if (params_.temperature <= 0.0f) return 1;
  if (params_.top_k > 0 && params_.top_k < vocab_size_) return params_.top_k;
  return 0;
}

int32_t Sampler::sample(std::span<float> logits) {
  if (logits.size() != size_t(vocab_size_))
    fail("sampler: got {} logits for a vocabulary of {} tokens", logits.size(), vocab_size_);
  apply_penalties(logits.data(), logits.size(), penalties());
  if (params_.temperature <= 0.0f) {
    // Greedy is top-1: what sort_top_k(logits, 1) returns, in one pass without the candidate array.
    TokenLogit best{0, ranking_logit(logits[0])};
    for (size_t i = 1; i < logits.size(); ++i) {
      const TokenLogit c{int32_t(i), ranking_logit(logits[i])};
      if (ranks_before(c, best)) best = c;
    }
    return finish(std::span<const TokenLogit>(&best, 1));
  }

  // top-k, O(n + k log k); without top-k, sort all once because top-p needs the full order anyway.
  const int k = backend_top_k();
  const size_t n = sort_top_k(logits.data(), logits.size(), k > 0 ? size_t(k) : logits.size(), candidates_);
  return finish(std::span<const TokenLogit>(candidates_.data(), n));
}

int32_t Sampler::sample_candidates(std::span<const TokenLogit> sorted) {
  if (sorted.empty()) fail("sampler: no candidates to sample from");
  return finish(sorted);
}

int32_t Sampler::finish(std::span<const TokenLogit> sorted) {
  kept_.clear();
  if (params_.temperature <= 0.0f) return sorted[0].id;
  size_t k = sorted.size();
  const float max_logit = sorted[0].logit;
  if (!(max_logit > -std::numeric_limits<float>::infinity()))
    fail("sampler: every logit is -inf or NaN, nothing can be sampled");

  // Temperature-free weights relative to the best token: w_i = exp(l_i - l_max) in (0, 1].
  // top-p on softmax = w / sum(w); accumulate in double so a 150k-long tail sums without drift.
  if (params_.top_p < 1.0f) {
    double total = 0.0;
    for (size_t i = 0; i < k; ++i) total += std::exp(double(sorted[i].logit - max_logit));
    double target = double(params_.top_p) * total, cum = 0.0;
    size_t keep = k;
    for (size_t i = 0; i < k; ++i) {
      cum += std::exp(double(sorted[i].logit - max_logit));
      if (cum >= target) {
        keep = i + 1;
        break;
      }
    }
    k = keep;
  }

  // min-p: p_i >= min_p * p_max  <=>  l_i >= l_max + log(min_p); the best token always stays.
  if (params_.min_p > 0.0f) {
    float threshold = max_logit + std::log(params_.min_p);
    size_t keep = 1;
    while (keep < k && sorted[keep].logit >= threshold) ++keep;
    k = keep;
  }

  // Temperature, softmax over the survivors, then one draw by inverse CDF.
  const double inv_t = 1.0 / double(params_.temperature);
  double total = 0.0;
  kept_.resize(k);
  std::vector<double>& weights = weights_;
  weights.resize(k);
  for (size_t i = 0; i < k; ++i) {
    weights[i] = std::exp(double(sorted[i].logit - max_logit) * inv_t);
    total += weights[i];
  }
  for (size_t i = 0; i < k; ++i) kept_[i] = {sorted[i].id, float(weights[i] / total)};

  double r = next_uniform() * total, cum = 0.0;
  for (size_t i = 0; i < k; ++i) {
    cum += weights[i];
    if (r < cum) return sorted[i].id;
  }
  return sorted[k - 1].id;  // r landed on rounding slack at the very top
}

}  // namespace uma
