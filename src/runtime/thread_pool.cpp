#include "runtime/thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace uma {
namespace {

// A hint to the core that this is a spin-wait (frees resources for the sibling hyper-thread).
inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

// Spin-wait step `spin`: mostly a pause, but every 256th step a real yield to the OS, so a waiter never
// starves a descheduled worker on an oversubscribed machine (and emulators such as qemu-user, which need
// threads to leave their translated loop now and then, make progress).
inline void spin_step(int spin) {
  if ((spin & 255) == 255) {
    std::this_thread::yield();
  } else {
    cpu_relax();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  n_threads_ = n_threads > 0 ? n_threads : std::max(1u, std::thread::hardware_concurrency());
  // UMA_MAX_THREADS caps every pool: containers with a CPU quota smaller than the visible cores, and
  // emulators (the aarch64 kernel tests run under qemu-user, whose thread creation hangs here).
  if (const char* cap = std::getenv("UMA_MAX_THREADS"); cap && std::atoi(cap) > 0)
    n_threads_ = std::min(n_threads_, std::atoi(cap));
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin briefly: between the matmuls of one token the next job arrives within microseconds.
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < 20000; ++spin) {
      spin_step(spin);
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      gen = generation_.load();
    }
    seen = gen;
    if (stop_) return;
    (*job_)(index, n_threads_);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::run_on_all(const std::function<void(int, int)>& fn) {
  if (n_threads_ == 1) {
    fn(0, 1);
    return;
  }
  job_ = &fn;
  pending_.store(n_threads_ - 1, std::memory_order_release);
  {
    std::lock_guard lock(mutex_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  wake_.notify_all();
  fn(0, n_threads_);
  // Spin while the others finish (microseconds when every thread has a core).
  for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) spin_step(spin);
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t units = (n + grain - 1) / grain;
  if (n_threads_ == 1 || units == 1) {
    fn(0, 0, n);
    return;
  }
  run_on_all([&](int t, int nt) {
    const int64_t per = (units + nt - 1) / nt;
    const int64_t b = std::min(n, t * per * grain), e = std::min(n, (t + 1) * per * grain);
    if (b < e) fn(t, b, e);
  });
}

}  // namespace uma
