// The MoE fixtures (mixtral, qwen3_moe, deepseek_v3: MoE routing, shared experts, MLA) through the CUDA
// backend. f32 GGUFs hold the CPU path's budgets (tests/model/test_moe_fixtures.cpp): transformers (logits and
// the hidden state after every layer <= 1e-4, greedy equal), llama.cpp (1e-5, top-1 >= 90 %), and greedy equal
// to uma's CPU backend. A file that is not present is skipped (the GPU machine carries a subset).
//
// Quantized GGUFs cannot hold the CPU's quantized budget (<= 0.05 at >= 85 % of positions, top-1 >= 90 % per
// prompt): that budget rests on the CPU quantizing activations exactly as llama.cpp does (the two agree to
// ~1e-7 until a rounding flip), so a routing flip needs a near tie *and* a flip. The CUDA path is 2-4 % from
// llama.cpp already for dense models (llama Q8_0 0.020-0.030, Q4_K_M 0.032-0.040: f16 prefill GEMMs, int8
// activations with f32 scales), and that noise picks another expert at every near tie. Measured on the H100
// (test log): the residual stream after layer 0 stays within 0.05 of the CPU's at every position but one,
// outliers of 0.2-0.75 appear only after MoE layers (routing flips), and the expert GEMVs are exact on the
// device's quantized activations (test_cuda_moe.cpp). deepseek_v3 (sigmoid scores x 2.5, 4 groups) is the
// most sensitive: 50-84 % of positions within 0.05. Budget here: the same top-1 as llama.cpp at >= 85 % of
// all positions of the three prompts (measured >= 88.6 %), and the median position within 0.1.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "backend/backend.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "fixtures.h"
#include "cuda_test_support.h"
#include "test_support.h"

namespace uma {
namespace {

using test::gpu;
using test::have_gpu;

struct Case {
  std::string arch, type;
};

class CudaMoeFixture : public ::testing::TestWithParam<Case> {};

TEST_P(CudaMoeFixture, MatchesReferencesLikeTheCpuPath) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device (or built without CUDA)";
  const auto [arch, type] = GetParam();
  const auto path = test::fixture_dir(arch) / (arch + "-" + type + ".gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  const test::Fixture& fx = test::fixture(arch);
  const test::GpuAndCpuModels m = test::load_on_gpu_and_cpu(path);
  Model& model = *m.model;
  Model& model_cpu = *m.model_cpu;
  const size_t V = static_cast<size_t>(model.config().n_vocab);
  const auto& prompts = fx.reference["prompts"];
  size_t all_top1 = 0, all_n = 0;
  std::vector<double> all_err;
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto prompt = prompts[pi].get<std::vector<int32_t>>();
    const size_t n = prompt.size();
    const test::PromptRun run = test::run_prompt(model, prompt), run_cpu = test::run_prompt(model_cpu, prompt);
    const auto& logits = run.logits;
    const auto& logits_cpu = run_cpu.logits;
    // Where CUDA and the CPU part: per layer, the median distance of the residual stream and the positions
    // beyond 0.05 (a routing flip shows as an outlier after a MoE layer, not as a drift).
    const int E = model.config().n_embd;
    for (size_t l = 1; l < run.hidden.size() && type != "f32"; ++l) {
      std::vector<double> d(n);
      for (size_t t = 0; t < n; ++t) d[t] = test::row_rel_l2(run.hidden[l], run_cpu.hidden[l], t, E);
      std::vector<double> sorted = d;
      std::sort(sorted.begin(), sorted.end());
      std::printf("    layer %zu vs uma cpu: median %.3g, max %.3g, %zu/%zu positions > 0.05\n", l - 1, sorted[n / 2],
                  sorted.back(), size_t(std::count_if(d.begin(), d.end(), [](double v) { return v > 0.05; })), n);
    }
    const auto& peer = fx.peer.at(type + ".logits." + std::to_string(pi)).data;
    double worst = 0, worst_cpu = 0;
    size_t within = 0, same_top1 = 0;
    for (size_t t = 0; t < n; ++t) {
      const double e = test::row_rel_l2(logits, peer, t, V);
      worst = std::max(worst, e);
      worst_cpu = std::max(worst_cpu, test::row_rel_l2(logits, logits_cpu, t, V));
      within += e <= 0.05;
      const float *a = logits.data() + t * V, *b = peer.data() + t * V;
      same_top1 += (std::max_element(a, a + V) - a) == (std::max_element(b, b + V) - b);
    }
    std::printf("  %s %s prompt %zu: max rel_l2 vs llama.cpp %.3g (%zu/%zu <= 0.05, top-1 %zu/%zu), vs uma cpu %.3g\n",
                arch.c_str(), type.c_str(), pi, worst, within, n, same_top1, n, worst_cpu);
    all_top1 += same_top1, all_n += n;
    for (size_t t = 0; t < n; ++t) all_err.push_back(test::row_rel_l2(logits, peer, t, V));
    if (type == "f32") {
      EXPECT_GE(same_top1, n * 9 / 10) << "top-1 vs llama.cpp, prompt " << pi;
      EXPECT_LE(worst, 1e-5) << "vs llama.cpp, prompt " << pi;
      const auto want = fx.reference["greedy"][pi].get<std::vector<int32_t>>();
      EXPECT_EQ(test::greedy(model, prompt, static_cast<int>(want.size())),
                test::greedy(model_cpu, prompt, static_cast<int>(want.size())))
          << "greedy vs uma cpu, prompt " << pi;
    }
  }
  if (type != "f32") {
    std::sort(all_err.begin(), all_err.end());
    const double median = all_err[all_err.size() / 2];
    std::printf("  %s %s all prompts: top-1 %zu/%zu, median rel_l2 vs llama.cpp %.3g\n", arch.c_str(), type.c_str(),
                all_top1, all_n, median);
    EXPECT_GE(all_top1, all_n * 85 / 100) << "top-1 vs llama.cpp over all prompts";
    EXPECT_LE(median, 0.1) << "median position vs llama.cpp";
    return;
  }
  // Against transformers with the CPU test's options (bf16-rounded RoPE frequencies): logits, the residual
  // stream after every layer (the last one after the final norm, as transformers reports it), greedy.
  auto hf_model = load_model(*m.file, *m.cuda, ModelOptions{.rope_freq_bf16 = true});
  const int E = hf_model->config().n_embd, L = hf_model->config().n_layer;
  for (size_t pi = 0; pi < prompts.size(); ++pi) {
    const auto prompt = prompts[pi].get<std::vector<int32_t>>();
    test::PromptRun r = test::run_prompt(*hf_model, prompt);
    double worst = 0;
    for (size_t t = 0; t < prompt.size(); ++t)
      worst = std::max(worst, test::row_rel_l2(r.logits, fx.ref.at("logits." + std::to_string(pi)).data, t, V));
    std::printf("  %s prompt %zu: max rel_l2 vs transformers %.3g", arch.c_str(), pi, worst);
    EXPECT_LE(worst, 1e-4) << "vs transformers, prompt " << pi;
    r.hidden[L] = test::final_norm(*m.file, r.hidden[L], E, hf_model->config().norm_eps);
    for (int l = 0; l <= L; ++l) {
      const auto& h = fx.ref.at("hidden." + std::to_string(pi) + "." + std::to_string(l)).data;
      double hw = 0;
      for (size_t t = 0; t < prompt.size(); ++t) hw = std::max(hw, test::row_rel_l2(r.hidden[l], h, t, E));
      std::printf(", h%d %.2g", l, hw);
      EXPECT_LE(hw, 1e-4) << "prompt " << pi << " hidden state after layer " << l;
    }
    std::printf("\n");
    const auto want = fx.reference["greedy"][pi].get<std::vector<int32_t>>();
    EXPECT_EQ(test::greedy(*hf_model, prompt, static_cast<int>(want.size())), want) << "greedy, prompt " << pi;
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* arch : {"mixtral", "qwen3_moe", "deepseek_v3"})
    for (const char* type : {"f32", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"}) out.push_back({arch, type});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Files, CudaMoeFixture, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.arch + "_" + info.param.type; });

}  // namespace
}  // namespace uma
