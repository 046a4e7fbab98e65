// stories260K (a real trained Llama) and its GGUF v1 twin: 64 greedy tokens from several prompts must equal
// an independent reference token for token. The reference (tests/e2e/data/stories260k_greedy.json) is
// transformers' LlamaForCausalLM in f32 on the same weights (tools/reference/gguf_llama_greedy.py); llama.cpp
// itself cannot be built here, and uma's f32 logits match llama.cpp's to ~1e-6 on the fixtures.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/engine.h"
#include "test_support.h"

namespace uma {
namespace {

class StoriesGreedy : public ::testing::TestWithParam<std::string> {};

TEST_P(StoriesGreedy, MatchesTheReferenceFor64Tokens) {
  std::ifstream in(std::filesystem::path(UMA_SOURCE_DIR) / "tests/e2e/data/stories260k_greedy.json");
  const auto ref = nlohmann::json::parse(in);
  EngineOptions eo;
  eo.n_threads = 2;
  auto engine = Engine::load(test::shared_dir() / "models" / GetParam(), eo);
  const std::vector<std::string> texts = {"Once upon a time", "Lily and Tom went to the park", "The cat sat",
                                          "One day, a little boy named Tim", "There was a big red ball"};
  const auto& cases = ref["transformers_llama_f32"];
  ASSERT_EQ(cases.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto prompt = engine->tokenizer().encode(texts[i], true, true);
    EXPECT_EQ(prompt, cases[i]["prompt"].get<std::vector<int32_t>>()) << "tokenization of: " << texts[i];
    GenerateOptions go;
    go.n_predict = 64;
    go.sampling.temperature = 0;
    go.ignore_eos = true;
    const auto result = generate(*engine, 0, prompt, go, nullptr);
    EXPECT_EQ(result.tokens, cases[i]["greedy"].get<std::vector<int32_t>>()) << "prompt: " << texts[i];
  }
  // The README's anchor: "Once upon a time, there was a little girl named Lily."
  GenerateOptions go;
  go.n_predict = 11;
  go.sampling.temperature = 0;
  const auto r = generate(*engine, 0, engine->tokenizer().encode("Once upon a time", true, true), go, nullptr);
  EXPECT_EQ(engine->tokenizer().decode(r.tokens), ", there was a little girl named Lily.");
}

INSTANTIATE_TEST_SUITE_P(Versions, StoriesGreedy,
                         ::testing::Values("stories260K.gguf", "tinyllamas-stories-260k-f32.ggufv1.gguf"));

}  // namespace
}  // namespace uma
