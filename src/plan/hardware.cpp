#include "plan/hardware.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "plan/plan_data.h"
#include "uma/error.h"

namespace uma::plan {
namespace {

using nlohmann::json;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::optional<double> opt_num(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  return it->get<double>();
}

double num(const json& j, const char* key, const std::string& id) {
  auto v = opt_num(j, key);
  if (!v) fail("hardware catalog entry '{}' lacks '{}'; fix data/hardware.json", id, key);
  return *v;
}

std::string known_ids(const std::vector<Device>& catalog) {
  std::string out;
  for (const auto& d : catalog) out += (out.empty() ? "" : ", ") + d.id;
  return out;
}

double parse_double(std::string_view s, std::string_view what) {
  double v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (r.ec != std::errc() || r.ptr != s.data() + s.size()) fail("'{}' in '{}' is not a number", s, what);
  return v;
}

}  // namespace

std::string_view backend_name(Backend b) {
  switch (b) {
    case Backend::cpu: return "cpu";
    case Backend::cuda: return "cuda";
    case Backend::metal: return "metal";
  }
  return "?";
}

uint64_t os_reserve_bytes(Backend backend, bool unified, uint64_t memory) {
  auto clamp = [&](double frac, double lo_gib, double hi_gib) {
    return static_cast<uint64_t>(std::clamp(frac * static_cast<double>(memory), lo_gib * kGiB, hi_gib * kGiB));
  };
  if (backend == Backend::metal) return clamp(0.25, 4, 16);
  if (unified) return clamp(0.10, 2, 16);  // CPU hosts and unified-memory GPUs share RAM with the OS
  return 0;
}

std::vector<Device> parse_hardware_catalog(std::string_view text) {
  json doc = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("devices")) fail("the hardware catalog is not valid JSON with a 'devices' array; fix data/hardware.json");
  std::vector<Device> out;
  for (const auto& j : doc["devices"]) {
    Device d;
    d.id = j.at("id").get<std::string>();
    d.name = j.value("name", d.id);
    d.vendor = j.value("vendor", "");
    if (j.contains("aliases"))
      for (const auto& a : j["aliases"]) d.aliases.push_back(lower(a.get<std::string>()));
    const std::string be = j.value("backend", "cpu");
    d.backend = be == "cuda" ? Backend::cuda : be == "metal" ? Backend::metal : Backend::cpu;
    if (be != "cuda" && be != "metal" && be != "cpu") fail("hardware '{}' has unknown backend '{}'; use cpu, cuda or metal", d.id, be);
    d.unified_memory = j.value("unified_memory", false);
    d.cores = j.value("cores", 0);
    for (const auto& m : j.at("memory_options")) {
      MemoryOption o;
      o.gib = m.at("gib").get<double>();
      o.bandwidth_gbs = opt_num(m, "bandwidth_gbs");
      o.fp32_tflops = opt_num(m, "fp32_tflops");
      o.fp16_tflops = opt_num(m, "fp16_tflops");
      o.price_usd = opt_num(m, "price_usd");
      d.memory_options.push_back(o);
    }
    if (d.memory_options.empty()) fail("hardware '{}' has no memory_options; fix data/hardware.json", d.id);
    d.memory_type = j.value("memory_type", "");
    d.bandwidth_gbs = num(j, "bandwidth_gbs", d.id);
    d.fp32_tflops = num(j, "fp32_tflops", d.id);
    d.fp16_tflops = num(j, "fp16_tflops", d.id);
    d.int8_tops = opt_num(j, "int8_tops");
    d.fp8_tflops = opt_num(j, "fp8_tflops");
    if (j.contains("interconnect")) {
      const auto& ic = j["interconnect"];
      d.pcie_gen = ic.value("pcie_gen", 0);
      d.link_gbs = opt_num(ic, "nvlink_gbs").value_or(opt_num(ic, "network_gbs").value_or(0));
      std::vector<std::string> parts;
      if (d.pcie_gen) parts.push_back("PCIe " + std::to_string(d.pcie_gen));
      if (auto v = opt_num(ic, "nvlink_gbs")) parts.push_back("NVLink " + std::to_string(static_cast<int>(*v)) + " GB/s");
      if (auto v = opt_num(ic, "thunderbolt")) parts.push_back("Thunderbolt " + std::to_string(static_cast<int>(*v)));
      if (auto v = opt_num(ic, "network_gbs")) parts.push_back("network " + std::to_string(static_cast<int>(*v)) + " GB/s");
      for (const auto& p : parts) d.interconnect += (d.interconnect.empty() ? "" : ", ") + p;
    }
    d.power_w = num(j, "power_w", d.id);
    d.price_usd = opt_num(j, "price_usd");
    d.launch = j.value("launch", "");
    if (j.contains("estimated"))
      for (const auto& e : j["estimated"]) d.estimated.push_back(e.get<std::string>());
    if (!j.contains("sources") || j["sources"].empty()) fail("hardware '{}' has no sources; every figure needs one", d.id);
    for (const auto& s : j["sources"]) d.sources.push_back(s.get<std::string>());
    out.push_back(std::move(d));
  }
  return out;
}

const std::vector<Device>& hardware_catalog() {
  static const std::vector<Device> catalog = parse_hardware_catalog(embedded_hardware_json());
  return catalog;
}

const Device* find_device(const std::vector<Device>& catalog, std::string_view name) {
  std::string key = lower(trim(name));
  for (const auto& d : catalog) {
    if (d.id == key) return &d;
    for (const auto& a : d.aliases)
      if (a == key) return &d;
  }
  // "rtx-4090" / "rtx4090" / "nvidia-h100-sxm": tolerate vendor prefixes.
  for (std::string_view prefix : {"nvidia-", "rtx-", "rtx", "apple-", "geforce-"})
    if (key.rfind(prefix, 0) == 0) return find_device(catalog, key.substr(prefix.size()));
  return nullptr;
}

DeviceConfig configure(const Device& d, double gib) {
  const MemoryOption* opt = &d.memory_options.back();
  if (gib > 0) {
    opt = nullptr;
    for (const auto& o : d.memory_options)
      if (std::abs(o.gib - gib) < 0.5) opt = &o;
    if (!opt) {
      std::string options;
      for (const auto& o : d.memory_options) options += (options.empty() ? "" : ", ") + fmt::format("{:g}", o.gib);
      fail("{} comes with {} GB, not {:g}; pick one of those (e.g. {}:{:g})", d.id, options, gib, d.id,
           d.memory_options.back().gib);
    }
  } else {
    for (const auto& o : d.memory_options)
      if (o.gib > opt->gib) opt = &o;
  }
  DeviceConfig c;
  c.id = d.id;
  c.label = d.name + (d.memory_options.size() > 1 || d.backend == Backend::metal ? fmt::format(" {:g}GB", opt->gib) : "");
  c.backend = d.backend;
  c.unified_memory = d.unified_memory;
  c.memory_bytes = static_cast<uint64_t>(opt->gib * kGiB);
  c.usable_bytes = c.memory_bytes - os_reserve_bytes(d.backend, d.unified_memory, c.memory_bytes);
  c.bandwidth_gbs = opt->bandwidth_gbs.value_or(d.bandwidth_gbs);
  c.fp32_tflops = opt->fp32_tflops.value_or(d.fp32_tflops);
  c.fp16_tflops = opt->fp16_tflops.value_or(d.fp16_tflops);
  c.int8_tops = d.int8_tops.value_or(0);
  c.fp8_tflops = d.fp8_tflops.value_or(0);
  c.link_gbs = d.link_gbs;
  c.pcie_gen = d.pcie_gen;
  c.power_w = d.power_w;
  c.price_usd = opt->price_usd.value_or(d.price_usd.value_or(0));
  c.estimated = !d.estimated.empty();
  return c;
}

Machine parse_machine(std::string_view spec, const std::vector<Device>& catalog) {
  Machine m;
  std::string s = trim(spec);
  if (s.empty()) fail("empty hardware name in --hw; use a catalog id such as m2-ultra or 2x4090");
  std::vector<std::string> labels;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t plus = s.find('+', pos);
    std::string part = trim(s.substr(pos, plus == std::string::npos ? std::string::npos : plus - pos));
    pos = plus == std::string::npos ? s.size() + 1 : plus + 1;
    // "4x4090", "4x 4090", "4*4090"
    int count = 1;
    size_t i = 0;
    while (i < part.size() && std::isdigit(static_cast<unsigned char>(part[i]))) ++i;
    if (i > 0 && i < part.size() && (part[i] == 'x' || part[i] == 'X' || part[i] == '*')) {
      std::string rest = trim(part.substr(i + 1));
      // "3090" alone is a name, "2x3090" a count: only treat digits as a count when a name follows the x.
      if (!rest.empty()) {
        count = std::stoi(part.substr(0, i));
        part = rest;
      }
    }
    double gib = 0;
    if (size_t colon = part.find(':'); colon != std::string::npos) {
      std::string mem = lower(trim(part.substr(colon + 1)));
      if (mem.size() > 2 && mem.substr(mem.size() - 2) == "gb") mem.resize(mem.size() - 2);
      gib = parse_double(mem, spec);
      part = trim(part.substr(0, colon));
    }
    const Device* d = find_device(catalog, part);
    if (!d) fail("unknown hardware '{}' in --hw; known: {}", part, known_ids(catalog));
    if (count < 1 || count > 64) fail("device count {} in '{}' is out of range; use 1 to 64", count, spec);
    DeviceConfig c = configure(*d, gib);
    for (int k = 0; k < count; ++k) m.devices.push_back(c);
    labels.push_back(count > 1 ? fmt::format("{}x {}", count, c.label) : c.label);
  }
  for (const auto& l : labels) m.label += (m.label.empty() ? "" : " + ") + l;
  return m;
}

std::vector<Machine> parse_machines(std::string_view specs, const std::vector<Device>& catalog) {
  std::vector<Machine> out;
  std::stringstream ss{std::string(specs)};
  std::string item;
  while (std::getline(ss, item, ','))
    if (!trim(item).empty()) out.push_back(parse_machine(item, catalog));
  if (out.empty()) fail("--hw is empty; name at least one device, e.g. --hw m2-ultra,4090");
  return out;
}

LocalInfo parse_local_info(std::string_view meminfo, int cores, std::string_view smi) {
  LocalInfo info;
  info.cores = cores;
  std::stringstream ms{std::string(meminfo)};
  std::string line;
  while (std::getline(ms, line)) {
    auto kb = [&](std::string_view key) -> std::optional<uint64_t> {
      if (line.rfind(key, 0) != 0) return std::nullopt;
      return std::stoull(line.substr(key.size())) * 1024;
    };
    if (auto v = kb("MemTotal:")) info.ram_total_bytes = *v;
    if (auto v = kb("MemAvailable:")) info.ram_available_bytes = *v;
  }
  if (info.ram_available_bytes == 0) info.ram_available_bytes = info.ram_total_bytes;
  std::stringstream gs{std::string(smi)};
  while (std::getline(gs, line)) {
    // "NVIDIA H100 80GB HBM3, 81559 MiB, 81000 MiB"
    std::vector<std::string> f;
    std::stringstream ls(line);
    std::string cell;
    while (std::getline(ls, cell, ',')) f.push_back(trim(cell));
    if (f.size() < 3) continue;
    auto mib = [](const std::string& v) { return static_cast<uint64_t>(std::stod(v)) * 1024 * 1024; };
    try {
      info.gpus.push_back({f[0], mib(f[1]), mib(f[2])});
    } catch (const std::exception&) {
      continue;  // "[N/A]" fields
    }
  }
  return info;
}

namespace {

// nvidia-smi names → catalog ids. Order matters: the first rule whose words all appear wins.
const Device* match_gpu(const std::string& gpu_name, const std::vector<Device>& catalog) {
  static const std::vector<std::pair<std::vector<std::string>, std::string>> rules = {
      {{"h200"}, "h200"},          {{"h100", "pcie"}, "h100-pcie"}, {{"h100"}, "h100-sxm"},
      {{"a100", "80"}, "a100-80gb"}, {{"a100"}, "a100-40gb"},     {{"gb10"}, "dgx-spark"},
      {{"5090"}, "rtx-5090"},      {{"4090"}, "rtx-4090"},        {{"3090"}, "rtx-3090"},
      {{"3080", "ti"}, "rtx-3080-ti"},
  };
  std::string n = lower(gpu_name);
  for (const auto& [words, id] : rules)
    if (std::all_of(words.begin(), words.end(), [&](const std::string& w) { return n.find(w) != std::string::npos; }))
      return find_device(catalog, id);
  return nullptr;
}

}  // namespace

std::vector<Machine> local_machines(const LocalInfo& info, const std::vector<Device>& catalog) {
  std::vector<Machine> out;
  if (!info.gpus.empty()) {
    Machine m;
    for (size_t i = 0; i < info.gpus.size(); ++i) {
      const auto& g = info.gpus[i];
      DeviceConfig c;
      if (const Device* d = match_gpu(g.name, catalog)) {
        c = configure(*d);
      } else {
        // An unknown GPU: figures of a mid-range card, flagged as estimates.
        c.backend = Backend::cuda;
        c.bandwidth_gbs = 500;
        c.fp32_tflops = 30;
        c.fp16_tflops = 60;
        c.int8_tops = 240;
        c.power_w = 300;
        c.estimated = true;
      }
      c.id = "local-gpu" + std::to_string(i);
      c.label = fmt::format("GPU{} {}", i, g.name);
      c.memory_bytes = g.total_bytes;
      c.usable_bytes = g.free_bytes;  // what other processes left
      c.detected = true;
      if (c.unified_memory) c.usable_bytes = std::min(g.free_bytes, info.ram_available_bytes);
      m.devices.push_back(c);
    }
    m.label = info.gpus.size() == 1 ? "local " + m.devices[0].label : fmt::format("local {}x GPU", info.gpus.size());
    out.push_back(m);
  }
  // The host CPU: RAM and cores are known; bandwidth and FLOPS are estimates (two DDR5 channels per 16 cores).
  DeviceConfig c;
  c.id = "local-cpu";
  c.backend = Backend::cpu;
  c.unified_memory = true;
  c.memory_bytes = info.ram_total_bytes;
  c.usable_bytes = info.ram_available_bytes;
  const int cores = std::max(1, info.cores);
  c.bandwidth_gbs = 89.6 * std::max(1, (cores + 15) / 16);
  c.fp32_tflops = c.fp16_tflops = cores * 32 * 3.0e9 / 1e12;
  c.int8_tops = 2 * c.fp32_tflops;
  c.power_w = 10.0 * cores;
  c.estimated = true;
  c.detected = true;
  c.label = fmt::format("CPU {} cores, {:.0f} GB RAM", cores, static_cast<double>(info.ram_total_bytes) / 1e9);
  out.push_back(Machine{"local " + c.label, {c}});
  return out;
}

}  // namespace uma::plan
