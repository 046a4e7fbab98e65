// `uma plan MODEL`: will it fit, how fast, at what cost — on this machine or any machine in the catalog.
// All numbers come from the pure planner in src/plan; this file resolves arguments, detects the local machine and
// renders the result as a table, JSON or an SVG chart.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "gguf/gguf.h"
#include "plan/local.h"
#include "plan/plan.h"
#include "uma/command.h"
#include "uma/error.h"

namespace uma::app {
namespace {

namespace fs = std::filesystem;
using namespace uma::plan;

struct Options {
  std::string model;
  std::string hw;
  std::string quant;
  std::string kv_type = "f16";
  int64_t ctx = 0;  // 0: min(4096, the model's trained context)
  int64_t batch = 512;
  int64_t depth = 0;
  bool json = false;
  std::string chart;
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  if (!in) fail("cannot read {}; check the path", p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Resolve MODEL into planner inputs: a GGUF file, an HF config.json (or its directory), or a catalog name.
void resolve_model(const Options& o, PlanInputs& in) {
  fs::path p(o.model);
  if (fs::is_directory(p) && fs::exists(p / "config.json")) p /= "config.json";
  if (fs::is_regular_file(p) && p.extension() == ".gguf") {
    auto file = GgufFile::open(p);
    PlanInputs from_file = inputs_for_gguf(*file);
    in.model = from_file.model;
    if (o.quant.empty()) {
      in.file_tensors = std::move(from_file.file_tensors);
      in.file_types = std::move(from_file.file_types);
      in.quant_label = from_file.quant_label;
    }
    return;
  }
  if (fs::is_regular_file(p) && p.extension() == ".json") {
    std::string name = p.parent_path().filename().string();
    in.model = shape_from_hf_config(read_text(p), name.empty() ? p.stem().string() : name);
    return;
  }
  if (auto m = find_model(o.model)) {
    in.model = *m;
    return;
  }
  std::string names;
  for (const auto& m : model_catalog()) names += (names.empty() ? "" : ", ") + m.name;
  fail("'{}' is neither a .gguf file, a config.json (or its folder), nor a known model; known: {}", o.model, names);
}

std::string fmt_tps(double v) {
  if (v <= 0) return "-";
  if (v >= 100) return fmt::format("{:.0f}", v);
  if (v >= 10) return fmt::format("{:.1f}", v);
  return fmt::format("{:.2f}", v);
}

std::string fmt_params(uint64_t p) {
  const double v = static_cast<double>(p);
  if (v >= 1e9) return fmt::format("{:.1f}B", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.1f}M", v / 1e6);
  return fmt::format("{:.1f}K", v / 1e3);
}

void print_table(const std::vector<Plan>& plans) {
  const Plan& p0 = plans.front();
  std::printf("%s  %s params%s  %s  weights %s  KV %s/token (%s at %lld tokens, %s)\n", p0.model_name.c_str(),
              fmt_params(p0.params).c_str(),
              p0.active_params < p0.params * 9 / 10 ? fmt::format(" ({} active)", fmt_params(p0.active_params)).c_str() : "",
              p0.quant_name.c_str(), format_bytes(p0.weight_bytes).c_str(), format_bytes(p0.kv_bytes_per_token).c_str(),
              format_bytes(p0.kv_bytes_per_token * static_cast<uint64_t>(p0.n_ctx)).c_str(),
              static_cast<long long>(p0.n_ctx), p0.kv_type.c_str());
  size_t w = 7;
  for (const auto& p : plans) w = std::max(w, p.machine_label.size());
  w = std::min<size_t>(w, 58);
  std::printf("\n%-*s  %-4s  %10s  %10s  %10s  %9s  %9s  %7s  %9s\n", static_cast<int>(w), "machine", "fits", "needs",
              "usable", "margin", "decode", "prefill", "t/s/W", "$/(t/s)");
  std::printf("%-*s  %-4s  %10s  %10s  %10s  %9s  %9s  %7s  %9s\n", static_cast<int>(w), "", "", "", "", "", "t/s",
              "t/s", "", "");
  for (const auto& p : plans) {
    std::string label = p.machine_label.size() > w ? p.machine_label.substr(0, w - 1) + "~" : p.machine_label;
    const bool ok = p.fits;
    std::string margin = ok ? "+" + format_bytes(p.usable_bytes - p.total_bytes) : "-" + format_bytes(p.shortfall);
    std::printf("%-*s  %-4s  %10s  %10s  %10s  %9s  %9s  %7s  %9s\n", static_cast<int>(w), label.c_str(),
                ok ? "yes" : "NO", format_bytes(p.total_bytes).c_str(), format_bytes(p.usable_bytes).c_str(),
                margin.c_str(), fmt_tps(p.decode_tps).c_str(), fmt_tps(p.prefill_tps).c_str(),
                p.tps_per_watt > 0 ? fmt::format("{:.3f}", p.tps_per_watt).c_str() : "-",
                p.usd_per_tps > 0 ? (p.usd_per_tps >= 10 ? fmt::format("{:.0f}", p.usd_per_tps) : fmt::format("{:.2f}", p.usd_per_tps)).c_str() : "-");
  }
  // Per-device breakdown when a machine splits the model, or when only one machine is shown.
  for (const auto& p : plans) {
    if (p.devices.size() < 2 && plans.size() > 1) continue;
    std::printf("\n%s: memory per device\n", p.machine_label.c_str());
    std::printf("  %-44s %7s %10s %10s %10s %10s %10s %10s\n", "device", "layers", "weights", "KV cache", "compute",
                "overhead", "total", "usable");
    for (const auto& d : p.devices)
      std::printf("  %-44s %7s %10s %10s %10s %10s %10s %10s%s\n", d.label.substr(0, 44).c_str(),
                  fmt::format("{}-{}", d.layer_begin, d.layer_end - 1).c_str(), format_bytes(d.weights).c_str(),
                  format_bytes(d.kv_cache).c_str(), format_bytes(d.compute).c_str(), format_bytes(d.overhead).c_str(),
                  format_bytes(d.total()).c_str(), format_bytes(d.usable).c_str(), d.fits() ? "" : "  DOES NOT FIT");
  }
  std::vector<std::string> notes = p0.notes;
  for (const auto& p : plans)
    for (const auto& n : p.notes)
      if (std::find(notes.begin(), notes.end(), n) == notes.end()) notes.push_back(n);
  std::printf("\n");
  for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
  std::printf("note: speeds at batch %lld, decode at depth %lld; efficiency factors are %s (docs/PLAN.md)%s\n",
              static_cast<long long>(p0.n_batch), static_cast<long long>(p0.depth),
              p0.calibrated ? "calibrated" : "uncalibrated placeholders",
              std::any_of(plans.begin(), plans.end(), [](const Plan& p) { return p.estimated_hardware; })
                  ? "; some hardware figures are estimates"
                  : "");
  for (const auto& p : plans)
    if (!p.fits && plans.size() == 1) std::printf("\n%s\n", check_fits_or_explain(p).c_str());
}

nlohmann::json to_json(const Plan& p) {
  nlohmann::json devices = nlohmann::json::array();
  for (const auto& d : p.devices)
    devices.push_back({{"label", d.label}, {"backend", std::string(backend_name(d.backend))},
                       {"layers", {d.layer_begin, d.layer_end}}, {"token_embd", d.has_token_embd},
                       {"output", d.has_output}, {"weights_bytes", d.weights}, {"kv_cache_bytes", d.kv_cache},
                       {"compute_bytes", d.compute}, {"overhead_bytes", d.overhead}, {"total_bytes", d.total()},
                       {"usable_bytes", d.usable}, {"fits", d.fits()}, {"decode_ms", d.decode_ms},
                       {"prefill_ms", d.prefill_ms}, {"bandwidth_bound", d.bandwidth_bound}});
  return {{"model", p.model_name}, {"quant", p.quant_name}, {"machine", p.machine_label}, {"n_ctx", p.n_ctx},
          {"n_batch", p.n_batch}, {"depth", p.depth}, {"kv_type", p.kv_type}, {"params", p.params},
          {"active_params", p.active_params}, {"weight_bytes", p.weight_bytes}, {"active_bytes", p.active_bytes},
          {"kv_bytes_per_token", p.kv_bytes_per_token}, {"kv_bytes_per_token_full", p.kv_bytes_per_token_full},
          {"fits", p.fits}, {"total_bytes", p.total_bytes}, {"usable_bytes", p.usable_bytes},
          {"shortfall_bytes", p.shortfall}, {"decode_tps", p.decode_tps}, {"prefill_tps", p.prefill_tps},
          {"power_w", p.power_w}, {"price_usd", p.price_usd}, {"tps_per_watt", p.tps_per_watt},
          {"usd_per_tps", p.usd_per_tps}, {"calibrated", p.calibrated}, {"estimated_hardware", p.estimated_hardware},
          {"notes", p.notes}, {"devices", devices}, {"refusal", check_fits_or_explain(p)}};
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// Two horizontal bar panels per machine: decode t/s, and memory needed against usable (the outline).
// Green: fits; red: does not fit.
std::string render_svg(const std::vector<Plan>& plans) {
  const int row = 24, top = 60, label_w = 330, panel_w = 300, gap = 40;
  const int width = label_w + 2 * panel_w + gap + 80, height = top + row * static_cast<int>(plans.size()) + 40;
  double max_tps = 0, max_mem = 0;
  for (const auto& p : plans) {
    max_tps = std::max(max_tps, p.decode_tps);
    max_mem = std::max({max_mem, static_cast<double>(p.total_bytes), static_cast<double>(p.usable_bytes)});
  }
  if (max_tps <= 0) max_tps = 1;
  if (max_mem <= 0) max_mem = 1;
  std::string s = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      width, height);
  const Plan& p0 = plans.front();
  s += fmt::format("<text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">{} at {}, context {}</text>\n",
                   xml_escape(p0.model_name), xml_escape(p0.quant_name), p0.n_ctx);
  const int x1 = label_w, x2 = label_w + panel_w + gap;
  s += fmt::format("<text x=\"{}\" y=\"{}\" font-weight=\"bold\">decode tokens/s (predicted)</text>\n", x1, top - 12);
  s += fmt::format("<text x=\"{}\" y=\"{}\" font-weight=\"bold\">memory needed (bar) vs usable (outline)</text>\n", x2,
                   top - 12);
  for (size_t i = 0; i < plans.size(); ++i) {
    const Plan& p = plans[i];
    const int y = top + static_cast<int>(i) * row;
    const char* colour = p.fits ? "#2e9d4a" : "#d0453a";
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", label_w - 10, y + 15,
                     xml_escape(p.machine_label.substr(0, 52)));
    const double wt = panel_w * p.decode_tps / max_tps;
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\" fill=\"{}\"/>\n", x1, y + 3, wt, row - 8,
                     colour);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\">{}</text>\n", x1 + wt + 4, y + 15, fmt_tps(p.decode_tps));
    const double wm = panel_w * static_cast<double>(p.total_bytes) / max_mem;
    const double wu = panel_w * static_cast<double>(p.usable_bytes) / max_mem;
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\" fill=\"{}\" opacity=\"0.8\"/>\n", x2,
                     y + 3, wm, row - 8, colour);
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{}\" fill=\"none\" stroke=\"#333\"/>\n", x2,
                     y + 3, wu, row - 8);
    s += fmt::format("<text x=\"{:.1f}\" y=\"{}\">{}</text>\n", x2 + std::max(wm, wu) + 4, y + 15,
                     format_bytes(p.total_bytes));
  }
  s += fmt::format("<text x=\"10\" y=\"{}\" fill=\"#555\">green: fits, red: does not fit. Efficiency factors {}; "
                   "see docs/PLAN.md.</text>\n</svg>\n",
                   height - 12, p0.calibrated ? "calibrated" : "uncalibrated");
  return s;
}

int run_plan(const Options& o) {
  PlanInputs base;
  resolve_model(o, base);
  if (!o.quant.empty() || base.file_tensors.empty()) {
    std::string q = o.quant.empty() ? base.model.native_dtype : o.quant;
    base.quant = quant_scheme(q);
    if (!base.quant) {
      std::string names;
      for (const auto& n : quant_scheme_names()) names += (names.empty() ? "" : ", ") + n;
      fail("unknown --quant '{}'; use one of {}", q, names);
    }
  }
  auto kv = type_from_name(o.kv_type);
  if (!kv || (*kv != GgmlType::F16 && *kv != GgmlType::BF16 && *kv != GgmlType::F32 && *kv != GgmlType::Q8_0 &&
              *kv != GgmlType::Q4_0))
    fail("unknown --kv-type '{}'; use f16, bf16, f32, q8_0 or q4_0", o.kv_type);
  base.kv_type = *kv;
  base.n_ctx = o.ctx > 0 ? o.ctx : std::min<int64_t>(4096, base.model.n_ctx_train);
  base.n_batch = o.batch;
  base.depth = o.depth;

  std::vector<Machine> machines;
  if (o.hw.empty() || o.hw == "all") {
    machines = detect_local_machines();
    for (const auto& d : hardware_catalog()) machines.push_back(Machine{configure(d).label, {configure(d)}});
  } else {
    std::stringstream ss(o.hw);
    std::string item;
    while (std::getline(ss, item, ',')) {
      if (item == "local") {
        for (auto& m : detect_local_machines()) machines.push_back(std::move(m));
      } else if (!item.empty()) {
        machines.push_back(parse_machine(item, hardware_catalog()));
      }
    }
  }
  if (machines.empty()) fail("--hw named no machine; use e.g. --hw local or --hw m2-ultra,2x4090");

  std::vector<Plan> plans;
  for (auto& m : machines) {
    PlanInputs in = base;
    in.machine = std::move(m);
    plans.push_back(make_plan(in));
  }
  if (!o.chart.empty()) {
    std::ofstream out(o.chart);
    if (!out) fail("cannot write chart to {}; check the directory exists and is writable", o.chart);
    out << render_svg(plans);
  }
  if (o.json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& p : plans) arr.push_back(to_json(p));
    std::printf("%s\n", arr.dump(2).c_str());
  } else {
    print_table(plans);
    if (!o.chart.empty()) std::printf("chart written to %s\n", o.chart.c_str());
  }
  return 0;
}

int list_catalogs() {
  std::printf("hardware (--hw ID[:GB], NxID, ID+ID; comma-separated to compare; 'local' for this machine):\n");
  for (const auto& d : hardware_catalog()) {
    std::string mem;
    for (const auto& m : d.memory_options) mem += (mem.empty() ? "" : "/") + fmt::format("{:g}", m.gib);
    std::printf("  %-14s %-58s %9s GB %7.0f GB/s %7.1f TFLOPS fp16%s\n", d.id.c_str(), d.name.c_str(), mem.c_str(),
                d.bandwidth_gbs, d.fp16_tflops, d.estimated.empty() ? "" : "  (some estimated)");
  }
  std::printf("\nmodels (or pass a .gguf file or a Hugging Face config.json):\n");
  for (const auto& m : model_catalog())
    std::printf("  %-18s %-10s %3lld layers, hidden %5lld%s  %s\n", m.name.c_str(), m.arch.c_str(),
                static_cast<long long>(m.n_layer), static_cast<long long>(m.n_embd),
                m.is_moe() ? fmt::format(", {}/{} experts", m.n_expert_used, m.n_expert).c_str() : "",
                m.source.c_str());
  std::printf("\nquant schemes: ");
  for (const auto& n : quant_scheme_names()) std::printf("%s ", n.c_str());
  std::printf("\n");
  return 0;
}

const RegisterCommand reg{Command{
    "plan", "Predict memory, speed and cost of a model on this or any machine",
    [](CLI::App& sub) -> std::function<int()> {
      auto o = std::make_shared<Options>();
      auto list = std::make_shared<bool>(false);
      sub.add_option("model", o->model, "catalog name, .gguf file, or Hugging Face config.json (or its folder)");
      sub.add_option("--hw", o->hw,
                     "machines to compare, comma-separated: catalog ids (m2-ultra, m3-ultra:512, 4090), "
                     "NxID or ID+ID for one machine split by layers, 'local' for this machine; default: local and the "
                     "whole catalog");
      sub.add_option("--quant", o->quant, "quantization (Q4_K_M, Q8_0, F16, FP8, ...); default: the file's own types, "
                                          "or the model's native dtype");
      sub.add_option("--ctx", o->ctx, "context length in tokens (default: 4096 or the model's trained context if smaller)");
      sub.add_option("--batch", o->batch, "prompt tokens per forward pass")->capture_default_str();
      sub.add_option("--depth", o->depth, "tokens already in context when decode speed is predicted")
          ->capture_default_str();
      sub.add_option("--kv-type", o->kv_type, "KV cache type: f16, bf16, f32, q8_0, q4_0")->capture_default_str();
      sub.add_flag("--json", o->json, "print the plans as JSON");
      sub.add_option("--chart", o->chart, "also draw the comparison as an SVG chart into this file");
      sub.add_flag("--list", *list, "list the hardware and model catalogs");
      return [o, list]() {
        if (*list) return list_catalogs();
        if (o->model.empty()) fail("uma plan needs a MODEL (catalog name, .gguf or config.json); see uma plan --list");
        return run_plan(*o);
      };
    }}};

}  // namespace
}  // namespace uma::app
