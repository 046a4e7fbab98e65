#include "runtime/thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace uma {
namespace {

using Clock = std::chrono::steady_clock;

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

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

constexpr uint64_t kField = 0xFFFF;  // chunk count and next chunk: 16 bits each
constexpr uint64_t kPinned = uint64_t{1} << 32;

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  n_threads_ = n_threads > 0 ? n_threads : std::max(1u, std::thread::hardware_concurrency());
  // UMA_MAX_THREADS caps every pool: containers with a CPU quota smaller than the visible cores, and
  // emulators (the aarch64 kernel tests run under qemu-user, whose thread creation hangs here).
  if (const char* cap = std::getenv("UMA_MAX_THREADS"); cap && std::atoi(cap) > 0)
    n_threads_ = std::min(n_threads_, std::atoi(cap));
  n_threads_ = std::min(n_threads_, 4096);
  // How long an idle worker spins before it sleeps, in time rather than iterations: a pause takes ~10 cycles
  // on AMD cores and ~140 on Intel's since Skylake-SP. 1 ms covers the serial gaps between the matmuls of a
  // token (µs to tens of µs) with a wide margin; a sleeping worker costs a futex wake-up (5-50 µs in a VM).
  spin_ns_ = env_int("UMA_POOL_SPIN_US", 1000) * 1000;
  chunks_per_thread_ = static_cast<int>(std::clamp<int64_t>(env_int("UMA_POOL_CHUNKS", 0), 0, 64));
  bounds_.reserve(1024);
  tstats_ = std::make_unique<ThreadStats[]>(n_threads_);
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

ThreadPool::Stats ThreadPool::stats() const {
  Stats s;
  s.regions = regions_;
  s.wall_s = wall_s_;
  for (int t = 0; t < n_threads_; ++t) {
    const ThreadStats& ts = tstats_[t];
    s.busy_s += ts.busy_ns.load(std::memory_order_relaxed) * 1e-9;
    s.chunks += ts.chunks.load(std::memory_order_relaxed);
    if (t > 0) s.worker_chunks += ts.chunks.load(std::memory_order_relaxed);
    s.wake_s += ts.wake_ns.load(std::memory_order_relaxed) * 1e-9;
    s.wakes += ts.wakes.load(std::memory_order_relaxed);
  }
  return s;
}

void ThreadPool::run_chunks(int index, uint64_t& last_pinned) {
  ThreadStats& ts = tstats_[index];
  bool first = true;
  uint64_t v = claims_.load(std::memory_order_acquire);
  if (v & kPinned) {  // the caller waits for every thread, so this region is still running
    if (v >> 33 == last_pinned) return;
    last_pinned = v >> 33;
    (*loop_.fn)(index, index, index + 1);
    done_.fetch_add(1, std::memory_order_acq_rel);
    return;
  }
  for (;;) {
    const uint64_t next = v & kField, count = (v >> 16) & kField;
    if (next >= count || (v & kPinned)) return;  // pinned: a run_on_all began; the next generation runs it
    if (!claims_.compare_exchange_weak(v, v + 1, std::memory_order_acquire, std::memory_order_acquire)) continue;
    // Claimed: the region cannot end before this chunk is counted, so loop_ is this region's.
    const int64_t b = bounds_[next], e = bounds_[next + 1];
    if (!stats_on_) {
      (*loop_.fn)(index, b, e);
    } else {
      const int64_t t0 = now_ns();
      if (first && index > 0) {
        ts.wake_ns.fetch_add(t0 - region_start_ns_.load(std::memory_order_relaxed), std::memory_order_relaxed);
        ts.wakes.fetch_add(1, std::memory_order_relaxed);
      }
      (*loop_.fn)(index, b, e);
      ts.busy_ns.fetch_add(now_ns() - t0, std::memory_order_relaxed);
      ts.chunks.fetch_add(1, std::memory_order_relaxed);
    }
    first = false;
    done_.fetch_add(1, std::memory_order_acq_rel);
    v = claims_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0, last_pinned = 0;
  for (;;) {
    // Spin first: between the matmuls of one token the next loop arrives within microseconds. The clock is
    // read every 64 pauses only.
    uint64_t gen = generation_.load(std::memory_order_acquire);
    if (gen == seen) {
      const auto t0 = Clock::now();
      for (int spin = 0; gen == seen; ++spin) {
        spin_step(spin);
        gen = generation_.load(std::memory_order_acquire);
        if ((spin & 63) == 63 && Clock::now() - t0 > std::chrono::nanoseconds(spin_ns_)) break;
      }
    }
    if (gen == seen) {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      gen = generation_.load();
    }
    seen = gen;
    if (stop_) return;
    run_chunks(index, last_pinned);
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t units = (n + grain - 1) / grain;
  if (n_threads_ == 1 || units == 1) {
    fn(0, 0, n);
    return;
  }
  // Chunks of whole units. Guided (default): each chunk takes 1/(2T) of the units still unassigned, so the
  // first T chunks are long sequential streams and the last ones short, and the threads finish within a short
  // chunk of each other (with equal chunks the tail costs half a chunk: ~12 % of a 4096x4096 decode matmul
  // at 4 chunks per thread on 16 threads). UMA_POOL_CHUNKS=N: N equal chunks per thread instead.
  bounds_.clear();
  bounds_.push_back(0);
  const int64_t max_chunks = static_cast<int64_t>(kField);
  if (chunks_per_thread_ > 0) {
    const int64_t target = std::min<int64_t>(int64_t(chunks_per_thread_) * n_threads_, max_chunks);
    const int64_t per_chunk = (units + target - 1) / target;
    for (int64_t u = per_chunk; u < units + per_chunk; u += per_chunk) bounds_.push_back(std::min(n, u * grain));
  } else {
    const int64_t div = 2 * int64_t(n_threads_);
    for (int64_t u = 0; u < units;) {
      int64_t size = std::max<int64_t>(1, (units - u + div - 1) / div);
      if (int64_t(bounds_.size()) == max_chunks) size = units - u;
      u += size;
      bounds_.push_back(std::min(n, u * grain));
    }
  }
  const int64_t chunks = static_cast<int64_t>(bounds_.size()) - 1;
  const auto t0 = stats_on_ ? Clock::now() : Clock::time_point{};
  if (stats_on_) region_start_ns_.store(now_ns(), std::memory_order_relaxed);
  loop_ = Loop{&fn};
  start_region(static_cast<uint64_t>(chunks), false);
  uint64_t unused = 0;
  run_chunks(0, unused);
  // Wait for chunks claimed by others (microseconds when every thread has a core).
  for (int spin = 0; done_.load(std::memory_order_acquire) != chunks; ++spin) spin_step(spin);
  if (stats_on_) {
    regions_++;
    wall_s_ += std::chrono::duration<double>(Clock::now() - t0).count();
  }
}

void ThreadPool::start_region(uint64_t chunks, bool pinned) {
  done_.store(0, std::memory_order_relaxed);
  ++region_;
  claims_.store((region_ << 33) | (pinned ? kPinned : 0) | (chunks << 16), std::memory_order_release);
  // Wake the workers: spinning ones see the generation change, sleeping ones need the condition variable
  // (notify without waiters is a load; the mutex orders the change against a worker about to sleep).
  {
    std::lock_guard lock(mutex_);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  wake_.notify_all();
}

void ThreadPool::run_on_all(const std::function<void(int, int)>& fn) {
  const int nt = n_threads_;
  if (nt == 1) return fn(0, 1);
  const std::function<void(int, int64_t, int64_t)> each = [&](int t, int64_t, int64_t) { fn(t, nt); };
  loop_ = Loop{&each};
  start_region(static_cast<uint64_t>(nt), true);
  fn(0, nt);
  done_.fetch_add(1, std::memory_order_acq_rel);
  for (int spin = 0; done_.load(std::memory_order_acquire) != nt; ++spin) spin_step(spin);
}

}  // namespace uma
