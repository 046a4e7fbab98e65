#include "tokenizer/vocab.h"

#include <algorithm>
#include <cctype>
#include <span>

#include "gguf/gguf.h"
#include "uma/error.h"

namespace uma {
namespace {

// Texts that end a turn in common chat formats; llama.cpp treats them as end-of-generation even when the
// converter forgot to say so.
constexpr std::string_view kEotNames[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
};
constexpr std::string_view kEogNames[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
    "[EOT]", "[EOS]", "<|end_of_text|>", "<end_of_utterance>", "<｜end▁of▁sentence｜>", "<|return|>", "<|call|>",
};

bool contains(std::span<const std::string_view> names, std::string_view s) {
  return std::find(names.begin(), names.end(), s) != names.end();
}

TokenId read_id(const GgufFile& file, const char* key, TokenId fallback, int32_t n_tokens) {
  if (!file.has(key)) return fallback;
  const int64_t id = file.get_int(key);
  return (id >= 0 && id < n_tokens) ? static_cast<TokenId>(id) : fallback;
}

}  // namespace

void Vocab::index() {
  ids_.clear();
  ids_.reserve(text.size());
  for (TokenId id = 0; id < size(); ++id) ids_.emplace(text[id], id);  // first id wins on duplicates
}

Vocab load_vocab(const GgufFile& file, VocabKind kind, bool default_add_bos) {
  Vocab v;
  v.kind = kind;
  const auto tokens = file.get_string_array("tokenizer.ggml.tokens");
  const auto n = static_cast<int32_t>(tokens.size());
  if (n == 0) fail("{}: tokenizer.ggml.tokens is empty; the file has no usable vocabulary", file.path().string());
  v.text.reserve(n);
  for (const auto t : tokens) v.text.emplace_back(t);

  v.score.assign(n, 0.0f);
  if (file.has("tokenizer.ggml.scores")) {
    const auto scores = file.get_float_array("tokenizer.ggml.scores");
    if (scores.size() < tokens.size()) {
      fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", file.path().string(), scores.size(), n);
    }
    std::copy_n(scores.begin(), n, v.score.begin());
  }
  v.type.assign(n, TokenType::normal);
  if (file.has("tokenizer.ggml.token_type")) {
    const auto types = file.get_int_array("tokenizer.ggml.token_type");
    if (types.size() < tokens.size()) {
      fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", file.path().string(), types.size(), n);
    }
    for (int32_t i = 0; i < n; ++i) {
      v.type[i] = (types[i] >= 1 && types[i] <= 6) ? static_cast<TokenType>(types[i]) : TokenType::undefined;
    }
  }
  v.index();

  // llama.cpp's defaults: SentencePiece vocabularies put <unk>, <s>, </s> at 0, 1, 2; GPT-2 style ones
  // historically used 11 for both BOS and EOS.
  const bool spm = kind == VocabKind::spm;
  v.bos = read_id(file, "tokenizer.ggml.bos_token_id", spm ? 1 : 11, n);
  v.eos = read_id(file, "tokenizer.ggml.eos_token_id", spm ? 2 : 11, n);
  v.unk = read_id(file, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, n);
  v.eot = read_id(file, "tokenizer.ggml.eot_token_id", -1, n);
  v.eom = read_id(file, "tokenizer.ggml.eom_token_id", -1, n);
  if (!v.valid(v.bos)) v.bos = -1;
  if (!v.valid(v.eos)) v.eos = -1;
  if (!v.valid(v.unk)) v.unk = -1;

  v.add_bos = file.get_bool("tokenizer.ggml.add_bos_token", default_add_bos);
  v.add_eos = file.get_bool("tokenizer.ggml.add_eos_token", false);
  v.add_space_prefix = spm && file.get_bool("tokenizer.ggml.add_space_prefix", true);
  if (v.add_bos && v.bos < 0) {
    fail("{}: tokenizer.ggml.add_bos_token is true but the vocabulary has no BOS token", file.path().string());
  }
  if (v.add_eos && v.eos < 0) {
    fail("{}: tokenizer.ggml.add_eos_token is true but the vocabulary has no EOS token", file.path().string());
  }

  // End-of-generation tokens: by id from the metadata, and by well-known text. Such tokens are control
  // tokens whatever the converter said, so they never print as text.
  for (TokenId id = 0; id < n; ++id) {
    const std::string_view t = v.text[id];
    if (v.eot < 0 && contains(kEotNames, t)) v.eot = id;
    if (v.eom < 0 && t == "<|eom_id|>") v.eom = id;
    if (contains(kEogNames, t)) {
      v.eog.insert(id);
      v.type[id] = TokenType::control;
    }
  }
  for (const TokenId id : {v.eos, v.eot, v.eom}) {
    if (id >= 0) v.eog.insert(id);
  }
  // gpt-oss (o200k_harmony) ends turns with <|return|> or <|call|>; its <|end|> only closes a message.
  const TokenId end = v.find("<|end|>");
  if (end >= 0 && v.eog.count(end) && v.eog.count(v.find("<|return|>")) && v.eog.count(v.find("<|call|>"))) {
    v.eog.erase(end);
    v.type[end] = TokenType::user_defined;
  }

  // Phi-3's special tokens strip the whitespace that follows them (llama.cpp keys this on the model name).
  v.rstrip.assign(n, false);
  std::string name = file.get_string("general.name", "");
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  if (name.find("phi-3") != std::string::npos || name.find("phi3") != std::string::npos) {
    for (TokenId id = 0; id < n; ++id) {
      const TokenType t = v.type[id];
      v.rstrip[id] = t == TokenType::control || t == TokenType::user_defined || t == TokenType::unknown;
    }
    for (const char* s : {"</s>"}) {
      if (const TokenId id = v.find(s); id >= 0) v.rstrip[id] = true;
    }
    for (const char* s : {"<unk>", "<s>", "<|endoftext|>"}) {
      if (const TokenId id = v.find(s); id >= 0) v.rstrip[id] = false;
    }
  }
  return v;
}

}  // namespace uma
