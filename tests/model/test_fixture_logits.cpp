// Every model family against the transformers reference (f32 GGUF) and against llama.cpp on the same
// quantized GGUF. Fixtures: ../shared/fixtures/<arch>/ (see its README for how they were made).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "safetensors.h"
#include "test_support.h"

namespace uma {
namespace {

struct Fixture {
  std::string arch;
  nlohmann::json reference;
  std::map<std::string, test::RefTensor> ref;
  std::map<std::string, test::RefTensor> peer;
};

const Fixture& fixture(const std::string& arch) {
  static std::map<std::string, Fixture> cache;
  auto it = cache.find(arch);
  if (it != cache.end()) return it->second;
  const auto dir = test::shared_dir() / "fixtures" / arch;
  Fixture f;
  f.arch = arch;
  std::ifstream in(dir / "reference.json");
  f.reference = nlohmann::json::parse(in);
  f.ref = test::load_safetensors(dir / "reference.safetensors");
  f.peer = test::load_safetensors(dir / "peer-llamacpp.safetensors");
  return cache.emplace(arch, std::move(f)).first->second;
}

struct PromptRun {
  std::vector<float> logits;                 // [len, vocab]
  std::vector<std::vector<float>> hidden;    // per layer 0..n_layer: [len, n_embd]
};

PromptRun run_prompt(Model& model, const std::vector<int32_t>& prompt) {
  KvCache kv(model.backend(), model.kv_options(256, 1));
  kv.reserve(0, static_cast<int64_t>(prompt.size()));
  Batch batch;
  for (size_t i = 0; i < prompt.size(); ++i) batch.add(prompt[i], static_cast<int32_t>(i), 0, true);
  PromptRun r;
  r.hidden.resize(model.config().n_layer + 1);
  LayerHook hook = [&](int layer, const float* h, int64_t n, int64_t d) { r.hidden[layer].assign(h, h + n * d); };
  model.forward(batch, kv, r.logits, &hook);
  return r;
}

std::vector<int32_t> greedy(Model& model, const std::vector<int32_t>& prompt, int n_new) {
  KvCache kv(model.backend(), model.kv_options(256, 1));
  Batch batch;
  for (size_t i = 0; i < prompt.size(); ++i) batch.add(prompt[i], static_cast<int32_t>(i), 0, i + 1 == prompt.size());
  kv.reserve(0, batch.size());
  std::vector<float> logits;
  std::vector<int32_t> out;
  int32_t pos = static_cast<int32_t>(prompt.size());
  for (int step = 0; step < n_new; ++step) {
    model.forward(batch, kv, logits, nullptr);
    const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(next);
    batch.clear();
    batch.add(next, pos++, 0, true);
    kv.reserve(0, pos);
  }
  return out;
}

double row_rel_l2(const std::vector<float>& a, const std::vector<float>& b, size_t row, size_t width) {
  return test::rel_l2(std::span<const float>(a.data() + row * width, width),
                      std::span<const float>(b.data() + row * width, width));
}

std::vector<float> final_norm(const GgufFile& file, const std::vector<float>& x, int E, float eps) {
  const auto* g = reinterpret_cast<const float*>(file.find_tensor("output_norm.weight")->data);
  std::vector<float> out(x.size());
  for (size_t t = 0; t < x.size() / E; ++t) {
    double ss = 0;
    for (int i = 0; i < E; ++i) ss += double(x[t * E + i]) * x[t * E + i];
    const double scale = 1.0 / std::sqrt(ss / E + eps);
    for (int i = 0; i < E; ++i) out[t * E + i] = static_cast<float>(x[t * E + i] * scale) * g[i];
  }
  return out;
}

class F32Reference : public ::testing::TestWithParam<std::string> {};

// The f32 GGUF must follow transformers to rel_l2 <= 1e-4 at every position of every prompt, for the
// logits and for the residual stream after every layer; llama.cpp itself only gets 1e-4..1e-1 here.
TEST_P(F32Reference, LogitsHiddenStatesAndGreedyMatchTransformers) {
  const std::string arch = GetParam();
  const Fixture& fx = fixture(arch);
  auto file = GgufFile::open(test::shared_dir() / "fixtures" / arch / (arch + "-f32.gguf"));
  auto backend = make_cpu_backend(2);
  // transformers ran the bf16 checkpoint: its RoPE frequencies are bf16-rounded (see RopeParams).
  ModelOptions options{.rope_freq_bf16 = true};
  if (arch == "llama") {
    // llama.cpp's converter wrote rope_freqs.weight for an original context of 8192 (its default) while
    // the HF config says 1024; transformers uses the config. Feed uma the config's factors to compare the
    // engine itself; GgufMatchesLlamaCppPeer checks the file's own factors against llama.cpp.
    options.rope_freq_factors = llama3_rope_factors(32, 500000.0f, 8.0f, 1.0f, 4.0f, 1024.0f);
  }
  auto model = load_model(*file, *backend, options);
  const int V = model->config().n_vocab, E = model->config().n_embd;
  const auto& prompts = fx.reference["prompts"];
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto prompt = prompts[pi].get<std::vector<int32_t>>();
    PromptRun r = run_prompt(*model, prompt);
    const auto& ref = fx.ref.at("logits." + std::to_string(pi)).data;
    double worst = 0;
    for (size_t t = 0; t < prompt.size(); ++t) worst = std::max(worst, row_rel_l2(r.logits, ref, t, V));
    EXPECT_LE(worst, 1e-4) << arch << " prompt " << pi << " logits";
    const int L = model->config().n_layer;
    // transformers' last hidden state has the final norm applied (its `hidden_states[-1]`), although the
    // fixture README calls it pre-norm: measured, pre-norm differs by ~0.7 and post-norm by ~1e-6.
    r.hidden[L] = final_norm(*file, r.hidden[L], E, model->config().norm_eps);
    for (int l = 0; l <= L; ++l) {
      const auto& h = fx.ref.at("hidden." + std::to_string(pi) + "." + std::to_string(l)).data;
      double hw = 0;
      for (size_t t = 0; t < prompt.size(); ++t) hw = std::max(hw, row_rel_l2(r.hidden[l], h, t, E));
      EXPECT_LE(hw, 1e-4) << arch << " prompt " << pi << " hidden state after layer " << l;
    }
    const auto want = fx.reference["greedy"][pi].get<std::vector<int32_t>>();
    EXPECT_EQ(greedy(*model, prompt, static_cast<int>(want.size())), want) << arch << " prompt " << pi;
  }
}

// Each GGUF (f32 and quantized) against llama.cpp's logits on the very same file. Prints the measured
// rel_l2 so budgets can be revisited; the budgets are justified in peer_budget().
struct PeerCase {
  std::string arch, type;
};

double peer_budget(const std::string& type) {
  // f32: the same maths in the same order up to exp/sin implementations: measured ~1e-6.
  if (type == "f32") return 1e-5;
  // Quantized weights: uma quantizes activations exactly as llama.cpp's x86 path does (Q8_0 blocks of 32
  // with id = 127/amax, Q8_K from the signed extreme), and the first positions of every prompt agree to
  // ~1e-7. But a 1-ulp difference upstream (expf/silu implementations) eventually flips one activation's
  // 8-bit rounding; that token's K/V then differ by one quantization step and every later position
  // inherits it, amplified ~10x by these random 2-layer models: measured 0.015..0.032 from then on.
  // That is still 10-30x below the quantization error itself (rel_l2 0.2..0.7 against the f32 reference).
  return 0.05;
}

class LlamaCppPeer : public ::testing::TestWithParam<PeerCase> {};

TEST_P(LlamaCppPeer, LogitsMatchLlamaCppOnTheSameFile) {
  const auto [arch, type] = GetParam();
  const Fixture& fx = fixture(arch);
  auto file = GgufFile::open(test::shared_dir() / "fixtures" / arch / (arch + "-" + type + ".gguf"));
  auto backend = make_cpu_backend(2);
  auto model = load_model(*file, *backend);
  const int V = model->config().n_vocab;
  const auto& prompts = fx.reference["prompts"];
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto prompt = prompts[pi].get<std::vector<int32_t>>();
    PromptRun r = run_prompt(*model, prompt);
    const auto& peer = fx.peer.at(type + ".logits." + std::to_string(pi)).data;
    double worst = 0;
    size_t same_top1 = 0;
    for (size_t t = 0; t < prompt.size(); ++t) {
      worst = std::max(worst, row_rel_l2(r.logits, peer, t, V));
      auto top = [&](const float* row) { return std::max_element(row, row + V) - row; };
      same_top1 += top(r.logits.data() + t * V) == top(peer.data() + t * V);
    }
    // The most likely next token agrees almost everywhere.
    EXPECT_GE(same_top1, prompt.size() * 9 / 10) << arch << " " << type << " prompt " << pi;
    std::printf("  %s %s prompt %zu: max rel_l2 vs llama.cpp %.3g\n", arch.c_str(), type.c_str(), pi, worst);
    EXPECT_LE(worst, peer_budget(type)) << arch << " " << type << " prompt " << pi;
  }
}

std::vector<PeerCase> peer_cases() {
  std::vector<PeerCase> out;
  for (const char* arch : {"llama", "qwen2", "qwen3"})
    for (const char* type : {"f32", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"}) out.push_back({arch, type});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Files, LlamaCppPeer, ::testing::ValuesIn(peer_cases()),
                         [](const auto& info) { return info.param.arch + "_" + info.param.type; });

INSTANTIATE_TEST_SUITE_P(Families, F32Reference, ::testing::Values("llama", "qwen2", "qwen3"));

}  // namespace
}  // namespace uma
