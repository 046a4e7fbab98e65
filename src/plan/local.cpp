#include "plan/local.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <memory>
#include <sstream>
#include <thread>

#include "runtime/membw.h"
#include "uma/error.h"

namespace uma::plan {
namespace {

std::string read_text(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string run_capture(const char* cmd) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(popen(cmd, "r"), pclose);
  if (!pipe) return "";
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, pipe.get())) out += buf;
  return out;
}

LocalInfo read_local_info(bool query_gpus) {
  // "NVIDIA H100 80GB HBM3, 81559 MiB, 81000 MiB" per GPU; empty without NVIDIA's driver.
  const std::string smi = query_gpus ? run_capture(
      "command -v nvidia-smi >/dev/null 2>&1 && "
      "nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader 2>/dev/null") : "";
  return parse_local_info(read_text("/proc/meminfo"), static_cast<int>(std::thread::hardware_concurrency()), smi);
}

std::filesystem::path membw_cache_path() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::filesystem::path(x) / "uma" / "membw.json";
  if (const char* h = std::getenv("HOME"); h && *h) return std::filesystem::path(h) / ".cache" / "uma" / "membw.json";
  return {};
}

// The measured CPU bandwidth replaces the catalog's generic estimate (DDR channels guessed from the core count).
void apply_measured_bandwidth(std::vector<Machine>& machines, BandwidthSource source) {
  for (auto& m : machines)
    for (auto& d : m.devices)
      if (d.backend == Backend::cpu && d.detected)
        if (const double gbs = local_read_bandwidth_gbs(source); gbs > 0) d.bandwidth_gbs = gbs;
}

}  // namespace

double local_read_bandwidth_gbs(BandwidthSource source) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const auto path = membw_cache_path();
  if (!path.empty()) {
    std::ifstream in(path);
    const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
    // A cache written by another probe (before the probe prefetched as the kernels do, or with another
    // UMA_CPU_PREFETCH) measured something else: measure again.
    if (!j.is_discarded() && j.is_object() && j.value("cores", -1) == cores && j.value("read_gbps", 0.0) > 0 &&
        j.value("prefetch_bytes", int64_t{-1}) == probe_prefetch_bytes())
      return j["read_gbps"].get<double>();
  }
  if (source == BandwidthSource::cache_only) return 0;
  const MemBandwidth bw = measure_read_bandwidth(0, size_t{256} << 20, 3);
  if (!path.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    std::ofstream out(path);
    out << nlohmann::json{{"read_gbps", bw.read_gbps}, {"cores", cores}, {"threads", bw.n_threads},
                          {"buffer_bytes", bw.buffer_bytes}, {"passes", bw.passes},
                          {"prefetch_bytes", bw.prefetch_bytes}}.dump(2) << "\n";
  }
  return bw.read_gbps;
}

std::vector<Machine> detect_local_machines(BandwidthSource bandwidth) {
  auto machines = local_machines(read_local_info(true), hardware_catalog());
  apply_measured_bandwidth(machines, bandwidth);
  return machines;
}

Machine local_cpu_machine(BandwidthSource bandwidth) {
  auto machines = local_machines(read_local_info(false), hardware_catalog());
  apply_measured_bandwidth(machines, bandwidth);
  for (auto& m : machines)
    if (!m.devices.empty() && m.devices.front().backend == Backend::cpu) return m;
  fail("could not describe this machine's CPU and memory for planning (is /proc/meminfo readable?)");
}

PlanInputs inputs_for_gguf(const GgufFile& file) {
  PlanInputs in;
  in.model = shape_from_gguf(file);
  in.file_tensors = gguf_tensor_specs(file);
  for (const auto& t : file.tensors()) in.file_types.push_back(storage(t.type));
  in.quant_label = "as in file";
  return in;
}

}  // namespace uma::plan
