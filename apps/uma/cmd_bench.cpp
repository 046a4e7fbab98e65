// uma bench: prompt-processing and generation speed of a model, as a llama-bench style table (or JSON),
// with the memory bandwidth the generation speed implies and how much of the machine's measured
// bandwidth that is.
#include <cstdio>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "runtime/bench.h"
#include "runtime/model_ref.h"
#include "uma/command.h"

namespace uma::app {
namespace {

struct BenchArgs {
  std::string model = kDefaultModel;
  BenchOptions options;
  int n_threads = 0;
  std::string device = "auto";
  std::string kv_type = "auto";
  size_t membw_mib = 0;
  bool no_membw = false;
  bool json = false;
};

nlohmann::json to_json(const BenchReport& r) {
  nlohmann::json tests = nlohmann::json::array();
  for (const auto& t : r.tests)
    tests.push_back({{"name", t.name}, {"n_prompt", t.n_prompt}, {"n_gen", t.n_gen}, {"seconds", t.seconds},
                     {"tps_median", t.tps_median}, {"tps_mean", t.tps_mean}, {"tps_stddev", t.tps_stddev},
                     {"gbps", t.gbps}, {"bw_fraction", t.bw_fraction}, {"gflops", t.gflops}});
  return {{"model", {{"path", r.model_path}, {"name", r.model_name}, {"arch", r.arch}, {"type", r.type_name},
                     {"file_bytes", r.file_bytes}, {"weight_bytes", r.weight_bytes}, {"n_params", r.n_params}}},
          {"backend", r.backend},
          {"threads", r.n_threads},
          {"bytes_per_token", r.bytes_per_token},
          {"bytes_per_token_source", r.bytes_per_token_source},
          {"flops_per_token", r.flops_per_token},
          {"membw", {{"read_gbps", r.membw.read_gbps}, {"buffer_bytes", r.membw.buffer_bytes},
                     {"threads", r.membw.n_threads}, {"passes", r.membw.passes},
                     {"prefetch_bytes", r.membw.prefetch_bytes}, {"before_gbps", r.membw_before.read_gbps},
                     {"after_gbps", r.membw_after.read_gbps}}},
          {"tests", tests}};
}

void print_table(const BenchReport& r) {
  const std::string model = fmt::format("{} {} {}", r.arch, format_count(static_cast<double>(r.n_params)), r.type_name);
  const double mib = r.file_bytes / (1024.0 * 1024.0);
  const std::string size = mib >= 1024 ? fmt::format("{:.2f} GiB", mib / 1024) : fmt::format("{:.2f} MiB", mib);
  fmt::print("| model | size | params | backend | threads | test | t/s | GB/s | % of bw | GFLOP/s |\n");
  fmt::print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const auto& t : r.tests) {
    const bool tg = t.n_gen > 0;
    const std::string gbps = tg ? fmt::format("{:.2f}", t.gbps) : "-";
    const std::string frac = tg && r.membw.read_gbps > 0 ? fmt::format("{:.0f}%", 100 * t.bw_fraction) : "-";
    fmt::print("| {} | {} | {} | {} | {} | {} | {:.2f} ± {:.2f} | {} | {} | {:.1f} |\n", model, size,
               format_count(static_cast<double>(r.n_params)), r.backend, r.n_threads, t.name, t.tps_median,
               t.tps_stddev, gbps, frac, t.gflops);
  }
  fmt::print("\nweights read per generated token: {:.3f} GB ({}); matmul FLOPs per token: {:.2f} G\n",
             r.bytes_per_token / 1e9,
             r.bytes_per_token_source == "model" ? "as the model reports it"
                                                 : "estimated: the model reports all weights, experts scaled "
                                                   "by used/count here",
             r.flops_per_token / 1e9);
  if (r.membw.read_gbps > 0)
    fmt::print("measured memory read bandwidth: {:.2f} GB/s ({} MiB buffer, {} threads, prefetch {} B, best of {}; "
               "before the tests {:.2f}, after {:.2f})\n",
               r.membw.read_gbps, r.membw.buffer_bytes >> 20, r.membw.n_threads, r.membw.prefetch_bytes,
               r.membw.passes, r.membw_before.read_gbps, r.membw_after.read_gbps);
}

int bench(BenchArgs a) {
  const auto path = resolve_model(a.model);
  EngineOptions eo;
  eo.n_threads = a.n_threads;
  eo.device = a.device;
  eo.kv_type = a.kv_type;
  // Room for the depth and the longer test plus a page; bench clears sequence 0 between runs.
  eo.n_ctx = ((a.options.depth + std::max(a.options.n_prompt, a.options.n_gen)) / KvCache::kPageSize + 1) *
             KvCache::kPageSize;
  auto engine = Engine::load(path, eo);
  a.options.measure_bandwidth = !a.no_membw;
  a.options.bandwidth_buffer_bytes = a.membw_mib << 20;
  const BenchReport report = run_bench(*engine, a.options);
  if (a.json) {
    std::puts(to_json(report).dump(2).c_str());
  } else {
    print_table(report);
  }
  return 0;
}

const RegisterCommand reg{{"bench", "Measure prompt and generation speed (llama-bench style)", [](CLI::App& sub) {
  auto a = std::make_shared<BenchArgs>();
  sub.add_option("-m,--model", a->model, "Model path or reference")->capture_default_str();
  sub.add_option("-p,--n-prompt", a->options.n_prompt, "Prompt tokens per pp test (0: skip)")->capture_default_str();
  sub.add_option("-n,--n-gen", a->options.n_gen, "Generated tokens per tg test (0: skip)")->capture_default_str();
  sub.add_option("-r,--repetitions", a->options.repeats, "Repeats of each test (median reported)")
      ->capture_default_str();
  sub.add_option("-t,--threads", a->n_threads, "CPU threads (0: all)")->capture_default_str();
  sub.add_option("--device", a->device, "cpu, cuda, cuda:N or auto (a GPU when the model fits)")->capture_default_str();
  sub.add_option("--kv-type", a->kv_type, "KV cache cells: f32, f16 or q8_0 (GPU only), or auto (f16 on a GPU)")->capture_default_str();
  sub.add_option("-d,--depth", a->options.depth, "Tokens in the context before each test (filled by prefill)")
      ->capture_default_str();
  sub.add_option("--membw-mib", a->membw_mib, "Buffer for the bandwidth measurement in MiB (0: min(1 GiB, RAM/4))")
      ->capture_default_str();
  sub.add_flag("--no-membw", a->no_membw, "Skip the memory bandwidth measurement");
  sub.add_flag("--json", a->json, "Print one JSON object instead of the table");
  return [a] { return bench(*a); };
}}};

}  // namespace
}  // namespace uma::app
