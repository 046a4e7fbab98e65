// Prompt formats (model template or fallback) and the stop-string text stream.
#include <gtest/gtest.h>

#include "chat/prompt_format.h"
#include "test_support.h"

namespace uma {
namespace {

std::unique_ptr<Engine> load(const std::filesystem::path& p) {
  EngineOptions o;
  o.n_threads = 1;
  o.n_ctx = 64;
  return Engine::load(p, o);
}

TEST(PromptFormat, UsesTheModelsTemplate) {
  auto e = load(test::shared_dir() / "fixtures/qwen2/qwen2-f32.gguf");
  PromptFormat f(*e);
  EXPECT_EQ(f.name(), "model");
  const std::string text = f.render({{"system", "Be brief."}, {"user", "Hi"}}, {});
  EXPECT_EQ(text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  const auto ids = f.tokenize(text);
  EXPECT_EQ(ids.front(), e->tokenizer().encode("<|im_start|>", false, true).front()) << "special tokens parsed";
  EXPECT_TRUE(f.stops({}).empty());
}

TEST(PromptFormat, FallsBackToAPlainTranscript) {
  auto e = load(test::shared_dir() / "models/stories260K.gguf");
  PromptFormat f(*e);
  EXPECT_EQ(f.name(), "fallback:user-assistant");
  EXPECT_EQ(f.render({{"system", "S"}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Go"}}, {}),
            "S\n\nUser: Hi\nAssistant: Hello\nUser: Go\nAssistant:");
  EXPECT_EQ(f.stops({}), std::vector<std::string>{"\nUser:"});
  const auto ids = f.tokenize("Hello");
  EXPECT_EQ(ids.front(), e->tokenizer().bos()) << "BOS added when the text lacks it";
}

TEST(TextStream, StopsAtTheFirstStopStringAndHoldsBackPrefixes) {
  auto e = load(test::shared_dir() / "models/stories260K.gguf");
  const Tokenizer& tok = e->tokenizer();
  const auto ids = tok.encode("Lily ran.\nUser: more", false, false);
  TextStream s(tok, {"\nUser:"});
  std::string out;
  for (TokenId t : ids) {
    out += s.push(t);
    if (s.stopped()) break;
  }
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(out, " Lily ran.");  // SentencePiece tokens carry their leading space
  EXPECT_EQ(s.finish(), "");
}

TEST(TextStream, WithoutStopsPassesTextThrough) {
  auto e = load(test::shared_dir() / "models/stories260K.gguf");
  const Tokenizer& tok = e->tokenizer();
  TextStream s(tok, {});
  std::string out;
  for (TokenId t : tok.encode("The cat sat.", false, false)) out += s.push(t);
  out += s.finish();
  EXPECT_EQ(out, " The cat sat.");
  EXPECT_FALSE(s.stopped());
}

}  // namespace
}  // namespace uma
