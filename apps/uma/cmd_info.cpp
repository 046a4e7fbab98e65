// uma info: what is in a GGUF file — architecture, hyper-parameters, tensors, and the memory to run it.
#include <cstdio>
#include <map>
#include <string>

#include <fmt/format.h>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "plan/local.h"
#include "runtime/model_ref.h"
#include "uma/command.h"

namespace uma::app {
namespace {

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  return fmt::format("{:.2f} {}", b, units[u]);
}

std::string value_string(const GgufValue& v) {
  switch (v.type) {
    case GgufType::STRING: {
      std::string s(v.str.substr(0, 80));
      for (auto& c : s) if (c == '\n') c = ' ';
      return "\"" + s + (v.str.size() > 80 ? "…\"" : "\"");
    }
    case GgufType::ARRAY: return fmt::format("[{} x {}]", v.count, gguf_type_name(v.elem_type));
    case GgufType::FLOAT32: case GgufType::FLOAT64: return fmt::format("{}", v.f);
    case GgufType::BOOL: return v.i ? "true" : "false";
    default: return std::to_string(v.i);
  }
}

int info(const std::string& ref, bool all_tensors, int64_t n_ctx) {
  const auto path = resolve_model(ref);
  auto file = GgufFile::open(path);
  fmt::print("file:      {}\nformat:    GGUF v{}, {} tensors, {} metadata keys, {}\n", path.string(),
             file->version(), file->tensors().size(), file->metadata().size(), human_bytes(file->file_size()));
  fmt::print("\nmetadata:\n");
  for (const auto& [k, v] : file->metadata()) fmt::print("  {:<48} {}\n", k, value_string(v));

  std::map<std::string, std::pair<size_t, size_t>> by_type;  // type -> (count, bytes)
  size_t total = 0;
  fmt::print("\ntensors:\n  {:<40} {:<8} {:<24} {:>12}\n", "name", "type", "shape", "bytes");
  size_t shown = 0;
  for (const auto& t : file->tensors()) {
    auto& e = by_type[std::string(type_name(t.type))];
    e.first++;
    e.second += t.nbytes;
    total += t.nbytes;
    if (all_tensors || shown < 40) {
      fmt::print("  {:<40} {:<8} {:<24} {:>12}\n", t.name, type_name(t.type), t.shape_string(), t.nbytes);
      ++shown;
    }
  }
  if (shown < file->tensors().size())
    fmt::print("  … {} more (--all to list every tensor)\n", file->tensors().size() - shown);
  fmt::print("\nweights by type:\n");
  for (const auto& [t, e] : by_type) fmt::print("  {:<8} {:>6} tensors  {}\n", t, e.first, human_bytes(e.second));
  fmt::print("  total    {:>6} tensors  {}\n", file->tensors().size(), human_bytes(total));

  // The model's own view: hyper-parameters and the memory the run will take.
  auto backend = make_cpu_backend(1);
  auto model = load_model(*file, *backend);
  const ModelConfig& c = model->config();
  if (n_ctx <= 0) n_ctx = std::min<int64_t>(c.n_ctx_train, 4096);
  fmt::print("\nmodel:     {} ({})\n", c.name, c.arch);
  fmt::print("  layers {}, embedding {}, heads {} (kv {}), head dim {}/{}, ffn {}, vocab {}, trained context {}\n",
             c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim_k, c.head_dim_v, c.n_ff, c.n_vocab,
             c.n_ctx_train);
  if (c.n_expert)
    fmt::print("  experts {} ({} active, {} shared), expert ffn {}\n", c.n_expert, c.n_expert_used,
               c.n_expert_shared, c.n_ff_expert);
  fmt::print("  rope: {} dims, base {}, {}{}\n", c.rope.n_rot, c.rope.freq_base, c.rope.neox ? "neox" : "normal",
             c.rope.freq_factors.empty() ? "" : ", frequency factors");
  // The memory the run will take on this machine, from the same planner `uma run` consults before loading.
  plan::PlanInputs in = plan::inputs_for_gguf(*file);
  in.n_ctx = n_ctx;
  in.kv_type = GgmlType::F32;  // the CPU backend keeps an f32 cache
  in.machine = plan::local_cpu_machine();
  const plan::Plan p = plan::make_plan(in);
  fmt::print("\nmemory for a {}-token context: weights {}, KV cache {} ({} per token)\n", n_ctx,
             human_bytes(double(p.weight_bytes)), human_bytes(double(p.kv_bytes_per_token) * n_ctx),
             human_bytes(double(p.kv_bytes_per_token)));
  fmt::print("{}", plan::format_plan_summary(p));
  return 0;
}

const RegisterCommand reg{{"info", "Show a model's metadata, tensors and memory needs", [](CLI::App& sub) {
  auto ref = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  auto ctx = std::make_shared<int64_t>(0);
  sub.add_option("model", *ref, "Model path or reference")->required();
  sub.add_flag("--all", *all, "List every tensor");
  sub.add_option("-c,--ctx-size", *ctx, "Context size for the memory estimate (0: model's, at most 4096)");
  return [=] { return info(*ref, *all, *ctx); };
}}};

}  // namespace
}  // namespace uma::app
