// Throughput measurement for `uma bench`, in llama-bench's terms: prompt processing (ppN: one batch of N
// tokens through the model on an empty cache) and text generation (tgN: N single-token steps from an empty
// cache), each the median over repeats, plus what the rates mean for the hardware — weight bytes streamed
// per generated token against measured memory bandwidth, and matmul FLOPs per token.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/membw.h"

namespace uma {

struct BenchOptions {
  int n_prompt = 512;  // 0: no pp test
  int n_gen = 128;     // 0: no tg test
  int repeats = 5;
  int depth = 0;       // tokens in the cache before each test (filled once, in prefill chunks of 512)
  bool measure_bandwidth = true;
  size_t bandwidth_buffer_bytes = 0;  // 0: measure_read_bandwidth's default
};

struct BenchTest {
  std::string name;   // "pp512", "tg128"; "tg32 @ d32768" at a depth
  int n_prompt = 0, n_gen = 0;
  std::vector<double> seconds;  // one per repeat
  double tps_median = 0, tps_mean = 0, tps_stddev = 0;
  double gbps = 0;           // tg: weight bytes per token x t/s; pp: 0 (weights are reused across the batch)
  double bw_fraction = 0;    // gbps / measured read bandwidth (tg only)
  double gflops = 0;         // matmul GFLOP/s: flops_per_token x t/s
};

struct BenchReport {
  std::string model_path, model_name, arch, type_name;  // type_name: general.file_type as llama.cpp names it
  size_t file_bytes = 0, weight_bytes = 0;
  int64_t n_params = 0;
  std::string backend;
  int n_threads = 0;
  // Weight bytes read per generated token, and where the figure comes from: "model" (Model::bytes_per_token)
  // or "estimate" (the model reports all its weights for a mixture of experts, so routed experts are scaled
  // here by expert_used_count / expert_count).
  size_t bytes_per_token = 0;
  std::string bytes_per_token_source;
  double flops_per_token = 0;  // 2 x active matrix parameters (attention's q·k and p·v are not counted)
  // Read bandwidth probed before and after the tests; `membw` is the better of the two (a busy moment on a shared
  // machine only ever lowers a probe). Both are kept so that a tool comparing runs can use the mean around the
  // tests (tools/calibrate_cpu.sh).
  MemBandwidth membw, membw_before, membw_after;
  std::vector<BenchTest> tests;
};

// Runs the tests on `engine` (its cache must hold depth + max(n_prompt, n_gen) tokens in sequence 0; sequence 0 is
// cleared). Tokens are random ids, as llama-bench uses; one token is run first to fault in the weights.
BenchReport run_bench(Engine& engine, const BenchOptions& options);

// Parameters of a model a la llama-bench: 6.74B, 260.1K ...
std::string format_count(double n);

}  // namespace uma
