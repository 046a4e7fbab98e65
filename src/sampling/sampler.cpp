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
  if (head_rest_ > 0) --head_rest_;  // see sample_head
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

int Sampler::backend_candidates() const {
  if (const int k = backend_top_k(); k > 0) return k;
  if (params_.temperature <= 0.0f || head_rest_ > 0) return 0;
  return std::min(kHead, vocab_size_);
}

// Exactness: sample() compares running sums of the sorted weights with top_p · total and u · total, where
// total is the sum over the whole row. Here total is the backend's RowMass, within kRowMassError · mass of
// sample()'s (sampling/top_k.h), and the running sums over the head are sample()'s own, term for term. So
// the first head position i whose running sum passes the threshold by more than that margin, while the one
// before stays below it by as much, is the position sample() stops at; any other case takes the whole row.
int32_t Sampler::sample_head(std::span<const TokenLogit> head, const RowMass& mass,
                             const std::function<void(std::vector<float>&)>& whole_row) {
  if (head.empty()) fail("sampler: no candidates to sample from");
  kept_.clear();
  const double u = next_uniform();  // sample() draws exactly one uniform too, after the truncation
  auto from_whole_row = [&] {
    ++fallbacks_;
    head_outcome(true);
    whole_row(row_);
    if (row_.size() != size_t(vocab_size_))
      fail("sampler: got {} logits for a vocabulary of {} tokens", row_.size(), vocab_size_);
    const size_t n = sort_top_k(row_.data(), row_.size(), row_.size(), candidates_);
    return finish(std::span<const TokenLogit>(candidates_.data(), n), &u);
  };
  if (head.size() >= size_t(vocab_size_)) return finish(head, &u);  // the head is the whole row

  const float max_logit = head[0].logit;
  if (!(max_logit > -std::numeric_limits<float>::infinity())) return from_whole_row();  // finish() says why
  // A valid mass counts the best logit's term, exp(0) = 1, in both sums.
  if (!(mass.sum1 >= 1.0 && mass.sum_t >= 1.0)) return from_whole_row();
  // The first position whose running sum of w(i) passes `threshold` by more than `margin` while every sum
  // before it stayed below threshold - margin (sample()'s stopping point), else head.size() (undecided).
  auto stop = [&](double threshold, double margin, auto&& w) {
    double cum = 0.0;
    for (size_t i = 0; i < head.size(); ++i) {
      cum += w(i);
      if (cum > threshold + margin) return i;
      if (cum >= threshold - margin) return head.size();  // within the margin
    }
    return head.size();
  };
  size_t k = head.size();
  bool whole = true;  // whether every token of the row survives truncation so far
  if (params_.top_p < 1.0f) {
    const size_t i = stop(double(params_.top_p) * mass.sum1, kRowMassError * mass.sum1,
                          [&](size_t j) { return std::exp(double(head[j].logit - max_logit)); });
    if (i == head.size()) return from_whole_row();
    k = i + 1, whole = false;
  }
  if (params_.min_p > 0.0f) {
    const float threshold = max_logit + std::log(params_.min_p);
    size_t keep = 1;
    while (keep < k && head[keep].logit >= threshold) ++keep;
    if (whole && keep == head.size()) return from_whole_row();  // survivors past the head
    k = keep, whole = false;
  }
  if (!whole) {
    head_outcome(false);
    return draw(head, k, u);
  }
  // Every token survives: the draw over the whole row, decided in the head when the margin allows.
  const double inv_t = 1.0 / double(params_.temperature), total = mass.sum_t;
  auto weight = [&](size_t j) { return std::exp(double(head[j].logit - max_logit) * inv_t); };
  const size_t i = stop(u * total, kRowMassError * total, weight);
  if (i == head.size()) return from_whole_row();
  head_outcome(false);
  kept_.resize(head.size());
  for (size_t j = 0; j < head.size(); ++j) kept_[j] = {head[j].id, float(weight(j) / total)};
  return head[i].id;
}

// A head that decides costs two small transfers where the row costs a download and a sort of the vocabulary
// (~3 ms for 128k logits on the H100's host); one that does not costs both. Resting the head only pays when
// nearly every draw lands past it (a flat distribution: a high temperature, an untrained model): when the
// running miss rate (weight 1/8 a sample) passes kRestAbove, the next rest_len_ samples take the whole row
// (32, doubling to 1024 while the first try after a rest misses again).
void Sampler::head_outcome(bool miss) {
  miss_rate_ = miss_rate_ * 7.0 / 8.0 + (miss ? 1.0 / 8.0 : 0.0);
  if (miss && miss_rate_ > kRestAbove) {
    head_rest_ = rest_len_;
    rest_len_ = std::min(2 * rest_len_, kMaxHeadRest);
    miss_rate_ = kRestAbove;  // so that one more miss after the rest starts the next
  } else if (miss_rate_ < 0.5) {
    rest_len_ = kHeadRest;
  }
}

int32_t Sampler::finish(std::span<const TokenLogit> sorted, const double* u) {
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

  return draw(sorted, k, u ? *u : next_uniform());
}

int32_t Sampler::draw(std::span<const TokenLogit> sorted, size_t k, double u) {
  // Temperature, softmax over the survivors, then one draw by inverse CDF.
  const float max_logit = sorted[0].logit;
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

  double r = u * total, cum = 0.0;
  for (size_t i = 0; i < k; ++i) {
    cum += weights[i];
    if (r < cum) return sorted[i].id;
  }
  return sorted[k - 1].id;  // r landed on rounding slack at the very top
}

}  // namespace uma
