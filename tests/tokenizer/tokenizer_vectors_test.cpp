// llama.cpp's tokenizer test set (shared/tokenizers/llamacpp-vocab): 46 inputs per vocabulary, expected
// ids produced by the Hugging Face tokenizers, no BOS. Every case must match exactly.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "gguf/gguf.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"

namespace uma {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct Case {
  std::string text;
  std::vector<TokenId> ids;
};

std::vector<Case> load_cases(const std::filesystem::path& inp, const std::filesystem::path& out) {
  const std::string sep = "\n__ggml_vocab_test__\n";
  const std::string inputs = read_file(inp);
  std::vector<Case> cases;
  for (size_t pos = 0; pos < inputs.size();) {
    const size_t end = inputs.find(sep, pos);
    if (end == std::string::npos) break;
    cases.push_back({inputs.substr(pos, end - pos), {}});
    pos = end + sep.size();
  }
  std::ifstream expected(out);
  std::string line;
  for (auto& c : cases) {
    if (!std::getline(expected, line)) break;
    std::istringstream ids(line);
    for (TokenId id; ids >> id;) c.ids.push_back(id);
  }
  return cases;
}

std::string printable(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out;
}

class LlamaCppVocab : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(LlamaCppVocab, AllCasesExact) {
  const auto dir = test::shared_dir() / "tokenizers" / "llamacpp-vocab";
  const auto [gguf_name, name] = GetParam();
  const auto gguf_path = dir / gguf_name;
  if (!std::filesystem::exists(gguf_path)) GTEST_SKIP() << "missing " << gguf_path;
  const auto cases = load_cases(dir / (std::string("ggml-vocab-") + name + ".gguf.inp"),
                                dir / (std::string("ggml-vocab-") + name + ".gguf.out"));
  ASSERT_EQ(cases.size(), 46u);
  const auto file = GgufFile::open(gguf_path);
  const auto tok = Tokenizer::from_gguf(*file);
  int failures = 0;
  for (const auto& c : cases) {
    const auto ids = tok->encode(c.text, /*add_special=*/false, /*parse_special=*/false);
    if (ids != c.ids) {
      ++failures;
      std::string got, want;
      for (auto id : ids) got += " " + std::to_string(id);
      for (auto id : c.ids) want += " " + std::to_string(id);
      ADD_FAILURE() << name << " '" << printable(c.text) << "'\n  got: " << got << "\n want: " << want;
    }
  }
  EXPECT_EQ(failures, 0);
}

INSTANTIATE_TEST_SUITE_P(
    All, LlamaCppVocab,
    ::testing::Values(std::pair{"ggml-vocab-llama-spm.gguf", "llama-spm"},
                      std::pair{"ggml-vocab-llama-bpe.derived.gguf", "llama-bpe"},
                      std::pair{"ggml-vocab-qwen2.derived.gguf", "qwen2"},
                      std::pair{"ggml-vocab-deepseek-llm.gguf", "deepseek-llm"},
                      std::pair{"ggml-vocab-deepseek-coder.gguf", "deepseek-coder"},
                      std::pair{"ggml-vocab-gpt-2.gguf", "gpt-2"}, std::pair{"ggml-vocab-phi-3.gguf", "phi-3"},
                      std::pair{"ggml-vocab-falcon.gguf", "falcon"},
                      std::pair{"ggml-vocab-starcoder.gguf", "starcoder"},
                      std::pair{"ggml-vocab-refact.gguf", "refact"}, std::pair{"ggml-vocab-mpt.gguf", "mpt"}),
    [](const auto& info) {
      std::string n = info.param.second;
      for (auto& c : n) if (c == '-') c = '_';
      return n;
    });

}  // namespace
}  // namespace uma
