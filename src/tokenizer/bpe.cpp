// Byte-level BPE (tokenizer.ggml.model = "gpt2"): the pre-tokenizer cuts text into words, each word's bytes
// are mapped to GPT-2's printable characters, and adjacent pieces are merged in the order of
// tokenizer.ggml.merges (lowest rank first, leftmost on ties) until no listed pair remains.
#include <mutex>
#include <queue>
#include <unordered_map>

#include "gguf/gguf.h"
#include "tokenizer/pre_tokenizer.h"
#include "tokenizer/tokenizer_impl.h"
#include "tokenizer/utf8.h"
#include "uma/error.h"

namespace uma {
namespace {

class BpeTokenizer final : public VocabTokenizer {
 public:
  BpeTokenizer(Vocab vocab, const PreTokenizerSpec& spec, std::vector<std::string_view> merges)
      : VocabTokenizer(std::move(vocab)), pre_(spec), ignore_merges_(spec.ignore_merges) {
    ranks_.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) ranks_.emplace(std::string(merges[i]), static_cast<int>(i));
  }

 protected:
  void encode_text(std::string_view text, bool after_special, std::vector<TokenId>& out) const override;
  std::string normal_bytes(TokenId id) const override;

 private:
  void encode_word(std::string_view word, std::vector<TokenId>& out) const;
  int rank(std::string_view left, std::string_view right, std::string& key) const;

  PreTokenizer pre_;
  bool ignore_merges_;
  std::unordered_map<std::string, int> ranks_;  // "left right" as written in tokenizer.ggml.merges

  // Words repeat a lot in real text; remembering their ids makes long prompts cheap to encode.
  static constexpr size_t kCacheLimit = 1 << 16;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<TokenId>> cache_;
};

int BpeTokenizer::rank(std::string_view left, std::string_view right, std::string& key) const {
  key.assign(left);
  key += ' ';
  key += right;
  const auto it = ranks_.find(key);
  return it == ranks_.end() ? -1 : it->second;
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<TokenId>& out) const {
  if (ignore_merges_) {
    if (const TokenId id = vocab_.find(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  struct Symbol {
    size_t start, len;  // len 0: merged into its left neighbour
    int prev, next;
  };
  struct Bigram {
    int rank, left, right;
    size_t left_len, right_len;
  };
  struct Worse {  // lowest rank first, then leftmost
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = std::min(utf8::lead_length(static_cast<unsigned char>(word[pos])), word.size() - pos);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({pos, len, index - 1, pos + len == word.size() ? -1 : index + 1});
    pos += len;
  }
  std::priority_queue<Bigram, std::vector<Bigram>, Worse> queue;
  std::string key;
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[left];
    const Symbol& r = symbols[right];
    const int found = rank(word.substr(l.start, l.len), word.substr(r.start, r.len), key);
    if (found >= 0) queue.push({found, left, right, l.len, r.len});
  };
  for (int i = 1; i < static_cast<int>(symbols.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Symbol& left = symbols[b.left];
    Symbol& right = symbols[b.right];
    // Stale when either side has changed since the pair was queued.
    if (left.len != b.left_len || right.len != b.right_len || left.next != b.right) continue;
    left.len += right.len;
    right.len = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = b.left;
    try_add(left.prev, b.left);
    try_add(b.left, left.next);
  }
  for (int i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
    const std::string_view piece = word.substr(symbols[i].start, symbols[i].len);
    if (const TokenId id = vocab_.find(piece); id >= 0) {
      out.push_back(id);
      continue;
    }
    // A merge produced text that is not a token: fall back to single characters where they exist.
    for (size_t j = 0; j < piece.size(); ++j) {
      if (const TokenId id = vocab_.find(piece.substr(j, 1)); id >= 0) out.push_back(id);
    }
  }
}

void BpeTokenizer::encode_text(std::string_view text, bool /*after_special*/, std::vector<TokenId>& out) const {
  for (const std::string_view raw : pre_.split(text)) {
    const std::string word = utf8::bytes_to_unicode(raw);
    {
      std::lock_guard lock(cache_mutex_);
      const auto it = cache_.find(word);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    const size_t first = out.size();
    encode_word(word, out);
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kCacheLimit) cache_.clear();
    cache_.emplace(word, std::vector<TokenId>(out.begin() + static_cast<std::ptrdiff_t>(first), out.end()));
  }
}

std::string BpeTokenizer::normal_bytes(TokenId id) const {
  const std::string& text = vocab_.text[id];
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    const utf8::Decoded d = utf8::decode(text, pos);
    const int byte = d.status == utf8::Status::ok ? utf8::unicode_to_byte(d.cp) : -1;
    if (byte >= 0) {
      out += static_cast<char>(byte);
    } else {
      out.append(text, pos, d.len);  // not a byte-level character: keep it as text
    }
    pos += d.len;
  }
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> make_bpe_tokenizer(const GgufFile& file) {
  const std::string pre = file.get_string("tokenizer.ggml.pre", "");
  const PreTokenizerSpec& spec = find_pre_tokenizer(pre);
  if (!file.has("tokenizer.ggml.merges")) {
    fail("{}: byte-level BPE vocabulary without tokenizer.ggml.merges; reconvert the model with its merges",
         file.path().string());
  }
  return std::make_unique<BpeTokenizer>(load_vocab(file, VocabKind::bpe, spec.add_bos), spec,
                                        file.get_string_array("tokenizer.ggml.merges"));
}

}  // namespace uma
