// A fixed pool of worker threads for data-parallel loops. Decode runs one parallel_for per matrix, hundreds
// of times per token, so dispatch is a generation counter + spin-then-sleep wait rather than a task queue:
// workers pick up a new loop within microseconds and nothing is allocated per call.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
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

  // Calls fn(thread_index, begin, end) on contiguous chunks covering [0, n), chunked in multiples of
  // `grain`, one chunk per thread; the calling thread takes part. Returns when all chunks are done.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn);

  // Calls fn(thread_index, n_threads) once on every thread (for loops that split work themselves).
  void run_on_all(const std::function<void(int, int)>& fn);

 private:
  void worker(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int, int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
};

}  // namespace uma
