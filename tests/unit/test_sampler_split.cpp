// The sampler split where a backend runs its first stages (Sampler::backend_top_k, Backend::top_k_row,
// Sampler::sample_candidates; for chains without top-k Backend::row_mass and Sampler::sample_head) against
// Sampler::sample on the same rows: the same tokens (and last_candidates), bit for bit, over rows with ties,
// NaN, -inf and signed zeros, with penalties and seeds.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <vector>

#include "backend/backend.h"
#include "sampling/sampler.h"
#include "sampling/top_k.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// xorshift32: deterministic, no <random> distribution involved.
struct Rng {
  uint32_t x;
  uint32_t next() {
    x ^= x << 13, x ^= x >> 17, x ^= x << 5;
    return x;
  }
};

// A row whose values come from a coarse grid (many exact ties), with NaN, -inf and zeros of both signs
// sprinkled in; `near_zero` rows put the signed zeros at the top, where top-k and greedy see them.
std::vector<float> nasty_row(int n, Rng& rng, bool near_zero) {
  std::vector<float> row(static_cast<size_t>(n));
  for (float& v : row) {
    const uint32_t r = rng.next();
    v = near_zero ? -float(r % 8) / 4.0f : float(r % 64) / 8.0f - 4.0f;
    switch (r >> 28) {
      case 0: v = std::numeric_limits<float>::quiet_NaN(); break;
      case 1: v = -kInf; break;
      case 2: v = 0.0f; break;
      case 3: v = -0.0f; break;
      default: break;
    }
  }
  return row;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct Case {
  float temperature;
  int top_k;
  float top_p, min_p;
  float repeat, frequency, presence;
  int repeat_last_n;
};

// Two samplers with the same parameters and seed, one sampling whole rows, the other the backend's k best
// (the default top_k_row, i.e. what the CPU backend runs), fed the same history: every token and every
// candidate list must be identical.
void expect_same_tokens(const Case& c, int n_vocab, uint64_t seed) {
  SamplerParams p;
  p.temperature = c.temperature;
  p.top_k = c.top_k;
  p.top_p = c.top_p;
  p.min_p = c.min_p;
  p.repeat_penalty = c.repeat;
  p.frequency_penalty = c.frequency;
  p.presence_penalty = c.presence;
  p.repeat_last_n = c.repeat_last_n;
  p.seed = seed;
  Sampler whole(p, n_vocab), split(p, n_vocab);
  const int k = split.backend_top_k();
  ASSERT_GT(k, 0);
  auto backend = make_cpu_backend(1);
  float* dev = backend->alloc(size_t(n_vocab));
  Rng rng{uint32_t(seed * 2654435761u) | 1u};
  // A history with repeats and ids outside the row (a control token without a logit is ignored).
  for (int32_t t : {3, 3, 5, -1, n_vocab + 7, n_vocab - 1, 3}) whole.accept(t), split.accept(t);
  std::vector<TokenLogit> candidates(static_cast<size_t>(k));
  std::set<int32_t> drawn;
  for (int step = 0; step < 40; ++step) {
    auto row = nasty_row(n_vocab, rng, step % 3 == 2);
    row[rng.next() % size_t(n_vocab)] = 5.0f;  // something finite to sample
    auto row_whole = row;
    const int32_t want = whole.sample(row_whole);
    backend->upload(dev, row.data(), row.size());
    backend->top_k_row(dev, n_vocab, k, split.penalties(), candidates.data());
    const int32_t got = split.sample_candidates(candidates);
    ASSERT_EQ(got, want) << "step " << step << ", vocab " << n_vocab << ", seed " << seed;
    const auto a = whole.last_candidates(), b = split.last_candidates();
    ASSERT_EQ(a.size(), b.size()) << "step " << step;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].id, b[i].id) << "step " << step << ", candidate " << i;
      ASSERT_TRUE(same_bits(a[i].p, b[i].p)) << "step " << step << ", candidate " << i;
    }
    whole.accept(want), split.accept(got);
    drawn.insert(got);
  }
  if (c.temperature > 0.0f && c.top_k > 1) {
    EXPECT_GT(drawn.size(), 3u) << "the draws should vary";
  }
  backend->free_buffer(dev);
}

// sort_top_k's two ways to the same order: nth_element + std::sort by ranks_before for small k, a radix sort
// of rank keys for k above n / 16 (a chain without top-k sorts the whole row: 12.6 -> 1.2 ms a token for
// 128,256 logits on the 2-vCPU VM). Both must give exactly the comparator's order and values, over rows full
// of ties, NaN, infinities and signed zeros.
TEST(SamplerSplit, RadixSortOfAWholeRowIsTheComparatorsOrder) {
  Rng rng{12345u};
  for (int n : {5000, 40000, 128256}) {
    auto row = nasty_row(n, rng, false);
    row[7] = kInf, row[n - 1] = kInf;  // equal +inf: by id
    std::vector<TokenLogit> want(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) want[size_t(i)] = {i, ranking_logit(row[size_t(i)])};
    std::sort(want.begin(), want.end(), ranks_before);
    for (size_t k : {size_t(40), size_t(n) / 16 + 1, size_t(n) / 2, size_t(n)}) {
      std::vector<TokenLogit> got;
      ASSERT_EQ(sort_top_k(row.data(), size_t(n), k, got), k);
      for (size_t i = 0; i < k; ++i) {
        ASSERT_EQ(got[i].id, want[i].id) << "n " << n << " k " << k << " rank " << i;
        ASSERT_TRUE(same_bits(got[i].logit, want[i].logit)) << "n " << n << " k " << k << " rank " << i;
      }
    }
  }
}

TEST(SamplerSplit, BackendTopKThenCandidatesEqualsSample) {
  const Case cases[] = {
      {0.8f, 40, 0.95f, 0.05f, 1.0f, 0.0f, 0.0f, 64},   // the defaults
      {0.8f, 40, 0.95f, 0.05f, 1.3f, 0.2f, 0.4f, 64},   // with every penalty
      {1.5f, 7, 1.0f, 0.0f, 1.1f, 0.0f, 0.0f, -1},      // top-k alone, whole-history repeat penalty
      {0.7f, 1, 0.9f, 0.1f, 1.0f, 0.5f, 0.0f, 16},      // top-1
      {1.0f, 256, 0.5f, 0.0f, 0.9f, 0.0f, 0.3f, 64},    // k larger than a small vocabulary's survivors
      {0.0f, 40, 0.95f, 0.05f, 1.2f, 0.1f, 0.1f, 64},   // greedy with penalties: k = 1
      {0.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0},       // plain greedy
  };
  for (const Case& c : cases)
    for (int n_vocab : {300, 5000})
      for (uint64_t seed : {1u, 77u, 4242u}) {
        SCOPED_TRACE(testing::Message() << "T " << c.temperature << " top_k " << c.top_k << " top_p " << c.top_p
                                        << " min_p " << c.min_p << " repeat " << c.repeat);
        expect_same_tokens(c, n_vocab, seed);
      }
}

// A row like a trained model's: most logits N(0, 2²), a handful well above them (the head holds most of the
// mass); `flat` rows have no such handful (most of the mass lies past the 256 best).
std::vector<float> model_row(int n, Rng& rng, bool flat) {
  std::vector<float> row(static_cast<size_t>(n));
  for (float& v : row) {
    // Sum of 4 uniforms in [-1, 1): mean 0, sd 2 / sqrt(3); coarse enough to tie now and then.
    float u = 0;
    for (int i = 0; i < 4; ++i) u += float(rng.next() % 1024) / 512.0f - 1.0f;
    v = 1.7f * u;
  }
  if (!flat)
    for (int i = 0; i < 6; ++i) row[rng.next() % size_t(n)] = 9.0f + float(rng.next() % 64) / 16.0f;
  return row;
}

// Chains over the whole row (no top-k) sampled from the backend's head and the row's mass
// (Sampler::sample_head), against sample() on the same rows: the same tokens, bit for bit, whether the head
// decides or the whole row is fetched.
TEST(SamplerSplit, HeadAndRowMassThenSampleHeadEqualsSample) {
  const Case cases[] = {
      {1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f, 64},    // OpenAI's defaults
      {0.7f, 0, 0.9f, 0.0f, 1.0f, 0.0f, 0.0f, 64},    // top-p
      {1.3f, 0, 1.0f, 0.05f, 1.0f, 0.0f, 0.0f, 64},   // min-p alone
      {0.8f, 0, 0.95f, 0.05f, 1.3f, 0.2f, 0.4f, 64},  // llama.cpp's chain without top-k, every penalty
      {2.0f, 0, 0.999f, 0.0f, 1.1f, 0.0f, 0.0f, -1},  // top-p close to 1 (the tail decides often)
  };
  auto backend = make_cpu_backend(1);
  uint64_t fast_peaked = 0, fallbacks_flat = 0, n_peaked = 0, n_flat = 0;
  for (const Case& c : cases)
    for (int n_vocab : {300, 5000, 128256})
      for (uint64_t seed : {3u, 99u}) {
        SCOPED_TRACE(testing::Message() << "T " << c.temperature << " top_p " << c.top_p << " min_p " << c.min_p
                                        << " vocab " << n_vocab << " seed " << seed);
        SamplerParams p;
        p.temperature = c.temperature, p.top_k = c.top_k, p.top_p = c.top_p, p.min_p = c.min_p;
        p.repeat_penalty = c.repeat, p.frequency_penalty = c.frequency, p.presence_penalty = c.presence;
        p.repeat_last_n = c.repeat_last_n, p.seed = seed;
        Sampler whole(p, n_vocab), split(p, n_vocab);
        ASSERT_TRUE(split.whole_row());
        const int k = split.backend_candidates();
        ASSERT_EQ(k, std::min(Sampler::kHead, n_vocab));
        float* dev = backend->alloc(size_t(n_vocab));
        Rng rng{uint32_t(seed * 2654435761u) | 1u};
        for (int32_t t : {3, 3, 5, -1, n_vocab + 7, n_vocab - 1, 3}) whole.accept(t), split.accept(t);
        std::vector<TokenLogit> head(static_cast<size_t>(k));
        const int steps = n_vocab > 100000 ? 12 : 40;
        for (int step = 0; step < steps; ++step) {
          const bool flat = step % 4 == 3, nasty = step % 7 == 6;
          auto row = nasty ? nasty_row(n_vocab, rng, false) : model_row(n_vocab, rng, flat);
          row[rng.next() % size_t(n_vocab)] = 5.0f;
          auto row_whole = row;
          const int32_t want = whole.sample(row_whole);
          backend->upload(dev, row.data(), row.size());
          backend->top_k_row(dev, n_vocab, k, split.penalties(), head.data());
          const RowMass mass = backend->row_mass(dev, n_vocab, head[0].logit, split.inv_temperature());
          const uint64_t before = split.whole_row_fallbacks();
          const int32_t got = split.sample_head(head, mass, [&](std::vector<float>& r) {
            r.resize(size_t(n_vocab));
            backend->download(r.data(), dev, r.size());
          });
          ASSERT_EQ(got, want) << "step " << step;
          const bool fell_back = split.whole_row_fallbacks() > before;
          if (n_vocab > Sampler::kHead && !nasty && c.temperature < 2.0f) {
            (flat ? n_flat : n_peaked) += 1;
            if (flat) fallbacks_flat += fell_back;
            else fast_peaked += !fell_back;
          }
          whole.accept(want), split.accept(got);
        }
        backend->free_buffer(dev);
      }
  // Both ways are exercised: the head decides most peaked rows (at temperature 2 with top-p 0.999 the tail
  // decides often, so that case is left out of the count); flat rows often need the whole row.
  EXPECT_GT(fast_peaked, n_peaked * 3 / 4) << fast_peaked << " of " << n_peaked;
  EXPECT_GT(fallbacks_flat, 0u) << "of " << n_flat;
}

// Draws that keep landing past the head rest it: once the running miss rate passes 7/8 (16 misses in a row
// from none), backend_candidates asks for the whole row (0) for the next 32 samples, then for the head again;
// a miss right after a rest gives a rest twice as long.
TEST(SamplerSplit, TheHeadRestsAfterDrawsPastIt) {
  const int n_vocab = 5000;
  SamplerParams p;
  p.temperature = 1.0f, p.top_k = 0, p.top_p = 1.0f, p.min_p = 0.0f, p.seed = 5;
  Sampler s(p, n_vocab);
  std::vector<float> flat(size_t(n_vocab), 0.0f);  // every token equally likely: the head holds ~5 %
  std::vector<TokenLogit> head;
  sort_top_k(flat.data(), flat.size(), Sampler::kHead, head);
  head.resize(Sampler::kHead);
  const RowMass mass = row_mass(flat.data(), flat.size(), 0.0f, 1.0);
  int samples = 0;
  while (s.backend_candidates() > 0 && samples < 1000) {
    s.sample_head(head, mass, [&](std::vector<float>& r) { r = flat; });
    ++samples;
  }
  EXPECT_EQ(s.backend_candidates(), 0);
  EXPECT_GE(s.whole_row_fallbacks(), 16u);
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(s.backend_candidates(), 0) << i;
    auto row = flat;
    s.sample(row);
  }
  EXPECT_EQ(s.backend_candidates(), Sampler::kHead);
  // The first try after the rest misses again (p ~ 0.95): the next rest is twice as long.
  uint64_t before = s.whole_row_fallbacks();
  while (s.whole_row_fallbacks() == before) s.sample_head(head, mass, [&](std::vector<float>& r) { r = flat; });
  for (int i = 0; i < 64; ++i) {
    EXPECT_EQ(s.backend_candidates(), 0) << i;
    auto row = flat;
    s.sample(row);
  }
  EXPECT_EQ(s.backend_candidates(), Sampler::kHead);
}

// RowMass against the exact sums (double exponentials) over rows with NaN, -inf and wide ranges: within a
// tenth of the error the sampler allows for.
TEST(SamplerSplit, RowMassIsWithinItsBound) {
  Rng rng{777u};
  for (double inv_t : {1.0, 1.0 / 0.7, 1.0 / 2.5, 100.0}) {
    for (int n : {10, 5000, 128256}) {
      auto row = n % 2 ? nasty_row(n, rng, false) : model_row(n, rng, false);
      std::vector<TokenLogit> top;
      sort_top_k(row.data(), row.size(), 1, top);
      const float mx = top[0].logit;
      const RowMass e = test::exact_row_mass(row, mx, inv_t);
      const RowMass m = row_mass(row.data(), row.size(), mx, inv_t);
      EXPECT_LE(std::abs(m.sum1 - e.sum1), kRowMassError / 10 * e.sum1) << n << " " << inv_t;
      EXPECT_LE(std::abs(m.sum_t - e.sum_t), kRowMassError / 10 * e.sum_t) << n << " " << inv_t;
      EXPECT_GE(m.sum1, 1.0);
      EXPECT_GE(m.sum_t, 1.0);
    }
  }
}

TEST(SamplerSplit, BackendTopKSaysWhenTheRowIsNeeded) {
  SamplerParams p;
  p.top_k = 40;
  EXPECT_EQ(Sampler(p, 1000).backend_top_k(), 40);
  EXPECT_EQ(Sampler(p, 40).backend_top_k(), 0) << "top_k >= vocab: top-k is off, top-p sees the whole row";
  p.top_k = 0;
  EXPECT_EQ(Sampler(p, 1000).backend_top_k(), 0);
  EXPECT_TRUE(Sampler(p, 1000).whole_row());
  EXPECT_EQ(Sampler(p, 1000).backend_candidates(), Sampler::kHead) << "the head, with the row's mass";
  EXPECT_EQ(Sampler(p, 100).backend_candidates(), 100) << "a vocabulary smaller than the head";
  p.temperature = 0.0f;
  EXPECT_EQ(Sampler(p, 1000).backend_top_k(), 1) << "greedy is top-1";
}

TEST(SamplerSplit, PenaltiesListDistinctTokensOfTheWindow) {
  SamplerParams p;
  p.repeat_penalty = 1.5f;
  p.repeat_last_n = 4;
  Sampler s(p, 10);
  for (int32_t t : {9, 2, 7, 2, 7, 7}) s.accept(t);  // window: 7 2 7 7
  const LogitPenalties pen = s.penalties();
  ASSERT_EQ(pen.n, 2);
  EXPECT_EQ(pen.ids[0], 2);
  EXPECT_EQ(pen.counts[0], 1);
  EXPECT_EQ(pen.ids[1], 7);
  EXPECT_EQ(pen.counts[1], 3);
  EXPECT_EQ(pen.repeat, 1.5f);
  p.repeat_penalty = 1.0f;  // no penalty changes a logit: nothing to list
  Sampler off(p, 10);
  off.accept(3);
  EXPECT_FALSE(off.penalties().active());
}

TEST(SamplerSplit, TopKRowOrderAndChecks) {
  auto backend = make_cpu_backend(1);
  const std::vector<float> row = {1.0f, std::nanf(""), -0.0f, 2.0f, 0.0f, -kInf, 2.0f, -1.0f};
  float* dev = backend->alloc(row.size());
  backend->upload(dev, row.data(), row.size());
  const int32_t ids[] = {7, 3, 42};
  const int32_t counts[] = {2, 1, 5};
  LogitPenalties pen{.ids = ids, .counts = counts, .n = 3, .repeat = 2.0f, .frequency = 0.5f};
  std::vector<TokenLogit> out(row.size());
  backend->top_k_row(dev, int64_t(row.size()), int(row.size()), pen, out.data());
  // 3: 2 / 2 - 0.5 = 0.5; 7: -1 * 2 - 1 = -3; 42 is outside the row. -0 ranks as +0, NaN as -inf.
  const int32_t want_ids[] = {6, 0, 3, 2, 4, 7, 1, 5};
  const float want_logits[] = {2.0f, 1.0f, 0.5f, 0.0f, 0.0f, -3.0f, -kInf, -kInf};
  for (size_t i = 0; i < row.size(); ++i) {
    EXPECT_EQ(out[i].id, want_ids[i]) << i;
    EXPECT_TRUE(same_bits(out[i].logit, want_logits[i])) << i << ": " << out[i].logit;
  }
  EXPECT_THROW(backend->top_k_row(dev, int64_t(row.size()), 0, pen, out.data()), Error);
  EXPECT_THROW(backend->top_k_row(dev, int64_t(row.size()), 9, pen, out.data()), Error);
  backend->free_buffer(dev);
}

}  // namespace
}  // namespace uma
