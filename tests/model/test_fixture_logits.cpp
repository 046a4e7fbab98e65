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
#include "fixtures.h"
#include "test_support.h"

namespace uma {
namespace {

using test::fixture;
using test::fixture_dir;
using test::final_norm;
using test::greedy;
using test::PromptRun;
using test::row_rel_l2;
using test::run_prompt;

class F32Reference : public ::testing::TestWithParam<std::string> {};

// The f32 GGUF must follow transformers to rel_l2 <= 1e-4 at every position of every prompt, for the
// logits and for the residual stream after every layer; llama.cpp itself only gets 1e-4..1e-1 here.
TEST_P(F32Reference, LogitsHiddenStatesAndGreedyMatchTransformers) {
  const std::string arch = GetParam();
  const test::Fixture& fx = fixture(arch);
  auto file = GgufFile::open(fixture_dir(arch) / (arch + "-f32.gguf"));
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
    EXPECT_EQ(greedy(*model, prompt, static_cast<int>(want.size()), true), want)
        << arch << " prompt " << pi << ", the backend picking (Model::forward_greedy)";
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
  const test::Fixture& fx = fixture(arch);
  auto file = GgufFile::open(fixture_dir(arch) / (arch + "-" + type + ".gguf"));
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
