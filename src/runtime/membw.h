// Measured memory read bandwidth: the ceiling for token generation, which streams every active weight from
// RAM once per token. `uma bench` reports achieved GB/s as a fraction of this.
#pragma once
#include <cstddef>
#include <cstdint>

namespace uma {

struct MemBandwidth {
  double read_gbps = 0;     // best pass, 1e9 bytes per second
  size_t buffer_bytes = 0;  // bytes read per pass
  int n_threads = 0;
  int passes = 0;
  int64_t prefetch_bytes = 0;  // software prefetch distance it read with (0: none)
};

// Streams a buffer of `buffer_bytes` (0: 1 GiB or a quarter of RAM, whichever is less — far larger than any
// last-level cache) with `n_threads` threads (0: all hardware threads), summing 64-bit words and prefetching
// ahead as the CPU decode kernels do (UMA_CPU_PREFETCH, 4 KB by default); returns the best of `passes` passes.
// The buffer is touched by the thread that later reads it (first-touch NUMA placement) and freed before returning.
MemBandwidth measure_read_bandwidth(int n_threads = 0, size_t buffer_bytes = 0, int passes = 5);

// The prefetch distance measure_read_bandwidth reads with (the CPU decode kernels' prefetch_distance): cached
// results of another distance are not comparable.
int64_t probe_prefetch_bytes();

}  // namespace uma
