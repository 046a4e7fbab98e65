// Scheduler: continuous batching gives the same tokens as the one-sequence generate() loop (greedy and
// seeded, one request or many at once), prefix reuse changes nothing but the work done, cancellation and
// errors never leak a slot.
#include <gtest/gtest.h>

#include <future>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "runtime/scheduler.h"
#include "test_support.h"
#include "uma/error.h"

namespace uma {
namespace {

std::filesystem::path model_path() { return test::shared_dir() / "models" / "stories260K.gguf"; }

std::unique_ptr<Engine> load(int n_seq, int64_t n_ctx = 256) {
  EngineOptions o;
  o.n_threads = 1;
  o.n_seq = n_seq;
  o.n_ctx = n_ctx;
  return Engine::load(model_path(), o);
}

SamplerParams greedy() {
  SamplerParams p;
  p.temperature = 0;
  return p;
}

SamplerParams seeded(uint64_t seed) {
  SamplerParams p;
  p.temperature = 1.0f;
  p.seed = seed;
  return p;
}

// The reference: the plain generation loop on a one-sequence engine.
std::vector<TokenId> reference(const std::vector<TokenId>& prompt, const SamplerParams& sp, int n_predict) {
  static auto engine = load(1);
  GenerateOptions go;
  go.n_predict = n_predict;
  go.sampling = sp;
  return generate(*engine, 0, prompt, go, nullptr).tokens;
}

// Submits a request and returns a future for its completion.
std::future<Completion> submit(Scheduler& s, std::vector<TokenId> prompt, const SamplerParams& sp, int n_predict,
                               std::function<bool(TokenId)> on_token = nullptr, uint64_t* id = nullptr) {
  auto done = std::make_shared<std::promise<Completion>>();
  Request r;
  r.prompt = std::move(prompt);
  r.sampling = sp;
  r.n_predict = n_predict;
  r.on_token = std::move(on_token);
  r.on_done = [done](const Completion& c) { done->set_value(c); };
  const uint64_t i = s.submit(std::move(r));
  if (id) *id = i;
  return done->get_future();
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(model_path())) GTEST_SKIP() << "missing " << model_path();
  }
  std::vector<TokenId> encode(const Engine& e, const std::string& text) {
    return e.tokenizer().encode(text, true, false);
  }
};

// An f16 KV cache halves the bytes; the CPU backend keeps f32 cells and says so instead of misreading them.
TEST(KvCacheCells, F16HalvesTheBytesAndTheCpuRefusesIt) {
  auto cpu = make_cpu_backend(1);
  KvCacheOptions o;
  o.n_layer = 2, o.n_cells = 64, o.k_width = 32, o.v_width = 16;
  EXPECT_EQ(KvCache(*cpu, o).bytes(), size_t(2 * 64 * 48 * 4));
  o.f16 = true;
  try {
    KvCache kv(*cpu, o);
    FAIL() << "the CPU backend accepted an f16 cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-type f32"), std::string::npos) << e.what();
  }
}

// 8-bit cells (KvCacheOptions::q8) need a backend that keeps them: the CPU says so.
TEST(KvCacheCells, TheCpuRefusesEightBitCells) {
  auto cpu = make_cpu_backend(1);
  KvCacheOptions o;
  o.n_layer = 2, o.n_cells = 64, o.k_width = 64, o.v_width = 32, o.q8 = true;
  try {
    KvCache kv(*cpu, o);
    FAIL() << "the CPU backend accepted an 8-bit cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--kv-type auto"), std::string::npos) << e.what();
  }
}

TEST_F(SchedulerTest, OneRequestMatchesGenerate) {
  auto engine = load(2);
  Scheduler s(*engine);
  const auto prompt = encode(*engine, "Once upon a time");
  std::vector<TokenId> streamed;
  auto c = submit(s, prompt, greedy(), 40, [&](TokenId t) { streamed.push_back(t); return true; }).get();
  EXPECT_EQ(c.tokens, reference(prompt, greedy(), 40));
  EXPECT_EQ(streamed, c.tokens);
  EXPECT_EQ(c.n_prompt, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(c.finish, FinishReason::Length);
  EXPECT_EQ(s.stats().slots_busy, 0);
}

TEST_F(SchedulerTest, ConcurrentRequestsMatchSequentialOnes) {
  auto engine = load(4);
  SchedulerOptions so;
  so.n_batch = 7;  // small, so that prompt chunks of several slots and decode tokens mix in one step
  Scheduler s(*engine, so);
  const std::vector<std::string> texts = {"Once upon a time", "The little dog", "Lily and Tom went to the park",
                                          "One day", "A big red ball", "The sun was hot and the bird sang"};
  std::vector<std::future<Completion>> futures;
  std::vector<std::vector<TokenId>> expected;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto prompt = encode(*engine, texts[i]);
    const SamplerParams sp = i % 2 ? seeded(100 + i) : greedy();
    const int n = 20 + static_cast<int>(i) * 7;
    expected.push_back(reference(prompt, sp, n));
    futures.push_back(submit(s, prompt, sp, n));  // six requests, four slots: two wait in the queue
  }
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(futures[i].get().tokens, expected[i]) << texts[i];
  const auto st = s.stats();
  EXPECT_EQ(st.slots_busy, 0);
  EXPECT_EQ(st.queued, 0);
  EXPECT_EQ(st.requests_finished, texts.size());
  EXPECT_GT(st.batch_tokens, st.steps);  // steps really were shared
}

// Penalties and top-k next to the logits (Model::forward_top_k_rows; on the CPU the backend's default runs
// them) give each sequence of a shared step the tokens the whole-row host path gives: greedy, top-k with
// penalties, and a chain without top-k (top-p over the whole row), whose steps fall back to whole rows.
TEST_F(SchedulerTest, SamplingNextToTheLogitsGivesTheSameTokens) {
  std::vector<SamplerParams> params(4);
  params[0] = greedy();
  params[1] = seeded(7);
  params[1].top_k = 20, params[1].repeat_penalty = 1.3f, params[1].presence_penalty = 0.4f;
  params[2] = seeded(8);
  params[2].top_k = 5, params[2].top_p = 0.9f, params[2].frequency_penalty = 0.2f;
  params[3] = seeded(9);
  params[3].top_k = 0, params[3].top_p = 0.8f;  // the head and the row's mass (Sampler::sample_head)
  const std::vector<std::string> texts = {"Once upon a time", "The little dog", "Lily and Tom went", "One day"};
  std::vector<std::vector<TokenId>> got[2];
  SchedulerStats stats[2];
  for (int backend : {1, 0}) {
    auto engine = load(4);
    SchedulerOptions so;
    so.n_batch = 9;
    so.backend_sampling = backend;
    Scheduler s(*engine, so);
    std::vector<std::future<Completion>> futures;
    // The first three alone first (every step on the backend), then all four together.
    for (int round = 0; round < 2; ++round) {
      for (size_t i = 0; i < (round ? 4 : 3); ++i) futures.push_back(submit(s, encode(*engine, texts[i]), params[i], 24));
      for (size_t i = futures.size() - (round ? 4 : 3); i < futures.size(); ++i) got[backend].push_back(futures[i].get().tokens);
    }
    stats[backend] = s.stats();
  }
  ASSERT_EQ(got[1].size(), 7u);
  for (size_t i = 0; i < got[1].size(); ++i) EXPECT_EQ(got[1][i], got[0][i]) << "request " << i;
  EXPECT_EQ(stats[0].steps_backend_sampled, 0u);
  EXPECT_GT(stats[1].steps_backend_sampled, 0u);
  EXPECT_EQ(stats[1].steps_backend_sampled, stats[1].steps);  // the top-p-only request's steps too
}

TEST_F(SchedulerTest, PrefixReuseKeepsTheTokens) {
  auto engine = load(2);
  Scheduler s(*engine);
  const std::string system = "Once upon a time, there was a little girl named Lily. She liked to play outside "
                             "with her friends in the big green park near her house.";
  const auto a = encode(*engine, system + " One day");
  const auto b = encode(*engine, system + " Her mom said");
  ASSERT_GT(a.size(), 2u * KvCache::kPageSize);
  auto ca = submit(s, a, greedy(), 10).get();
  EXPECT_EQ(ca.n_cached, 0);
  auto cb = submit(s, b, greedy(), 30).get();
  EXPECT_GE(cb.n_cached, KvCache::kPageSize);
  EXPECT_EQ(cb.n_cached % KvCache::kPageSize, 0);
  EXPECT_EQ(cb.tokens, reference(b, greedy(), 30));
  // The same prompt again reuses all whole pages but the one with the last token.
  auto cb2 = submit(s, b, seeded(7), 30).get();
  EXPECT_EQ(cb2.n_cached, static_cast<int64_t>((b.size() - 1) / KvCache::kPageSize * KvCache::kPageSize));
  EXPECT_EQ(cb2.tokens, reference(b, seeded(7), 30));
  EXPECT_GT(s.stats().prompt_tokens_cached, 0u);
}

TEST_F(SchedulerTest, SharesPagesOfARunningSlot) {
  auto engine = load(3);
  Scheduler s(*engine);
  const std::string system = "Once upon a time, there was a little girl named Lily. She liked to play outside "
                             "with her friends in the big green park near her house.";
  const auto a = encode(*engine, system + " One day");
  // The first request generates long enough that the second one arrives while it runs.
  std::promise<void> started;
  int seen = 0;
  auto fa = submit(s, a, greedy(), 150, [&](TokenId) {
    if (++seen == 1) started.set_value();
    return true;
  });
  started.get_future().wait();
  const auto b = encode(*engine, system + " The cat");
  auto cb = submit(s, b, seeded(3), 20).get();
  EXPECT_GE(cb.n_cached, KvCache::kPageSize);
  EXPECT_EQ(cb.tokens, reference(b, seeded(3), 20));
  EXPECT_EQ(fa.get().tokens, reference(a, greedy(), 150));
}

TEST_F(SchedulerTest, CancelStopsAndFreesTheSlot) {
  auto engine = load(1);
  Scheduler s(*engine);
  const auto prompt = encode(*engine, "Once upon a time");
  int n = 0;
  auto c = submit(s, prompt, greedy(), 100, [&](TokenId) { return ++n < 3; }).get();
  EXPECT_EQ(c.finish, FinishReason::Cancelled);
  EXPECT_EQ(c.tokens.size(), 3u);

  // cancel() from another thread: one running, one still queued behind it (one slot only).
  std::promise<void> started;
  int m = 0;
  uint64_t running_id = 0, queued_id = 0;
  auto running = submit(s, prompt, greedy(), -1, [&](TokenId) {
    if (++m == 1) started.set_value();
    return true;
  }, &running_id);
  auto queued = submit(s, prompt, greedy(), 10, nullptr, &queued_id);
  started.get_future().wait();
  s.cancel(queued_id);
  s.cancel(running_id);
  EXPECT_EQ(queued.get().finish, FinishReason::Cancelled);
  EXPECT_EQ(running.get().finish, FinishReason::Cancelled);
  s.cancel(12345);  // unknown: ignored
  const auto st = s.stats();
  EXPECT_EQ(st.slots_busy, 0);
  EXPECT_EQ(st.requests_cancelled, 3u);
  // The slot still works.
  EXPECT_EQ(submit(s, prompt, greedy(), 5).get().tokens, reference(prompt, greedy(), 5));
}

TEST_F(SchedulerTest, StopsWhenTheContextIsFull) {
  auto engine = load(2, 32);
  Scheduler s(*engine);
  const auto prompt = encode(*engine, "Once upon a time");
  auto c = submit(s, prompt, greedy(), -1).get();
  EXPECT_EQ(c.finish, FinishReason::Length);
  EXPECT_EQ(static_cast<int64_t>(prompt.size() + c.tokens.size()), 33);  // the last token is sampled, not fed
}

TEST_F(SchedulerTest, RejectsBadPrompts) {
  auto engine = load(1, 32);
  Scheduler s(*engine);
  EXPECT_THROW(s.submit(Request{}), Error);
  Request too_long;
  too_long.prompt.assign(33, 1);
  EXPECT_THROW(s.submit(too_long), Error);
  Request bad_token;
  bad_token.prompt = {1, 1 << 30};
  EXPECT_THROW(s.submit(bad_token), Error);
  EXPECT_EQ(s.stats().requests_submitted, 0u);
}

TEST_F(SchedulerTest, DestructorEndsEverything) {
  auto engine = load(1);
  std::vector<std::future<Completion>> futures;
  {
    Scheduler s(*engine);
    const auto prompt = encode(*engine, "Once upon a time");
    for (int i = 0; i < 3; ++i) futures.push_back(submit(s, prompt, greedy(), -1));
  }
  for (auto& f : futures) EXPECT_EQ(f.get().finish, FinishReason::Cancelled);
}

}  // namespace
}  // namespace uma
