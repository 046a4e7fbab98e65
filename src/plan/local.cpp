#include "plan/local.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

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

}  // namespace

std::vector<Machine> detect_local_machines() { return local_machines(read_local_info(true), hardware_catalog()); }

Machine local_cpu_machine() {
  for (auto& m : local_machines(read_local_info(false), hardware_catalog()))
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
