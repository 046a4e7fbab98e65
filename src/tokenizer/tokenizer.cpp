#include "tokenizer/tokenizer.h"

#include "gguf/gguf.h"
#include "tokenizer/tokenizer_impl.h"
#include "uma/error.h"

namespace uma {

std::unique_ptr<Tokenizer> Tokenizer::from_gguf(const GgufFile& file) {
  if (!file.has("tokenizer.ggml.tokens")) {
    fail("{}: no tokenizer vocabulary (tokenizer.ggml.tokens is missing); use a GGUF that includes its tokenizer",
         file.path().string());
  }
  if (!file.has("tokenizer.ggml.model")) {
    fail("{}: tokenizer.ggml.model is missing, so the tokenizer type is unknown; supported: llama (SentencePiece), "
         "gpt2 (byte-level BPE)",
         file.path().string());
  }
  const std::string model = file.get_string("tokenizer.ggml.model");
  if (model == "llama") return make_spm_tokenizer(file);
  if (model == "gpt2") return make_bpe_tokenizer(file);
  fail("{}: unsupported tokenizer model '{}' (tokenizer.ggml.model); supported: llama (SentencePiece), gpt2 "
       "(byte-level BPE)",
       file.path().string(), model);
}

std::string Tokenizer::decode(const std::vector<TokenId>& ids, bool special) const {
  std::string out;
  bool strip = decode_strips_first_space();
  for (size_t i = 0; i < ids.size(); ++i) {
    std::string piece = token_bytes(ids[i], special);
    if (i == 0 && ids[i] == bos()) {
      out += piece;
      continue;
    }
    if (strip && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    strip = false;
    out += piece;
  }
  return out;
}

VocabTokenizer::VocabTokenizer(Vocab vocab) : vocab_(std::move(vocab)), splitter_(vocab_) {
  vocab_.index();  // the moved strings may have moved their characters (short-string buffers)
}

std::vector<TokenId> VocabTokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<TokenId> out;
  if (add_special && vocab_.add_bos) out.push_back(vocab_.bos);
  bool after_special = true;
  for (const Fragment& f : splitter_.split(text, parse_special)) {
    if (f.token >= 0) {
      out.push_back(f.token);
      after_special = true;
    } else {
      encode_text(f.text, after_special, out);
      after_special = false;
    }
  }
  if (add_special && vocab_.add_eos) out.push_back(vocab_.eos);
  return out;
}

std::string_view VocabTokenizer::token_text(TokenId id) const {
  if (!vocab_.valid(id)) fail("token id {} is out of range (vocabulary of {} tokens)", id, vocab_.size());
  return vocab_.text[id];
}

std::string VocabTokenizer::token_bytes(TokenId id, bool special) const {
  if (!vocab_.valid(id)) fail("token id {} is out of range (vocabulary of {} tokens)", id, vocab_.size());
  const std::string& text = vocab_.text[id];
  switch (vocab_.type[id]) {
    case TokenType::control:
    case TokenType::unknown:
      return special ? text : std::string();
    case TokenType::user_defined:
      return text;  // stored as plain text by the converters
    case TokenType::unused:
      return {};
    case TokenType::byte:
      if (text.size() == 6 && text.starts_with("<0x") && text.back() == '>') {
        return std::string(1, static_cast<char>(std::stoi(text.substr(3, 2), nullptr, 16)));
      }
      return normal_bytes(id);
    case TokenType::normal:
    case TokenType::undefined:
      break;
  }
  return normal_bytes(id);
}

}  // namespace uma
