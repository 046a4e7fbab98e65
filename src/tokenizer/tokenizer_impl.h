// What the SentencePiece and BPE tokenizers share: the vocabulary, special-token splitting, BOS/EOS rules,
// and turning ids back into bytes. Each algorithm supplies how one fragment of raw text becomes ids.
#pragma once
#include <memory>

#include "tokenizer/special_tokens.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/vocab.h"

namespace uma {

class VocabTokenizer : public Tokenizer {
 public:
  explicit VocabTokenizer(Vocab vocab);
  VocabTokenizer(const VocabTokenizer&) = delete;
  VocabTokenizer& operator=(const VocabTokenizer&) = delete;

  std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const override;
  std::string token_bytes(TokenId id, bool special = false) const override;
  int32_t vocab_size() const override { return vocab_.size(); }
  TokenId bos() const override { return vocab_.bos; }
  TokenId eos() const override { return vocab_.eos; }
  bool is_eog(TokenId id) const override { return vocab_.eog.count(id) != 0; }
  std::string_view token_text(TokenId id) const override;

  const Vocab& vocab() const { return vocab_; }

 protected:
  // Tokenizes one fragment of raw text. `after_special`: the fragment starts the input or follows a
  // special token (SentencePiece then adds its space prefix).
  virtual void encode_text(std::string_view text, bool after_special, std::vector<TokenId>& out) const = 0;
  // The bytes of a normal (non-special, non-byte) token.
  virtual std::string normal_bytes(TokenId id) const = 0;
  bool decode_strips_first_space() const override { return vocab_.add_space_prefix; }

  Vocab vocab_;
  SpecialTokenSplitter splitter_;
};

std::unique_ptr<Tokenizer> make_spm_tokenizer(const GgufFile& file);
std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GgufFile& file);

}  // namespace uma
