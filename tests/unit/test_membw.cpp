// The memory read-bandwidth probe (src/runtime/membw.h): it reads with the decode kernels' software prefetch
// distance (so `uma plan` and `uma bench` compare kernels with a probe that reads the same way), reports what it
// did, and rounds its buffer to whole pages; `uma plan`'s cache of it. The figure itself depends on the machine;
// only its sanity is checked.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <unistd.h>

#include "backend/cpu/matmul_kernels.h"
#include "plan/local.h"
#include "runtime/membw.h"

namespace uma {
namespace {

TEST(MemBandwidth, ReadsWithTheKernelsPrefetchDistance) {
  EXPECT_EQ(probe_prefetch_bytes(), std::max<int64_t>(0, cpu::prefetch_distance()));
  const char* env = std::getenv("UMA_CPU_PREFETCH");
  if (!env || !*env) {
    EXPECT_EQ(probe_prefetch_bytes(), 4096) << "the kernels' default distance";
  }
  const MemBandwidth bw = measure_read_bandwidth(2, size_t{4} << 20, 2);
  EXPECT_EQ(bw.prefetch_bytes, probe_prefetch_bytes());
}

TEST(MemBandwidth, ReportsWhatItMeasured) {
  struct Case {
    int threads;
    size_t buffer, expect_buffer;
    int passes, expect_passes;
  };
  const Case cases[] = {
      {1, size_t{4} << 20, size_t{4} << 20, 3, 3},
      {2, (size_t{3} << 20) + 100, size_t{3} << 20, 2, 2},  // whole 4 KiB pages
      {3, 1000, size_t{1} << 20, 0, 1},                      // at least 1 MiB and one pass
      {7, size_t{1} << 20, size_t{1} << 20, 1, 1},           // slices of unequal size, some threads' empty
  };
  for (const auto& c : cases) {
    const MemBandwidth bw = measure_read_bandwidth(c.threads, c.buffer, c.passes);
    EXPECT_EQ(bw.n_threads, c.threads);
    EXPECT_EQ(bw.buffer_bytes, c.expect_buffer);
    EXPECT_EQ(bw.passes, c.expect_passes);
    EXPECT_TRUE(std::isfinite(bw.read_gbps));
    // Between "it read something" and far above any memory system (a 1 MiB buffer can sit in cache).
    EXPECT_GT(bw.read_gbps, 0.1);
    EXPECT_LT(bw.read_gbps, 1e5);
  }
}

// `uma plan` caches the probe per core count and prefetch distance ($XDG_CACHE_HOME/uma/membw.json): a cache of
// this probe is used as is; one written by the older plain-loop probe (no prefetch_bytes) is measured again.
TEST(MemBandwidth, CacheIsKeyedByThePrefetchDistance) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("uma-membw-test-" + std::to_string(::getpid()));
  fs::create_directories(dir / "uma");
  const char* old_xdg = std::getenv("XDG_CACHE_HOME");
  const std::string saved = old_xdg ? old_xdg : "";
  ::setenv("XDG_CACHE_HOME", dir.c_str(), 1);
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  auto write_cache = [&](nlohmann::json j) { std::ofstream(dir / "uma" / "membw.json") << j.dump(); };

  write_cache({{"read_gbps", 12345.0}, {"cores", cores}, {"prefetch_bytes", probe_prefetch_bytes()}});
  EXPECT_EQ(plan::local_read_bandwidth_gbs(plan::BandwidthSource::cache_only), 12345.0);

  write_cache({{"read_gbps", 12345.0}, {"cores", cores}});  // the plain-loop probe's cache
  EXPECT_EQ(plan::local_read_bandwidth_gbs(plan::BandwidthSource::cache_only), 0.0);
  const double measured = plan::local_read_bandwidth_gbs(plan::BandwidthSource::probe_or_cache);
  EXPECT_GT(measured, 0.0);
  EXPECT_NE(measured, 12345.0);
  const auto j = nlohmann::json::parse(std::ifstream(dir / "uma" / "membw.json"));
  EXPECT_EQ(j["prefetch_bytes"].get<int64_t>(), probe_prefetch_bytes());
  EXPECT_EQ(j["read_gbps"].get<double>(), measured);
  EXPECT_EQ(plan::local_read_bandwidth_gbs(plan::BandwidthSource::cache_only), measured);

  if (old_xdg) ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
  else ::unsetenv("XDG_CACHE_HOME");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace uma
