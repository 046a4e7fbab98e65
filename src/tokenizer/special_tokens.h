// Splits input text around special-token texts before the tokenizer proper sees it, as llama.cpp does:
// longer tokens are matched first; user-defined tokens always split, control (and unknown) tokens only
// when the caller asks to parse special text.
#pragma once
#include <string_view>
#include <vector>

#include "tokenizer/vocab.h"

namespace uma {

struct Fragment {
  std::string_view text;  // raw text when token < 0
  TokenId token = -1;
};

class SpecialTokenSplitter {
 public:
  explicit SpecialTokenSplitter(const Vocab& vocab);
  std::vector<Fragment> split(std::string_view text, bool parse_special) const;

 private:
  const Vocab& vocab_;
  std::vector<TokenId> specials_;  // control, user-defined and unknown tokens, longest text first
};

}  // namespace uma
