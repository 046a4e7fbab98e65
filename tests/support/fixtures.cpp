#include "fixtures.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "kv/kv_cache.h"
#include "test_support.h"

namespace uma::test {

std::filesystem::path fixture_dir(const std::string& arch) { return shared_dir() / "fixtures" / arch; }

const Fixture& fixture(const std::string& arch) {
  static std::map<std::string, Fixture> cache;
  if (auto it = cache.find(arch); it != cache.end()) return it->second;
  Fixture f;
  std::ifstream in(fixture_dir(arch) / "reference.json");
  f.reference = nlohmann::json::parse(in);
  f.ref = load_safetensors(fixture_dir(arch) / "reference.safetensors");
  f.peer = load_safetensors(fixture_dir(arch) / "peer-llamacpp.safetensors");
  return cache.emplace(arch, std::move(f)).first->second;
}

PromptRun run_prompt(Model& model, const std::vector<int32_t>& prompt, bool f16_kv, bool q8_kv) {
  KvCacheOptions o = model.kv_options(256, 1);
  o.f16 = f16_kv, o.q8 = q8_kv;
  KvCache kv(model.backend(), o);
  kv.reserve(0, static_cast<int64_t>(prompt.size()));
  Batch batch;
  for (size_t i = 0; i < prompt.size(); ++i) batch.add(prompt[i], static_cast<int32_t>(i), 0, true);
  PromptRun r;
  r.hidden.resize(model.config().n_layer + 1);
  LayerHook hook = [&](int layer, const float* h, int64_t n, int64_t d) { r.hidden[layer].assign(h, h + n * d); };
  model.forward(batch, kv, r.logits, &hook);
  return r;
}

std::vector<int32_t> greedy(Model& model, const std::vector<int32_t>& prompt, int n_new, bool backend_picks) {
  KvCache kv(model.backend(), model.kv_options(256, 1));
  Batch batch;
  for (size_t i = 0; i < prompt.size(); ++i) batch.add(prompt[i], static_cast<int32_t>(i), 0, i + 1 == prompt.size());
  kv.reserve(0, batch.size());
  std::vector<float> logits;
  std::vector<int32_t> out;
  int32_t pos = static_cast<int32_t>(prompt.size());
  std::vector<int32_t> picked;
  for (int step = 0; step < n_new; ++step) {
    int32_t next;
    if (backend_picks) {
      model.forward_greedy(batch, kv, picked);
      next = picked.at(0);
    } else {
      model.forward(batch, kv, logits, nullptr);
      next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    }
    out.push_back(next);
    batch.clear();
    batch.add(next, pos++, 0, true);
    kv.reserve(0, pos);
  }
  return out;
}

std::vector<std::filesystem::path> sampling_models() {
  std::vector<std::filesystem::path> out;
  for (const auto& path : {shared_dir() / "models" / "stories260K.gguf",
                           fixture_dir("qwen3_moe") / "qwen3_moe-Q8_0.gguf",
                           fixture_dir("deepseek_v3") / "deepseek_v3-Q8_0.gguf"})
    if (std::filesystem::exists(path)) out.push_back(path);
  return out;
}

std::vector<SamplerParams> sampling_settings() {
  SamplerParams defaults;
  defaults.seed = 1234;
  SamplerParams penalised = defaults;
  penalised.top_k = 7;
  penalised.temperature = 1.2f;
  penalised.repeat_penalty = 1.3f;
  penalised.frequency_penalty = 0.2f;
  penalised.presence_penalty = 0.3f;
  SamplerParams greedy = penalised;
  greedy.temperature = 0.0f;
  // Chains without top-k (the head and the row's mass, Sampler::sample_head): OpenAI's defaults, and top-p
  // with min-p and penalties.
  SamplerParams openai = defaults;
  openai.temperature = 1.0f, openai.top_k = 0, openai.top_p = 1.0f, openai.min_p = 0.0f;
  SamplerParams nucleus = penalised;
  nucleus.temperature = 0.9f, nucleus.top_k = 0, nucleus.top_p = 0.9f, nucleus.min_p = 0.02f;
  return {defaults, penalised, greedy, openai, nucleus};
}

SampledTwice sample_both_ways(Engine& engine, const std::vector<int32_t>& prompt, const SamplerParams& sampling,
                              int n_predict) {
  GenerateOptions go;
  go.n_predict = n_predict;
  go.ignore_eos = true;
  go.sampling = sampling;
  SampledTwice r;
  r.on_backend = generate(engine, 0, prompt, go, nullptr).tokens;
  go.backend_sampling = false;
  r.on_host = generate(engine, 0, prompt, go, nullptr).tokens;
  return r;
}

double row_rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t row, size_t width) {
  return rel_l2(std::span<const float>(a.data() + row * width, width),
                std::span<const float>(b.data() + row * width, width));
}

std::vector<float> final_norm(const GgufFile& file, const std::vector<float>& x, int n_embd, float eps) {
  const auto* g = reinterpret_cast<const float*>(file.find_tensor("output_norm.weight")->data);
  std::vector<float> out(x.size());
  for (size_t t = 0; t < x.size() / n_embd; ++t) {
    double ss = 0;
    for (int i = 0; i < n_embd; ++i) ss += double(x[t * n_embd + i]) * x[t * n_embd + i];
    const double scale = 1.0 / std::sqrt(ss / n_embd + eps);
    for (int i = 0; i < n_embd; ++i) out[t * n_embd + i] = static_cast<float>(x[t * n_embd + i] * scale) * g[i];
  }
  return out;
}

}  // namespace uma::test
