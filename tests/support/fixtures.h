// Shared by every test that runs ../shared/fixtures/<arch>/ through a backend: the reference data, one
// prompt with all logits and per-layer hidden states, greedy decoding, and per-row error.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "safetensors.h"

namespace uma::test {

struct Fixture {
  nlohmann::json reference;                  // reference.json: prompts, greedy tokens
  std::map<std::string, RefTensor> ref;      // reference.safetensors: logits.<i>, hidden.<i>.<l>
  std::map<std::string, RefTensor> peer;     // peer-llamacpp.safetensors: <type>.logits.<i>
};

std::filesystem::path fixture_dir(const std::string& arch);
// Loaded once per process.
const Fixture& fixture(const std::string& arch);

struct PromptRun {
  std::vector<float> logits;               // [len, vocab]
  std::vector<std::vector<float>> hidden;  // per layer 0..n_layer: [len, n_embd]
};
// The whole prompt in one batch, logits for every position.
// f16_kv, q8_kv: with f16 or 8-bit KV cells (KvCacheOptions::f16, ::q8; a backend that keeps them: CUDA).
PromptRun run_prompt(Model& model, const std::vector<int32_t>& prompt, bool f16_kv = false, bool q8_kv = false);
// Prompt in one batch, then one token per step (the decode path reads the cache it wrote).
// backend_picks: through Model::forward_greedy (the backend's argmax) instead of the downloaded logits.
std::vector<int32_t> greedy(Model& model, const std::vector<int32_t>& prompt, int n_new, bool backend_picks = false);
// The models the sampling comparisons generate with (those present): stories260K, and a MoE and an MLA
// fixture (their families inherit DecoderModel::forward_top_k).
std::vector<std::filesystem::path> sampling_models();
// The sampler settings they run, seeded: the defaults (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05);
// top-k 7 with every penalty; greedy with penalties (top-1 on the backend).
std::vector<SamplerParams> sampling_settings();
// generate() twice on one engine, n_predict tokens (EOS ignored): with the sampler's first stages on the
// backend (GenerateOptions::backend_sampling), then with every logits row sampled on the host.
struct SampledTwice {
  std::vector<int32_t> on_backend, on_host;
};
SampledTwice sample_both_ways(Engine& engine, const std::vector<int32_t>& prompt, const SamplerParams& sampling,
                              int n_predict);
// rel_l2 of one row of two [rows, width] matrices.
double row_rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t row, size_t width);
// transformers' last hidden state has the final norm applied (its `hidden_states[-1]`), although the fixture
// README calls it pre-norm: measured, pre-norm differs by ~0.7 and post-norm by ~1e-6. Applies output_norm.
std::vector<float> final_norm(const GgufFile& file, const std::vector<float>& x, int n_embd, float eps);

}  // namespace uma::test
