#include "tokenizer/special_tokens.h"

#include <algorithm>

namespace uma {
namespace {
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
}  // namespace

SpecialTokenSplitter::SpecialTokenSplitter(const Vocab& vocab) : vocab_(vocab) {
  for (TokenId id = 0; id < vocab.size(); ++id) {
    const TokenType t = vocab.type[id];
    if ((t == TokenType::control || t == TokenType::user_defined || t == TokenType::unknown) && !vocab.text[id].empty()) {
      specials_.push_back(id);
    }
  }
  std::stable_sort(specials_.begin(), specials_.end(),
                   [&](TokenId a, TokenId b) { return vocab.text[a].size() > vocab.text[b].size(); });
}

std::vector<Fragment> SpecialTokenSplitter::split(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({text, -1});
  std::vector<Fragment> next;
  for (const TokenId id : specials_) {
    if (!parse_special && vocab_.type[id] != TokenType::user_defined) continue;
    const std::string_view special = vocab_.text[id];
    // Cheap pre-check over the raw fragments before rebuilding the list.
    bool found = false;
    for (const Fragment& f : fragments) {
      if (f.token < 0 && f.text.find(special) != std::string_view::npos) {
        found = true;
        break;
      }
    }
    if (!found) continue;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token >= 0) {
        next.push_back(f);
        continue;
      }
      std::string_view rest = f.text;
      for (size_t at; (at = rest.find(special)) != std::string_view::npos;) {
        if (at > 0) next.push_back({rest.substr(0, at), -1});
        next.push_back({{}, id});
        rest.remove_prefix(at + special.size());
        if (vocab_.rstrip[id]) {
          while (!rest.empty() && is_space(rest.front())) rest.remove_prefix(1);
        }
      }
      if (!rest.empty()) next.push_back({rest, -1});
    }
    fragments.swap(next);
  }
  return fragments;
}

}  // namespace uma
