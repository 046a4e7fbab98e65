// Tokenizer behaviour beyond the reference vectors: UTF-8 streaming, special-token parsing, BOS/EOS and
// end-of-generation ids, decoding, and the errors for files uma cannot tokenize with.
#include <gtest/gtest.h>

#include <algorithm>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "test_support.h"
#include "tokenizer/tokenizer.h"
#include "uma/error.h"

namespace uma {
namespace {

std::filesystem::path vocab_path(const std::string& name) {
  return test::shared_dir() / "tokenizers" / "llamacpp-vocab" / name;
}

std::unique_ptr<Tokenizer> load(const std::string& name) {
  const auto file = GgufFile::open(vocab_path(name));
  return Tokenizer::from_gguf(*file);
}

bool contains(const std::vector<TokenId>& ids, TokenId id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

bool valid_utf8(const std::string& s) {
  Utf8Stream check;
  return check.push(s) == s && check.flush().empty();
}

TEST(Utf8Stream, HoldsBackIncompleteCharacters) {
  const std::string text = "a你好🦙!";
  Utf8Stream stream;
  std::string joined;
  std::vector<std::string> outputs;
  for (const char c : text) {
    outputs.push_back(stream.push(std::string_view(&c, 1)));
    joined += outputs.back();
  }
  joined += stream.flush();
  EXPECT_EQ(joined, text);
  // "你" is three bytes: nothing comes out until the third arrives.
  EXPECT_EQ(outputs[1], "");
  EXPECT_EQ(outputs[2], "");
  EXPECT_EQ(outputs[3], "你");
  EXPECT_EQ(outputs[10], "🦙");
}

TEST(Utf8Stream, ReplacesInvalidBytes) {
  Utf8Stream stream;
  EXPECT_EQ(stream.push("a\x80" "b"), "a\xEF\xBF\xBD" "b");      // stray continuation byte
  EXPECT_EQ(stream.push("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong encoding
  EXPECT_EQ(stream.push("\xE4\xBD"), "");                           // truncated: held back
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(stream.flush(), "");
}

TEST(Utf8Stream, ChineseStreamedTokenByToken) {
  const std::string text = "我想在apple工作1314151天～ 龘 🦙 Cửa Việt";
  for (const char* name : {"ggml-vocab-qwen2.derived.gguf", "ggml-vocab-llama-spm.gguf", "ggml-vocab-llama-bpe.derived.gguf"}) {
    const auto tok = load(name);
    const auto ids = tok->encode(text, false, false);
    Utf8Stream stream;
    std::string joined;
    bool split_char = false;
    for (const TokenId id : ids) {
      const std::string bytes = tok->token_bytes(id);
      split_char |= !valid_utf8(bytes);
      const std::string piece = stream.push(bytes);
      EXPECT_TRUE(valid_utf8(piece)) << name;
      joined += piece;
    }
    joined += stream.flush();
    // SentencePiece adds a leading space (U+2581) that decode() removes and the raw stream keeps.
    EXPECT_EQ(joined, std::string(name).find("spm") != std::string::npos ? " " + text : text) << name;
    EXPECT_TRUE(split_char) << name << ": the text should exercise tokens that end mid-character";
  }
}

TEST(SpecialTokens, ParsedOnlyWhenAsked) {
  const auto tok = load("ggml-vocab-qwen2.derived.gguf");
  const std::string text = "<|im_start|>user\nhi<|im_end|>\n";
  const TokenId im_start = 151644, im_end = 151645;
  ASSERT_EQ(tok->token_text(im_start), "<|im_start|>");
  const auto parsed = tok->encode(text, false, true);
  EXPECT_EQ(parsed.front(), im_start);
  EXPECT_TRUE(contains(parsed, im_end));
  EXPECT_EQ(tok->decode(parsed, /*special=*/true), text);
  EXPECT_EQ(tok->decode(parsed, /*special=*/false), "user\nhi\n");
  const auto plain = tok->encode(text, false, false);
  EXPECT_FALSE(contains(plain, im_start));
  EXPECT_FALSE(contains(plain, im_end));
  EXPECT_EQ(tok->decode(plain), text);
}

TEST(SpecialTokens, LongestMatchWins) {
  const auto tok = load("ggml-vocab-llama-bpe.derived.gguf");
  // <|start_header_id|> must not be cut by a shorter special token sharing a prefix.
  const auto ids = tok->encode("<|start_header_id|>assistant<|end_header_id|>\n\n", false, true);
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(tok->token_text(ids[0]), "<|start_header_id|>");
  EXPECT_EQ(tok->token_text(ids[2]), "<|end_header_id|>");
}

TEST(SpecialTokens, EndOfGeneration) {
  const auto llama3 = load("ggml-vocab-llama-bpe.derived.gguf");
  EXPECT_EQ(llama3->bos(), 128000);
  EXPECT_EQ(llama3->eos(), 128001);
  const auto eot = llama3->encode("<|eot_id|>", false, true);
  ASSERT_EQ(eot.size(), 1u);
  EXPECT_TRUE(llama3->is_eog(eot[0]));
  EXPECT_TRUE(llama3->is_eog(128001));
  EXPECT_FALSE(llama3->is_eog(128000));
  EXPECT_FALSE(llama3->is_eog(1));

  const auto qwen = load("ggml-vocab-qwen2.derived.gguf");
  EXPECT_TRUE(qwen->is_eog(151645));  // <|im_end|>
  EXPECT_TRUE(qwen->is_eog(151643));  // <|endoftext|>
  EXPECT_FALSE(qwen->is_eog(151644));  // <|im_start|>
}

TEST(SpecialTokens, BosAndEosFollowMetadata) {
  const auto spm = load("ggml-vocab-llama-spm.gguf");
  const auto with = spm->encode("Hello world", true, false);
  EXPECT_EQ(with.front(), 1);
  EXPECT_EQ(std::vector<TokenId>(with.begin() + 1, with.end()), spm->encode("Hello world", false, false));
  EXPECT_EQ(spm->decode(with), "Hello world");
  EXPECT_EQ(spm->decode(with, true), "<s>Hello world");

  // Llama 3 asks for BOS; Qwen2 says add_bos_token = false; GPT-2 style vocabularies default to none.
  EXPECT_EQ(load("ggml-vocab-llama-bpe.derived.gguf")->encode("hi", true, false).front(), 128000);
  const auto qwen = load("ggml-vocab-qwen2.derived.gguf");
  EXPECT_EQ(qwen->encode("hi", true, false), qwen->encode("hi", false, false));
  const auto gpt2 = load("ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(gpt2->encode("hi", true, false), gpt2->encode("hi", false, false));
}

TEST(Decode, SentencePieceRemovesOnlyTheAddedSpace) {
  const auto tok = load("ggml-vocab-llama-spm.gguf");
  for (const std::string text : {"Hello", " Hello", "  two spaces", "\n newline first", "Äpfel 🦙 你好"}) {
    EXPECT_EQ(tok->decode(tok->encode(text, false, false)), text);
    EXPECT_EQ(tok->decode(tok->encode(text, true, false)), text);
  }
}

TEST(Decode, ByteLevelRoundTrip) {
  for (const char* name : {"ggml-vocab-qwen2.derived.gguf", "ggml-vocab-llama-bpe.derived.gguf",
                           "ggml-vocab-deepseek-llm.gguf", "ggml-vocab-gpt-2.gguf"}) {
    const auto tok = load(name);
    for (const std::string text : {"Hello, y'all! How are you 😁 ?我想在apple工作1314151天～", "\t\n  \r\n x",
                                   "int main() { return 0; }", "нещо на Български"}) {
      EXPECT_EQ(tok->decode(tok->encode(text, false, false)), text) << name;
    }
  }
}

TEST(Encode, InvalidUtf8DoesNotThrow) {
  const auto tok = load("ggml-vocab-llama-bpe.derived.gguf");
  const std::string text = "ok \xFF\xFE bad \xE4\xBD";
  const auto ids = tok->encode(text, false, false);
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(tok->decode(ids), text);  // byte-level BPE keeps even invalid bytes
}

TEST(Encode, RepeatedWordsAreStable) {
  // The word cache must not change results when the same word appears in different contexts.
  const auto tok = load("ggml-vocab-qwen2.derived.gguf");
  const auto once = tok->encode(" tokenizer", false, false);
  const auto many = tok->encode(" tokenizer tokenizer tokenizer", false, false);
  ASSERT_EQ(many.size(), once.size() * 3);
  for (size_t i = 0; i < many.size(); ++i) EXPECT_EQ(many[i], once[i % once.size()]);
}

// ---- files uma cannot tokenize with ----

std::filesystem::path write_gguf(const std::string& name, const std::function<void(GgufWriter&)>& fill) {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  fill(w);
  const auto path = test::temp_dir() / name;
  w.write(path);
  return path;
}

std::string error_of(const std::filesystem::path& path) {
  try {
    const auto file = GgufFile::open(path);
    Tokenizer::from_gguf(*file);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Errors, NoVocabulary) {
  const auto path = write_gguf("no_vocab.gguf", [](GgufWriter&) {});
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find("tokenizer.ggml.tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("no_vocab.gguf"), std::string::npos) << msg;
}

TEST(Errors, UnknownModelListsSupported) {
  const auto path = write_gguf("unknown_model.gguf", [](GgufWriter& w) {
    w.set_string("tokenizer.ggml.model", "t5");
    w.set_string_array("tokenizer.ggml.tokens", {"<pad>", "</s>", "<unk>"});
  });
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find("'t5'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gpt2"), std::string::npos) << msg;
}

TEST(Errors, UnknownPreTokenizerListsSupported) {
  const auto path = write_gguf("unknown_pre.gguf", [](GgufWriter& w) {
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "no-such-pre");
    w.set_string_array("tokenizer.ggml.tokens", {"a", "b", "ab"});
    w.set_string_array("tokenizer.ggml.merges", {"a b"});
  });
  const std::string msg = error_of(path);
  EXPECT_NE(msg.find("no-such-pre"), std::string::npos) << msg;
  EXPECT_NE(msg.find("llama-bpe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("qwen2"), std::string::npos) << msg;
}

TEST(Errors, MissingPreTokenizerFallsBackToDefault) {
  // As llama.cpp: a BPE vocabulary without tokenizer.ggml.pre uses the default regexes (GPT-NeoX vocab).
  const auto tok = load("ggml-vocab-gpt-neox.gguf");
  EXPECT_EQ(tok->decode(tok->encode("Hello world 123", false, false)), "Hello world 123");
}

TEST(Errors, BpeWithoutMerges) {
  const auto path = write_gguf("no_merges.gguf", [](GgufWriter& w) {
    w.set_string("tokenizer.ggml.model", "gpt2");
    w.set_string("tokenizer.ggml.pre", "gpt-2");
    w.set_string_array("tokenizer.ggml.tokens", {"a", "b"});
  });
  EXPECT_NE(error_of(path).find("tokenizer.ggml.merges"), std::string::npos);
}

TEST(Errors, OutOfRangeIds) {
  const auto tok = load("ggml-vocab-gpt-2.gguf");
  EXPECT_THROW(tok->token_bytes(tok->vocab_size()), Error);
  EXPECT_THROW(tok->token_text(-1), Error);
}

}  // namespace
}  // namespace uma
