// The vocabulary shared by both tokenizer algorithms: token texts, scores and types from tokenizer.ggml.*,
// the special token ids, and llama.cpp's defaults for everything the metadata leaves out.
#pragma once
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace uma {

// tokenizer.ggml.token_type values.
enum class TokenType : int32_t { undefined = 0, normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

enum class VocabKind { spm, bpe };

struct Vocab {
  VocabKind kind = VocabKind::spm;
  std::vector<std::string> text;
  std::vector<float> score;
  std::vector<TokenType> type;
  std::vector<bool> rstrip;  // special tokens that swallow the whitespace after them (Phi-3)

  TokenId bos = -1, eos = -1, eot = -1, eom = -1, unk = -1;
  std::unordered_set<TokenId> eog;
  bool add_bos = false;
  bool add_eos = false;
  bool add_space_prefix = false;  // SentencePiece: prepend a space to text at the start and after specials

  TokenId find(std::string_view s) const {
    const auto it = ids_.find(s);
    return it == ids_.end() ? -1 : it->second;
  }
  int32_t size() const { return static_cast<int32_t>(text.size()); }
  bool valid(TokenId id) const { return id >= 0 && id < size(); }

  // Builds the text -> id map once `text` is final (the keys view into it).
  void index();

 private:
  std::unordered_map<std::string_view, TokenId> ids_;
};

// Reads tokens, scores, types, special ids and flags. `default_add_bos` is the value used when
// tokenizer.ggml.add_bos_token is absent.
Vocab load_vocab(const GgufFile& file, VocabKind kind, bool default_add_bos);

}  // namespace uma
