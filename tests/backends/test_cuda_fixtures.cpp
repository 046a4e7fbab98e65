// The model fixtures through the CUDA backend, with the CPU path's tolerances (tests/model): f32 GGUFs
// against transformers, every GGUF against llama.cpp on the same file, and against the CPU backend itself;
// stories260K's greedy continuation must equal the CPU's token for token.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "fixtures.h"
#include "cuda_test_support.h"
#include "test_support.h"

namespace uma {
namespace {

using test::gpu;
using test::have_gpu;

std::vector<float> prompt_logits(Model& model, const std::vector<int32_t>& prompt) {
  return test::run_prompt(model, prompt).logits;
}

double worst_row(const std::vector<float>& a, const std::vector<float>& b, size_t rows, size_t width) {
  double worst = 0;
  for (size_t r = 0; r < rows; ++r) worst = std::max(worst, test::row_rel_l2(a, b, r, width));
  return worst;
}

using test::greedy;

struct Case {
  std::string arch, type;
};

class CudaFixture : public ::testing::TestWithParam<Case> {};

// The same budgets as tests/model/test_fixture_logits.cpp (which explains them): 1e-5 against llama.cpp for
// f32, 0.05 for quantized files; plus 1e-4 against transformers for f32, and greedy equal to the reference.
TEST_P(CudaFixture, MatchesReferencesLikeTheCpuPath) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  const auto [arch, type] = GetParam();
  const auto path = test::fixture_dir(arch) / (arch + "-" + type + ".gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  const test::Fixture& fx = test::fixture(arch);
  const auto& reference = fx.reference;
  const auto& ref = fx.ref;
  const auto& peer = fx.peer;
  const test::GpuAndCpuModels m = test::load_on_gpu_and_cpu(path);
  Model& model = *m.model;
  Model& model_cpu = *m.model_cpu;
  const size_t V = static_cast<size_t>(model.config().n_vocab);
  const auto& prompts = reference["prompts"];
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto prompt = prompts[pi].get<std::vector<int32_t>>();
    const auto logits = prompt_logits(model, prompt);
    const auto logits_cpu = prompt_logits(model_cpu, prompt);
    const auto& pl = peer.at(type + ".logits." + std::to_string(pi)).data;
    const double vs_peer = worst_row(logits, pl, prompt.size(), V);
    const double vs_cpu = worst_row(logits, logits_cpu, prompt.size(), V);
    std::printf("  %s %s prompt %zu: rel_l2 vs llama.cpp %.3g, vs uma cpu %.3g\n", arch.c_str(), type.c_str(), pi,
                vs_peer, vs_cpu);
    EXPECT_LE(vs_peer, type == "f32" ? 1e-5 : 0.05) << "vs llama.cpp, prompt " << pi;
    size_t same_top1 = 0;
    for (size_t t = 0; t < prompt.size(); ++t) {
      auto top = [&](const float* row) { return std::max_element(row, row + V) - row; };
      same_top1 += top(logits.data() + t * V) == top(pl.data() + t * V);
    }
    EXPECT_GE(same_top1, prompt.size() * 9 / 10) << "top-1 vs llama.cpp, prompt " << pi;
    // The cache uma keeps on a GPU by default (f16 cells, EngineOptions::kv_type "auto"): the quantized
    // budget against llama.cpp, whatever the weights.
    const auto logits16 = test::run_prompt(model, prompt, true).logits;
    const double vs_peer16 = worst_row(logits16, pl, prompt.size(), V);
    std::printf("  %s %s prompt %zu, f16 cache: rel_l2 vs llama.cpp %.3g\n", arch.c_str(), type.c_str(), pi, vs_peer16);
    EXPECT_LE(vs_peer16, 0.05) << "f16 cache vs llama.cpp, prompt " << pi;
    // 8-bit cells (--kv-type q8_0), where the widths are whole 32-value blocks: the same budget.
    const KvCacheOptions ko = model.kv_options(256, 1);
    if (ko.k_width % 32 == 0 && ko.v_width % 32 == 0) {
      const auto logits8 = test::run_prompt(model, prompt, false, true).logits;
      const double vs_peer8 = worst_row(logits8, pl, prompt.size(), V);
      std::printf("  %s %s prompt %zu, 8-bit cache: rel_l2 vs llama.cpp %.3g\n", arch.c_str(), type.c_str(), pi,
                  vs_peer8);
      EXPECT_LE(vs_peer8, 0.05) << "8-bit cache vs llama.cpp, prompt " << pi;
    }
    if (type == "f32") {
      const auto want = reference["greedy"][pi].get<std::vector<int32_t>>();
      EXPECT_EQ(greedy(model, prompt, static_cast<int>(want.size())),
                greedy(model_cpu, prompt, static_cast<int>(want.size())))
          << "greedy vs uma cpu, prompt " << pi;
    }
  }
  if (type == "f32") {
    // Against transformers, with the CPU test's model options (bf16-rounded RoPE frequencies, and the HF
    // config's Llama-3 factors for llama).
    ModelOptions options{.rope_freq_bf16 = true};
    if (arch == "llama") options.rope_freq_factors = llama3_rope_factors(32, 500000.0f, 8.0f, 1.0f, 4.0f, 1024.0f);
    auto hf_model = load_model(*m.file, *m.cuda, options);
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      const auto prompt = prompts[pi].get<std::vector<int32_t>>();
      const auto logits = prompt_logits(*hf_model, prompt);
      EXPECT_LE(worst_row(logits, ref.at("logits." + std::to_string(pi)).data, prompt.size(), V), 1e-4)
          << "vs transformers, prompt " << pi;
      const auto want = reference["greedy"][pi].get<std::vector<int32_t>>();
      EXPECT_EQ(greedy(*hf_model, prompt, static_cast<int>(want.size())), want) << "greedy, prompt " << pi;
    }
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* arch : {"llama", "qwen2", "qwen3"})
    for (const char* type : {"f32", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"}) out.push_back({arch, type});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Files, CudaFixture, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.arch + "_" + info.param.type; });

TEST(CudaStories, GreedyEqualsCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  const auto path = test::shared_dir() / "models" / "stories260K.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  const test::GpuAndCpuModels m = test::load_on_gpu_and_cpu(path);
  Model& model = *m.model;
  Model& model_cpu = *m.model_cpu;
  const std::vector<int32_t> prompt = {1, 403, 407, 261, 378};  // BOS and a few tokens
  std::vector<int32_t> p = prompt;
  for (int32_t& t : p) t = std::min<int32_t>(t, model.config().n_vocab - 1);
  const auto a = greedy(model, p, 200), b = greedy(model_cpu, p, 200);
  EXPECT_EQ(a, b);
  EXPECT_EQ(greedy(model, p, 200, true), b) << "the GPU picking the tokens (argmax_rows)";
}

}  // namespace
}  // namespace uma
