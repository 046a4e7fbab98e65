#include "runtime/membw.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "backend/cpu/matmul_kernels.h"
#include "runtime/thread_pool.h"
#include "uma/error.h"

namespace uma {
namespace {

size_t default_buffer_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const size_t ram = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
  const size_t gib = size_t{1} << 30;
  return ram > 0 ? std::min(gib, ram / 4) : gib;
}

// Sum of n words with eight independent accumulators, so that the adds never limit the load rate and the
// compiler can vectorise (SSE2 already reads 32 bytes per cycle per core, well above one core's share of DRAM
// bandwidth). One software prefetch `pf` bytes ahead per 64-byte line, as the CPU decode kernels read their
// weights (matmul_vnni.cpp, matmul_hwy.cpp: prefetch_distance(), 4 KB unless UMA_CPU_PREFETCH says otherwise):
// the hardware prefetchers stop at every 4 KB page, so a plain loop partly measures the stalls at each new page,
// which a core that streams from DRAM alone feels most (16-core Xeon: the kernels streamed F16 at 110 GB/s, the
// plain loop read 59-116 GB/s; docs/PERFORMANCE.md). On the 2-vCPU VM both read alike (~40-50 GB/s). Prefetching
// past the end of the slice is harmless (a prefetch never faults).
uint64_t sum_words(const uint64_t* p, size_t n, int64_t pf) {
  uint64_t a[8] = {};
  size_t i = 0;
  const char* bytes = reinterpret_cast<const char*>(p);
  if (pf > 0) {
    for (; i + 8 <= n; i += 8) {
      __builtin_prefetch(bytes + i * sizeof(uint64_t) + pf);
      for (int j = 0; j < 8; ++j) a[j] += p[i + j];
    }
  }
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) a[j] += p[i + j];
  for (; i < n; ++i) a[0] += p[i];
  uint64_t s = 0;
  for (uint64_t v : a) s += v;
  return s;
}

}  // namespace

int64_t probe_prefetch_bytes() { return std::max<int64_t>(0, cpu::prefetch_distance()); }

MemBandwidth measure_read_bandwidth(int n_threads, size_t buffer_bytes, int passes) {
  if (buffer_bytes == 0) buffer_bytes = default_buffer_bytes();
  buffer_bytes = std::max<size_t>(buffer_bytes, 1 << 20) / 4096 * 4096;
  passes = std::max(1, passes);
  std::unique_ptr<uint64_t, decltype(&std::free)> buf(
      static_cast<uint64_t*>(std::aligned_alloc(4096, buffer_bytes)), &std::free);
  if (!buf) fail("cannot allocate {} MiB to measure memory bandwidth; pass a smaller buffer", buffer_bytes >> 20);
  ThreadPool pool(n_threads);
  const size_t words = buffer_bytes / sizeof(uint64_t);
  const int nt = pool.size();
  const int64_t pf = probe_prefetch_bytes();
  auto slice = [&](int t) {
    const size_t per = (words / nt + 7) / 8 * 8;
    const size_t begin = std::min(words, per * t), end = std::min(words, begin + per);
    return std::pair{begin, end};
  };
  pool.run_on_all([&](int t, int) {
    const auto [b, e] = slice(t);
    for (size_t i = b; i < e; ++i) buf.get()[i] = i;
  });

  std::vector<uint64_t> sums(nt);
  double best = 1e30;
  for (int pass = 0; pass < passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.run_on_all([&](int t, int) {
      const auto [b, e] = slice(t);
      sums[t] += sum_words(buf.get() + b, e - b, pf);
    });
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  uint64_t total = 0;
  for (uint64_t s : sums) total += s;
  volatile uint64_t sink = total;  // the sums are used, so the loads cannot be optimised away
  (void)sink;
  MemBandwidth r;
  r.read_gbps = static_cast<double>(buffer_bytes) / best / 1e9;
  r.buffer_bytes = buffer_bytes;
  r.n_threads = nt;
  r.passes = passes;
  r.prefetch_bytes = pf;
  return r;
}

}  // namespace uma
