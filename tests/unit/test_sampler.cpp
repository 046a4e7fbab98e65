// Sampler: greedy, seeded determinism, draw frequencies against softmax, exact truncation sets, penalties.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "sampling/sampler.h"
#include "uma/error.h"

namespace uma {
namespace {

SamplerParams no_truncation(float temperature, uint64_t seed = 1234) {
  SamplerParams p;
  p.temperature = temperature;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = seed;
  return p;
}

// Logits whose softmax is exactly `probs` (up to float rounding).
std::vector<float> logits_from_probs(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(float(std::log(p)));
  return out;
}

std::vector<float> pseudo_random_logits(int n, uint32_t salt) {
  std::vector<float> out(static_cast<size_t>(n));
  uint32_t x = 2463534242u ^ salt;
  for (auto& v : out) {  // xorshift32: deterministic, no <random> distribution involved
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    v = float(x % 10000) / 1000.0f - 5.0f;
  }
  return out;
}

std::set<int32_t> kept_ids(const Sampler& s) {
  std::set<int32_t> ids;
  for (const auto& c : s.last_candidates()) ids.insert(c.id);
  return ids;
}

// Pearson chi-square of observed counts against expected probabilities.
double chi_square(const std::vector<int>& counts, const std::vector<double>& probs, int n) {
  double chi = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    double e = probs[i] * n;
    if (e == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0 but was drawn";
      continue;
    }
    chi += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi;
}

TEST(Sampler, GreedyPicksArgmaxLowestIdOnTies) {
  Sampler s(no_truncation(0.0f), 5);
  std::vector<float> logits = {0.1f, 3.0f, -2.0f, 3.0f, 1.0f};
  EXPECT_EQ(s.sample(logits), 1);
  std::vector<float> neg = {-5.0f, -1.0f, -1.0f, -3.0f, -1.5f};
  EXPECT_EQ(s.sample(neg), 1);
  EXPECT_TRUE(s.last_candidates().empty());
}

TEST(Sampler, GreedyAfterPenalties) {
  SamplerParams p = no_truncation(0.0f);
  p.repeat_penalty = 2.0f;
  Sampler s(p, 3);
  s.accept(0);
  std::vector<float> logits = {3.0f, 2.0f, 1.0f};  // token 0 drops to 1.5
  EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, PlainGreedyOnlyWhenNoPenaltyChangesALogit) {
  SamplerParams p = no_truncation(0.0f);
  EXPECT_TRUE(Sampler(p, 8).plain_greedy());
  p.repeat_penalty = 1.1f;
  EXPECT_FALSE(Sampler(p, 8).plain_greedy());
  p.repeat_last_n = 0;  // the penalties see no history
  EXPECT_TRUE(Sampler(p, 8).plain_greedy());
  p = no_truncation(0.0f);
  p.presence_penalty = 0.5f;
  EXPECT_FALSE(Sampler(p, 8).plain_greedy());
  p = no_truncation(0.0f);
  p.frequency_penalty = 0.5f;
  EXPECT_FALSE(Sampler(p, 8).plain_greedy());
  EXPECT_FALSE(Sampler(no_truncation(0.7f), 8).plain_greedy());
}

TEST(Sampler, SameSeedSameTokensAndResetRepeats) {
  SamplerParams p;  // default chain: top-k 40, top-p 0.95, min-p 0.05, T 0.8
  p.seed = 42;
  p.temperature = 1.5f;
  p.min_p = 0.0f;
  Sampler a(p, 1000), b(p, 1000);
  std::vector<int32_t> ta, tb;
  for (int i = 0; i < 300; ++i) {
    auto la = pseudo_random_logits(1000, 7), lb = la;
    ta.push_back(a.sample(la));
    tb.push_back(b.sample(lb));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_GT(std::set<int32_t>(ta.begin(), ta.end()).size(), 5u) << "draws should vary from step to step";

  a.reset();
  std::vector<int32_t> again;
  for (int i = 0; i < 300; ++i) {
    auto l = pseudo_random_logits(1000, 7);
    again.push_back(a.sample(l));
  }
  EXPECT_EQ(ta, again);
}

TEST(Sampler, DifferentSeedsDiffer) {
  Sampler a(no_truncation(1.0f, 1), 100), b(no_truncation(1.0f, 2), 100);
  int differ = 0;
  for (int i = 0; i < 100; ++i) {
    auto la = pseudo_random_logits(100, 3), lb = la;
    differ += a.sample(la) != b.sample(lb);
  }
  EXPECT_GT(differ, 50);
}

TEST(Sampler, RandomSeedIsDrawnAndReported) {
  SamplerParams p = no_truncation(1.0f, 0xFFFFFFFFFFFFFFFF);
  Sampler a(p, 10), b(p, 10);
  EXPECT_NE(a.seed(), b.seed());
}

TEST(Sampler, FrequenciesMatchSoftmaxWithTemperature) {
  const float t = 0.7f;
  std::vector<float> base = {1.0f, 0.5f, 0.0f, -0.3f, 2.0f, 1.2f};
  std::vector<double> expected(base.size());
  double z = 0;
  for (size_t i = 0; i < base.size(); ++i) z += expected[i] = std::exp(base[i] / t);
  for (auto& e : expected) e /= z;

  Sampler s(no_truncation(t, 99), int32_t(base.size()));
  const int n = 100000;
  std::vector<int> counts(base.size());
  for (int i = 0; i < n; ++i) {
    auto l = base;
    counts[size_t(s.sample(l))]++;
  }
  // 5 degrees of freedom: P(chi2 > 20.5) = 0.001.
  EXPECT_LT(chi_square(counts, expected, n), 20.5);
  // The reported probabilities are the softmax itself.
  auto cands = s.last_candidates();
  ASSERT_EQ(cands.size(), base.size());
  for (const auto& c : cands) EXPECT_NEAR(c.p, expected[size_t(c.id)], 1e-6);
}

TEST(Sampler, TopKFrequenciesRenormalised) {
  std::vector<float> base = {0.2f, 1.5f, -1.0f, 1.0f, 0.9f, 3.0f, 0.0f, 0.95f};
  SamplerParams p = no_truncation(1.3f, 5);
  p.top_k = 3;  // survivors: 5 (3.0), 1 (1.5), 3 (1.0)
  std::vector<double> expected(base.size(), 0.0);
  double z = 0;
  for (int id : {5, 1, 3}) z += expected[size_t(id)] = std::exp(base[size_t(id)] / 1.3);
  for (auto& e : expected) e /= z;

  Sampler s(p, int32_t(base.size()));
  const int n = 60000;
  std::vector<int> counts(base.size());
  for (int i = 0; i < n; ++i) {
    auto l = base;
    counts[size_t(s.sample(l))]++;
  }
  EXPECT_LT(chi_square(counts, expected, n), 13.8);  // 2 dof, p = 0.001
  EXPECT_EQ(kept_ids(s), (std::set<int32_t>{1, 3, 5}));
}

// probabilities 0.05 0.5 0.1 0.2 0.15 at ids 0..4 (sorted: 1, 3, 4, 2, 0)
const std::vector<double> kProbs = {0.05, 0.5, 0.1, 0.2, 0.15};

std::set<int32_t> truncation_set(SamplerParams p) {
  Sampler s(p, int32_t(kProbs.size()));
  auto l = logits_from_probs(kProbs);
  s.sample(l);
  return kept_ids(s);
}

TEST(Sampler, TopKSetExactWithTies) {
  SamplerParams p = no_truncation(1.0f);
  p.top_k = 2;
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3}));
  // Equal logits: the lower id wins the last slot.
  Sampler s(p, 4);
  std::vector<float> l = {0.0f, 1.0f, 0.0f, 0.0f};
  s.sample(l);
  EXPECT_EQ(kept_ids(s), (std::set<int32_t>{0, 1}));
}

TEST(Sampler, TopPSetExact) {
  SamplerParams p = no_truncation(1.0f);
  p.top_p = 0.8f;  // cumulative 0.5, 0.7, 0.85 -> three tokens
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3, 4}));
  p.top_p = 0.3f;  // the best token alone already covers it
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1}));
  p.top_p = 0.0f;  // still keeps one
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1}));
  p.top_p = 0.96f;
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{0, 1, 2, 3, 4}));
  // Truncation ignores temperature (llama.cpp order: temperature comes last).
  p.top_p = 0.8f;
  p.temperature = 3.0f;
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3, 4}));
}

TEST(Sampler, MinPSetExact) {
  SamplerParams p = no_truncation(1.0f);
  p.min_p = 0.25f;  // threshold 0.125
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3, 4}));
  p.min_p = 0.35f;  // threshold 0.175
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3}));
  p.min_p = 1.0f;
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1}));
  p.temperature = 0.2f;
  p.min_p = 0.25f;
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3, 4}));
}

TEST(Sampler, ChainAppliesTopKThenTopPThenMinP) {
  SamplerParams p = no_truncation(1.0f);
  p.top_k = 4;     // drops id 0 (0.05): renormalised 0.5/0.95 ...
  p.top_p = 0.9f;  // cumulative of renormalised: .526 .737 .895 .. -> four kept? .895 < .9 -> all four
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 2, 3, 4}));
  p.min_p = 0.28f;  // threshold 0.14: keeps 0.5, 0.2, 0.15
  EXPECT_EQ(truncation_set(p), (std::set<int32_t>{1, 3, 4}));
}

TEST(Sampler, KeptProbabilitiesUseTemperatureAndSumToOne) {
  SamplerParams p = no_truncation(0.5f);
  p.top_k = 3;
  Sampler s(p, int32_t(kProbs.size()));
  auto l = logits_from_probs(kProbs);
  s.sample(l);
  auto c = s.last_candidates();
  ASSERT_EQ(c.size(), 3u);
  // T = 0.5 squares the probabilities: 0.25, 0.04, 0.0225 before normalisation.
  double z = 0.25 + 0.04 + 0.0225;
  EXPECT_EQ(c[0].id, 1);
  EXPECT_NEAR(c[0].p, 0.25 / z, 1e-6);
  EXPECT_EQ(c[1].id, 3);
  EXPECT_NEAR(c[1].p, 0.04 / z, 1e-6);
  EXPECT_EQ(c[2].id, 4);
  EXPECT_NEAR(c[2].p, 0.0225 / z, 1e-6);
}

TEST(Sampler, RepeatPenaltyExact) {
  SamplerParams p = no_truncation(1.0f);
  p.repeat_penalty = 2.0f;
  Sampler s(p, 5);
  for (int32_t t : {0, 1, 0, 3}) s.accept(t);
  std::vector<float> l = {2.0f, -1.0f, 0.5f, 3.0f, -4.0f};
  s.sample(l);
  // Counts do not matter for the repeat penalty: each seen token is penalised once.
  EXPECT_FLOAT_EQ(l[0], 1.0f);
  EXPECT_FLOAT_EQ(l[1], -2.0f);
  EXPECT_FLOAT_EQ(l[2], 0.5f);
  EXPECT_FLOAT_EQ(l[3], 1.5f);
  EXPECT_FLOAT_EQ(l[4], -4.0f);
}

TEST(Sampler, PresenceAndFrequencyPenaltiesExact) {
  SamplerParams p = no_truncation(1.0f);
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  Sampler s(p, 4);
  for (int32_t t : {2, 2, 2, 0}) s.accept(t);
  std::vector<float> l = {1.0f, 1.0f, 1.0f, 1.0f};
  s.sample(l);
  EXPECT_FLOAT_EQ(l[0], 1.0f - 0.25f - 0.5f);
  EXPECT_FLOAT_EQ(l[1], 1.0f);
  EXPECT_FLOAT_EQ(l[2], 1.0f - 0.75f - 0.5f);
  EXPECT_FLOAT_EQ(l[3], 1.0f);
}

TEST(Sampler, RepeatPenaltyThenOpenAIPenalties) {
  SamplerParams p = no_truncation(1.0f);
  p.repeat_penalty = 1.25f;
  p.frequency_penalty = 0.1f;
  p.presence_penalty = 0.2f;
  Sampler s(p, 2);
  s.accept(1), s.accept(1);
  std::vector<float> l = {0.0f, 2.5f};
  s.sample(l);
  EXPECT_FLOAT_EQ(l[1], 2.5f / 1.25f - 0.2f - 0.2f);
}

TEST(Sampler, PenaltyWindowAndReset) {
  SamplerParams p = no_truncation(1.0f);
  p.frequency_penalty = 1.0f;
  p.repeat_last_n = 2;
  Sampler s(p, 3);
  for (int32_t t : {0, 0, 1, 2}) s.accept(t);  // window holds {1, 2}
  std::vector<float> l = {0.0f, 0.0f, 0.0f};
  s.sample(l);
  EXPECT_FLOAT_EQ(l[0], 0.0f);
  EXPECT_FLOAT_EQ(l[1], -1.0f);
  EXPECT_FLOAT_EQ(l[2], -1.0f);

  s.reset();
  std::vector<float> fresh = {0.0f, 0.0f, 0.0f};
  s.sample(fresh);
  EXPECT_EQ(fresh, (std::vector<float>{0.0f, 0.0f, 0.0f}));

  p.repeat_last_n = 0;  // penalties off
  Sampler off(p, 3);
  off.accept(1);
  std::vector<float> untouched = {0.0f, 0.0f, 0.0f};
  off.sample(untouched);
  EXPECT_FLOAT_EQ(untouched[1], 0.0f);

  p.repeat_last_n = -1;  // whole history
  Sampler all(p, 3);
  for (int i = 0; i < 500; ++i) all.accept(0);
  std::vector<float> heavy = {0.0f, 0.0f, 0.0f};
  all.sample(heavy);
  EXPECT_FLOAT_EQ(heavy[0], -500.0f);
}

TEST(Sampler, RejectsBadInput) {
  Sampler s(no_truncation(1.0f), 4);
  std::vector<float> wrong(3, 0.0f);
  EXPECT_THROW(s.sample(wrong), Error);
  std::vector<float> dead(4, -INFINITY);
  EXPECT_THROW(s.sample(dead), Error);
  EXPECT_THROW(Sampler(no_truncation(1.0f), 0), Error);
}

TEST(Sampler, LargeVocabularyWithAndWithoutTopK) {
  const int n = 150000;
  auto base = pseudo_random_logits(n, 11);
  for (int top_k : {40, 0}) {
    SamplerParams p;
    p.top_k = top_k;
    p.seed = 7;
    Sampler s(p, n);
    for (int i = 0; i < 5; ++i) {
      auto l = base;
      int32_t t = s.sample(l);
      ASSERT_GE(t, 0);
      ASSERT_LT(t, n);
    }
    // Everything kept is at least min_p of the best and sorted by probability.
    auto c = s.last_candidates();
    ASSERT_FALSE(c.empty());
    for (size_t i = 1; i < c.size(); ++i) EXPECT_LE(c[i].p, c[i - 1].p);
    if (top_k > 0) {
      EXPECT_LE(c.size(), 40u);
    }
  }
}

}  // namespace
}  // namespace uma
