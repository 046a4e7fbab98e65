// SentencePiece-style tokenizer (tokenizer.ggml.model = "llama"): spaces become U+2581, then adjacent
// pieces are merged greedily, always taking the pair whose merged text has the highest vocabulary score
// (llama.cpp's llm_tokenizer_spm). Text that no token covers falls back to <0xXX> byte tokens.
#include <queue>
#include <unordered_map>

#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"

namespace uma {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK

class SpmTokenizer final : public VocabTokenizer {
 public:
  using VocabTokenizer::VocabTokenizer;

 protected:
  void encode_text(std::string_view raw, bool after_special, std::vector<TokenId>& out) const override;
  std::string normal_bytes(TokenId id) const override;

 private:
  struct Symbol {
    size_t start, len;  // len 0: merged into its left neighbour
    int prev, next;
  };
  struct Bigram {
    int left, right;
    float score;
    size_t len;
  };
  struct Session;
  TokenId byte_token(uint8_t byte) const;
};

struct SpmTokenizer::Session {
  const SpmTokenizer& tok;
  std::string_view text;
  std::vector<Symbol> symbols;
  // Highest score first; on ties the leftmost pair.
  struct Lower {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };
  std::priority_queue<Bigram, std::vector<Bigram>, Lower> queue;
  // Merged text -> the two symbols it came from, to split texts that are not tokens back apart.
  std::unordered_map<std::string_view, std::pair<int, int>> rev_merge;

  std::string_view str(const Symbol& s) const { return text.substr(s.start, s.len); }

  void try_add(int left, int right) {
    if (left < 0 || right < 0) return;
    const std::string_view merged = text.substr(symbols[left].start, symbols[left].len + symbols[right].len);
    const TokenId id = tok.vocab_.find(merged);
    if (id < 0) return;
    queue.push({left, right, tok.vocab_.score[id], merged.size()});
    rev_merge[merged] = {left, right};
  }

  void emit(const Symbol& s, std::vector<TokenId>& out) const {
    const std::string_view piece = str(s);
    if (const TokenId id = tok.vocab_.find(piece); id >= 0) {
      out.push_back(id);
      return;
    }
    const auto it = rev_merge.find(piece);
    if (it == rev_merge.end()) {
      for (const char c : piece) {
        const TokenId b = tok.byte_token(static_cast<uint8_t>(c));
        if (b >= 0) out.push_back(b);
      }
      return;
    }
    emit(symbols[it->second.first], out);
    emit(symbols[it->second.second], out);
  }

  void run(std::vector<TokenId>& out) {
    for (size_t pos = 0; pos < text.size();) {
      const size_t len = std::min(utf8::lead_length(static_cast<unsigned char>(text[pos])), text.size() - pos);
      const int index = static_cast<int>(symbols.size());
      symbols.push_back({pos, len, index - 1, pos + len == text.size() ? -1 : index + 1});
      pos += len;
    }
    for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& left = symbols[b.left];
      Symbol& right = symbols[b.right];
      if (left.len == 0 || right.len == 0 || left.len + right.len != b.len) continue;  // stale
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = b.left;
      try_add(left.prev, b.left);
      try_add(b.left, left.next);
    }
    for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) emit(symbols[i], out);
  }
};

TokenId SpmTokenizer::byte_token(uint8_t byte) const {
  static constexpr char kHex[] = "0123456789ABCDEF";
  const char name[6] = {'<', '0', 'x', kHex[byte >> 4], kHex[byte & 15], '>'};
  if (const TokenId id = vocab_.find(std::string_view(name, 6)); id >= 0) return id;
  if (const TokenId id = vocab_.find(std::string_view(reinterpret_cast<const char*>(&byte), 1)); id >= 0) return id;
  return vocab_.unk;
}

void SpmTokenizer::encode_text(std::string_view raw, bool after_special, std::vector<TokenId>& out) const {
  std::string text;
  text.reserve(raw.size() * 2 + 3);
  if (vocab_.add_space_prefix && after_special) text += kSpace;
  for (const char c : raw) {
    if (c == ' ') {
      text += kSpace;
    } else {
      text += c;
    }
  }
  Session session{*this, text, {}, {}, {}};
  session.run(out);
}

std::string SpmTokenizer::normal_bytes(TokenId id) const {
  const std::string& text = vocab_.text[id];
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    if (text.compare(pos, kSpace.size(), kSpace) == 0) {
      out += ' ';
      pos += kSpace.size();
    } else {
      out += text[pos++];
    }
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> make_spm_tokenizer(const GgufFile& file) {
  return std::make_unique<SpmTokenizer>(load_vocab(file, VocabKind::spm, /*default_add_bos=*/true));
}

}  // namespace uma
