// ThreadPool: every index of a parallel_for runs exactly once, in chunks of whole grains, whatever the
// thread count (including more threads than cores, where workers start late and the caller does most of the
// work); run_on_all runs once on each thread.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "runtime/thread_pool.h"

namespace uma {
namespace {

TEST(ThreadPool, ParallelForCoversEachIndexOnce) {
  for (int threads : {1, 2, 3, 8, 16}) {
    ThreadPool pool(threads);
    for (int64_t n : {1, 2, 7, 64, 1000, 4096, 11008}) {
      for (int64_t grain : {1, 3, 16, 28}) {
        std::vector<std::atomic<int>> hits(n);
        pool.parallel_for(n, grain, [&](int t, int64_t b, int64_t e) {
          EXPECT_GE(t, 0);
          EXPECT_LT(t, pool.size());
          EXPECT_LT(b, e);
          EXPECT_TRUE(b % grain == 0) << "chunks start on a grain boundary";
          EXPECT_TRUE(e % grain == 0 || e == n);
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " threads, n " << n << " i " << i;
      }
    }
  }
}

// Thousands of tiny back-to-back loops, as decode issues: no chunk lost or run twice when workers wake late
// (the claims of one loop must never leak into the next).
TEST(ThreadPool, BackToBackLoops) {
  ThreadPool pool(6);
  std::vector<std::atomic<int64_t>> sum(64);
  for (int round = 0; round < 20000; ++round) {
    const int64_t n = 1 + round % 64;
    pool.parallel_for(n, 1, [&](int, int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) sum[i].fetch_add(round);
    });
    if (round % 1000 == 0) pool.run_on_all([&](int, int) {});
  }
  for (int64_t i = 0; i < 64; ++i) {
    int64_t expect = 0;
    for (int round = 0; round < 20000; ++round)
      if (i < 1 + round % 64) expect += round;
    EXPECT_EQ(sum[i].load(), expect) << i;
  }
}

TEST(ThreadPool, RunOnAllOncePerThread) {
  ThreadPool pool(5);
  for (int round = 0; round < 100; ++round) {
    std::mutex m;
    std::set<int> seen;
    std::set<std::thread::id> ids;
    pool.run_on_all([&](int t, int nt) {
      EXPECT_EQ(nt, 5);
      std::lock_guard lock(m);
      EXPECT_TRUE(seen.insert(t).second);
      ids.insert(std::this_thread::get_id());
    });
    EXPECT_EQ(seen.size(), 5u);
    EXPECT_EQ(ids.size(), 5u);  // each index on its own thread
    pool.parallel_for(100, 1, [](int, int64_t, int64_t) {});
  }
}

}  // namespace
}  // namespace uma
