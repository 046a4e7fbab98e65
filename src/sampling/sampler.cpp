#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "uma/error.h"

namespace uma {

namespace {

constexpr uint64_t kRandomSeed = 0xFFFFFFFFFFFFFFFF;

// Highest logit first; equal logits by lower id, so the order is total and std::nth_element /
// std::sort (neither stable) give the same result everywhere.
bool before(float la, int32_t ia, float lb, int32_t ib) {
  return la > lb || (la == lb && ia < ib);
}

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

void Sampler::apply_penalties(std::span<float> logits) {
  bool repeat = params_.repeat_penalty != 1.0f;
  bool openai = params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f;
  if (history_.empty() || (!repeat && !openai)) return;

  // Count each distinct token of the window once: sort a copy, then walk the runs.
  counts_scratch_.assign(history_.begin(), history_.end());
  std::sort(counts_scratch_.begin(), counts_scratch_.end());
  for (size_t i = 0; i < counts_scratch_.size();) {
    size_t j = i;
    while (j < counts_scratch_.size() && counts_scratch_[j] == counts_scratch_[i]) ++j;
    int32_t token = counts_scratch_[i];
    float count = float(j - i);
    i = j;
    if (token < 0 || token >= vocab_size_) continue;  // e.g. a control token outside the logits row
    float& l = logits[size_t(token)];
    // Dividing a negative logit would raise its probability, hence the two cases.
    if (repeat) l = l > 0.0f ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    l -= count * params_.frequency_penalty + params_.presence_penalty;
  }
}

int32_t Sampler::sample(std::span<float> logits) {
  if (logits.size() != size_t(vocab_size_))
    fail("sampler: got {} logits for a vocabulary of {} tokens", logits.size(), vocab_size_);
  kept_.clear();
  apply_penalties(logits);

  const size_t n = logits.size();
  if (params_.temperature <= 0.0f) {
    // Strict > keeps the first (lowest id) of equal maxima.
    size_t best = 0;
    for (size_t i = 1; i < n; ++i)
      if (logits[i] > logits[best]) best = i;
    return int32_t(best);
  }

  // top-k: order the k best with nth_element + sort of k (O(n + k log k)); without top-k, sort all once
  // because top-p needs the full order anyway.
  candidates_.resize(n);
  // NaN would break the sort's strict weak ordering; treat it as "never".
  for (size_t i = 0; i < n; ++i)
    candidates_[i] = {std::isnan(logits[i]) ? -std::numeric_limits<float>::infinity() : logits[i], int32_t(i)};
  auto cmp = [](const Candidate& a, const Candidate& b) { return before(a.logit, a.id, b.logit, b.id); };
  size_t k = n;
  if (params_.top_k > 0 && size_t(params_.top_k) < n) {
    k = size_t(params_.top_k);
    std::nth_element(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(k - 1), candidates_.end(), cmp);
  }
  std::sort(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(k), cmp);

  const float max_logit = candidates_[0].logit;
  if (!(max_logit > -std::numeric_limits<float>::infinity()))
    fail("sampler: every logit is -inf or NaN, nothing can be sampled");

  // Temperature-free weights relative to the best token: w_i = exp(l_i - l_max) in (0, 1].
  // top-p on softmax = w / sum(w); accumulate in double so a 150k-long tail sums without drift.
  if (params_.top_p < 1.0f) {
    double total = 0.0;
    for (size_t i = 0; i < k; ++i) total += std::exp(double(candidates_[i].logit - max_logit));
    double target = double(params_.top_p) * total, cum = 0.0;
    size_t keep = k;
    for (size_t i = 0; i < k; ++i) {
      cum += std::exp(double(candidates_[i].logit - max_logit));
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
    while (keep < k && candidates_[keep].logit >= threshold) ++keep;
    k = keep;
  }

  // Temperature, softmax over the survivors, then one draw by inverse CDF.
  const double inv_t = 1.0 / double(params_.temperature);
  double total = 0.0;
  kept_.resize(k);
  std::vector<double>& weights = weights_;
  weights.resize(k);
  for (size_t i = 0; i < k; ++i) {
    weights[i] = std::exp(double(candidates_[i].logit - max_logit) * inv_t);
    total += weights[i];
  }
  for (size_t i = 0; i < k; ++i) kept_[i] = {candidates_[i].id, float(weights[i] / total)};

  double r = next_uniform() * total, cum = 0.0;
  for (size_t i = 0; i < k; ++i) {
    cum += weights[i];
    if (r < cum) return candidates_[i].id;
  }
  return candidates_[k - 1].id;  // r landed on rounding slack at the very top
}

}  // namespace uma
