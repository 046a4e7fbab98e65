// A fixed pool of worker threads for data-parallel loops. Decode runs one parallel_for per matrix, hundreds
// of times per token, so dispatch is a generation counter + spin-then-sleep wait rather than a task queue:
// workers pick up a new loop within microseconds and nothing is allocated per call.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace uma {

class ThreadPool {
 public:
  // n_threads <= 0: one per hardware thread. The environment variable UMA_MAX_THREADS caps it.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(thread_index, begin, end) on contiguous chunks covering [0, n), each a multiple of `grain`
  // long (except the last); the calling thread takes part. Chunks, long ones first, are claimed from a
  // shared counter, and the call returns as soon as every chunk is done: a worker that is descheduled, slow
  // to wake, or sharing its core with a hyper-thread sibling simply claims fewer (or none) instead of
  // holding everyone up. fn may therefore run several times on one thread, or only on the caller's.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn);

  // Calls fn(thread_index, size()) once on every thread (for loops that split work themselves, e.g. a
  // first-touch placement that later reads must match); waits for every worker, so a descheduled one
  // delays it.
  void run_on_all(const std::function<void(int, int)>& fn);

  // Optional timing of parallel regions (UMA_CPU_PROFILE).
  struct Stats {
    uint64_t regions = 0, chunks = 0, worker_chunks = 0;  // worker_chunks: run by threads other than the caller
    double wall_s = 0;                                    // summed over regions, caller's view
    double busy_s = 0;                                    // time inside fn, all threads
    double wake_s = 0;                                    // region start -> a worker's first chunk, summed
    uint64_t wakes = 0;
  };
  void enable_stats(bool on) { stats_on_ = on; }
  Stats stats() const;

 private:
  struct Loop {
    const std::function<void(int, int64_t, int64_t)>* fn = nullptr;
  };
  struct alignas(64) ThreadStats {  // written by its thread only (relaxed atomics: read while running)
    std::atomic<uint64_t> busy_ns{0}, chunks{0}, wake_ns{0}, wakes{0};
  };

  void worker(int index);
  // Claims and runs chunks of the current loop until none is left (run_on_all: runs this thread's one).
  void run_chunks(int index, uint64_t& last_pinned);
  void start_region(uint64_t chunks, bool pinned);

  int n_threads_;
  std::vector<std::thread> workers_;
  Loop loop_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  // Claims in one word: region (bits 33-63) | pinned (32) | chunk count (16-31) | next chunk (0-15). A worker
  // that wakes after its region ended fails its compare-exchange on the region and never touches the (gone)
  // loop; a successful claim keeps the region alive until that chunk is counted in done_. A pinned region
  // (run_on_all) has chunk i run by thread i, and the caller waits for all of them.
  alignas(64) std::atomic<uint64_t> claims_{0};
  alignas(64) std::atomic<int64_t> done_{0};
  alignas(64) std::atomic<int64_t> region_start_ns_{0};
  bool stats_on_ = false;
  uint64_t region_ = 0;
  int64_t spin_ns_ = 0;
  int chunks_per_thread_ = 0;    // 0: guided chunk sizes (see parallel_for)
  std::vector<int64_t> bounds_;  // chunk c of the running parallel_for is [bounds_[c], bounds_[c + 1])
  std::unique_ptr<ThreadStats[]> tstats_;
  uint64_t regions_ = 0;
  double wall_s_ = 0;
};

}  // namespace uma
