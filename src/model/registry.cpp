#include "model/registry.h"

#include <string_view>

#include "gguf/gguf.h"
#include "uma/error.h"

namespace uma {
namespace {

struct Family {
  std::string_view arch;  // GGUF general.architecture
  std::unique_ptr<Model> (*make)(const GgufFile&, Backend&, const ModelOptions&);
};

constexpr Family kFamilies[] = {
    {"llama", make_llama},
    {"qwen2", make_qwen2},
    {"qwen3", make_qwen3},
    {"qwen3moe", make_qwen3moe},
    {"deepseek2", make_deepseek2},
};

}  // namespace

std::vector<std::string> supported_architectures() {
  std::vector<std::string> out;
  for (const auto& f : kFamilies) out.emplace_back(f.arch);
  return out;
}

std::unique_ptr<Model> load_model(const GgufFile& file, Backend& backend, const ModelOptions& options) {
  const std::string arch = file.get_string("general.architecture");
  for (const auto& f : kFamilies)
    if (f.arch == arch) return f.make(file, backend, options);
  std::string list;
  for (const auto& a : supported_architectures()) list += (list.empty() ? "" : ", ") + a;
  fail("{}: architecture '{}' is not supported; uma runs: {}", file.path().string(), arch, list);
}

}  // namespace uma
