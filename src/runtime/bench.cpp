#include "runtime/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "uma/error.h"

namespace uma {
namespace {

// llama.cpp's general.file_type numbering (LLAMA_FTYPE_*), for the model column.
std::string file_type_name(const GgufFile& f) {
  static const std::map<int64_t, const char*> names = {
      {0, "F32"},     {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},    {8, "Q5_0"},
      {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"}, {13, "Q3_K_L"}, {14, "Q4_K_S"},
      {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"}, {18, "Q6_K"},   {32, "BF16"},
  };
  if (f.has("general.file_type")) {
    const auto it = names.find(f.get_int("general.file_type"));
    if (it != names.end()) return it->second;
  }
  // Unknown: the type holding the most bytes.
  std::map<GgmlType, size_t> bytes;
  for (const auto& t : f.tensors()) bytes[t.type] += t.nbytes;
  const auto best = std::max_element(bytes.begin(), bytes.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; });
  return best == bytes.end() ? "?" : std::string(type_name(best->first));
}

// Routed-expert tensors ([.., .., n_expert]) are read only for the experts a token is sent to.
bool is_routed_expert(const std::string& name) { return name.find("_exps.") != std::string::npos; }

struct Stats {
  double median = 0, mean = 0, stddev = 0;
};

Stats stats(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  double ss = 0;
  for (double x : v) ss += (x - s.mean) * (x - s.mean);
  s.stddev = v.size() > 1 ? std::sqrt(ss / (v.size() - 1)) : 0.0;
  std::sort(v.begin(), v.end());
  const size_t m = v.size() / 2;
  s.median = v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
  return s;
}

}  // namespace

std::string format_count(double n) {
  if (n >= 1e9) return fmt::format("{:.2f} B", n / 1e9);
  if (n >= 1e6) return fmt::format("{:.2f} M", n / 1e6);
  if (n >= 1e3) return fmt::format("{:.2f} K", n / 1e3);
  return fmt::format("{:.0f}", n);
}

BenchReport run_bench(Engine& engine, const BenchOptions& o) {
  using Clock = std::chrono::steady_clock;
  const GgufFile& file = engine.file();
  Model& model = engine.model();
  KvCache& kv = engine.kv();
  const ModelConfig& c = model.config();
  if (o.n_prompt < 0 || o.n_gen < 0 || o.repeats < 1)
    fail("bench needs -p >= 0, -n >= 0 and -r >= 1 (got {}, {}, {})", o.n_prompt, o.n_gen, o.repeats);
  if (std::max(o.n_prompt, o.n_gen) > engine.n_ctx())
    fail("the engine's context of {} tokens is smaller than the test (-p {}, -n {}); load it with a larger context",
         engine.n_ctx(), o.n_prompt, o.n_gen);

  BenchReport r;
  r.model_path = file.path().string();
  r.model_name = c.name;
  r.arch = c.arch;
  r.type_name = file_type_name(file);
  r.file_bytes = file.file_size();
  r.weight_bytes = model.weight_bytes();
  r.backend = engine.backend().name();
  r.n_threads = engine.options().n_threads > 0 ? engine.options().n_threads
                                                : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

  // Parameters, active matrix parameters (FLOPs) and active bytes, from the file's tensor table.
  const bool tied = file.find_tensor("output.weight") == nullptr;
  const double expert_share = c.n_expert > 0 ? double(c.n_expert_used) / c.n_expert : 1.0;
  double active_matrix_params = 0, active_bytes = 0;
  for (const auto& t : file.tensors()) {
    r.n_params += t.n_elements();
    const double share = is_routed_expert(t.name) ? expert_share : 1.0;
    active_bytes += share * t.nbytes;
    const bool lookup_only = t.name == "token_embd.weight" && !tied;  // one row per token, no matmul
    if (t.n_dims >= 2 && !lookup_only) active_matrix_params += share * t.n_elements();
  }
  r.flops_per_token = 2 * active_matrix_params;
  r.bytes_per_token = model.bytes_per_token();
  r.bytes_per_token_source = "model";
  if (c.n_expert > 0 && r.bytes_per_token == model.weight_bytes()) {
    r.bytes_per_token = static_cast<size_t>(active_bytes);
    r.bytes_per_token_source = "estimate";
  }

  if (o.measure_bandwidth) r.membw = r.membw_before = measure_read_bandwidth(r.n_threads, o.bandwidth_buffer_bytes);

  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> token(0, c.n_vocab - 1);
  std::vector<float> logits;
  Batch batch;
  auto step = [&](int n_tokens, int pos0) {
    batch.clear();
    for (int i = 0; i < n_tokens; ++i) batch.add(token(rng), pos0 + i, 0, i + 1 == n_tokens);
    kv.reserve(0, pos0 + n_tokens);
    model.forward(batch, kv, logits, nullptr);
  };
  // Warm-up: the first pass faults the mapped weights in from the page cache. A GPU backend also runs one
  // untimed prompt pass (as llama-bench does): its first batched pass loads the GEMM kernels and sizes its
  // scratch buffers, which would otherwise land in the first timed repeat.
  kv.truncate(0, 0);
  step(1, 0);
  if (o.n_prompt > 0 && r.backend.rfind("cpu", 0) != 0) {
    kv.truncate(0, 0);
    step(std::min(o.n_prompt, static_cast<int>(engine.n_ctx())), 0);
  }
  // A context of `depth` tokens, kept by every test (each truncates back to it).
  const int d = std::max(0, o.depth);
  kv.truncate(0, 0);
  for (int pos = 0; pos < d; pos += 512) step(std::min(512, d - pos), pos);
  const std::string at_depth = d > 0 ? fmt::format(" @ d{}", d) : "";

  auto finish = [&](BenchTest& t, int n_tokens) {
    std::vector<double> tps;
    for (double s : t.seconds) tps.push_back(n_tokens / s);
    const Stats st = stats(tps);
    t.tps_median = st.median;
    t.tps_mean = st.mean;
    t.tps_stddev = st.stddev;
    t.gflops = r.flops_per_token * t.tps_median / 1e9;
    r.tests.push_back(std::move(t));
  };
  if (o.n_prompt > 0) {
    BenchTest t{.name = fmt::format("pp{}{}", o.n_prompt, at_depth), .n_prompt = o.n_prompt};
    for (int rep = 0; rep < o.repeats; ++rep) {
      kv.truncate(0, d);
      const auto t0 = Clock::now();
      step(o.n_prompt, d);
      t.seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    finish(t, o.n_prompt);
  }
  if (o.n_gen > 0) {
    BenchTest t{.name = fmt::format("tg{}{}", o.n_gen, at_depth), .n_gen = o.n_gen};
    for (int rep = 0; rep < o.repeats; ++rep) {
      kv.truncate(0, d);
      const auto t0 = Clock::now();
      for (int i = 0; i < o.n_gen; ++i) step(1, d + i);
      t.seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    finish(t, o.n_gen);
  }
  kv.truncate(0, 0);
  // Probe the bandwidth again after the tests and keep the better figure: on a shared or virtual machine a
  // single probe can land in a busy moment and understate the ceiling (seen: 38 vs 52 GB/s minutes apart).
  if (o.measure_bandwidth) {
    r.membw_after = measure_read_bandwidth(r.n_threads, o.bandwidth_buffer_bytes);
    if (r.membw_after.read_gbps > r.membw.read_gbps) r.membw = r.membw_after;
  }
  for (BenchTest& t : r.tests) {
    if (t.n_gen == 0) continue;
    t.gbps = static_cast<double>(r.bytes_per_token) * t.tps_median / 1e9;
    if (r.membw.read_gbps > 0) t.bw_fraction = t.gbps / r.membw.read_gbps;
  }
  return r;
}

}  // namespace uma
