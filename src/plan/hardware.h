// Hardware catalog and machine descriptions for the planner.
// A Device is one catalog entry (data/hardware.json); a DeviceConfig is one concrete unit at one memory option (or
// detected on this machine); a Machine is the devices one model is split across (layer split).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace uma::plan {

enum class Backend { cpu, cuda, metal };
std::string_view backend_name(Backend backend);

struct MemoryOption {
  double gib = 0;
  // Per-option overrides (a smaller GPU bin ships with less memory bandwidth / fewer cores).
  std::optional<double> bandwidth_gbs, fp32_tflops, fp16_tflops, price_usd;
};

struct Device {
  std::string id, name, vendor;
  std::vector<std::string> aliases;
  Backend backend = Backend::cpu;
  bool unified_memory = false;  // weights live in system RAM (Apple, DGX Spark, CPU hosts)
  int cores = 0;                // CPU hosts
  std::vector<MemoryOption> memory_options;
  std::string memory_type;
  double bandwidth_gbs = 0, fp32_tflops = 0, fp16_tflops = 0;
  std::optional<double> int8_tops, fp8_tflops;
  int pcie_gen = 0;
  double link_gbs = 0;          // fastest device-to-device link (NVLink, network); 0: PCIe or none
  std::string interconnect;     // human-readable
  double power_w = 0;
  std::optional<double> price_usd;
  std::string launch;
  std::vector<std::string> estimated;  // fields that are estimates
  std::vector<std::string> sources;
};

// One unit of a device with everything the planner reads; plain numbers so tests can build them by hand.
struct DeviceConfig {
  std::string id;     // catalog id or "local-gpu0"/"local-cpu"
  std::string label;  // "Apple M2 Ultra (76-core GPU) 192GB"
  Backend backend = Backend::cpu;
  bool unified_memory = false;
  uint64_t memory_bytes = 0;  // physical capacity
  uint64_t usable_bytes = 0;  // what a model may use (after OS reserve / other processes)
  double bandwidth_gbs = 0, fp32_tflops = 0, fp16_tflops = 0, int8_tops = 0, fp8_tflops = 0;  // 0: absent
  double link_gbs = 0;        // to the next device in the split; 0: PCIe (pcie_gen) or none
  int pcie_gen = 0;
  double power_w = 0;
  double price_usd = 0;       // 0: unknown
  bool estimated = false;     // any figure is estimated
  bool detected = false;      // from --hw local
};

struct Machine {
  std::string label;                 // "2x NVIDIA GeForce RTX 4090"
  std::vector<DeviceConfig> devices; // the model is split across these, in order
};

// Memory the OS/driver keeps for itself, by kind. Apple: clamp(25 % of RAM, 4, 16) GiB (macOS caps GPU-wired
// memory near 75 % by default; above 64 GiB this assumes `sudo sysctl iogpu.wired_limit_mb` was raised, as is
// usual for large models). CPU hosts: clamp(10 %, 2, 16) GiB. Discrete GPUs: 0 (the runtime overhead covers it).
uint64_t os_reserve_bytes(Backend backend, bool unified_memory, uint64_t memory_bytes);

const std::vector<Device>& hardware_catalog();
std::vector<Device> parse_hardware_catalog(std::string_view json_text);
const Device* find_device(const std::vector<Device>& catalog, std::string_view id_or_alias);

// A catalog device at one memory option; gib = 0 picks the largest option.
DeviceConfig configure(const Device& device, double gib = 0);

// Parse one machine spec: "4090", "2x4090", "m2-ultra:192", "h100-sxm+h100-sxm", "4x h200". Throws uma::Error with
// the list of known ids when a name is unknown.
Machine parse_machine(std::string_view spec, const std::vector<Device>& catalog);
// Parse a comma-separated list of machines to compare.
std::vector<Machine> parse_machines(std::string_view specs, const std::vector<Device>& catalog);

// Local detection inputs, kept separate from reading /proc and nvidia-smi so it can be tested.
struct LocalGpu {
  std::string name;
  uint64_t total_bytes = 0, free_bytes = 0;
};
struct LocalInfo {
  uint64_t ram_total_bytes = 0, ram_available_bytes = 0;
  int cores = 0;
  std::vector<LocalGpu> gpus;
};
// Parse /proc/meminfo text and `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader` output.
LocalInfo parse_local_info(std::string_view meminfo, int cores, std::string_view nvidia_smi_csv);
// Build machines for this host: "local GPUs" (split across all CUDA GPUs) when any, and "local CPU". Figures the
// host cannot report (bandwidth, FLOPS) are matched from the catalog by GPU name, else generic estimates.
std::vector<Machine> local_machines(const LocalInfo& info, const std::vector<Device>& catalog);

}  // namespace uma::plan
