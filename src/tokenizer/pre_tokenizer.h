// Byte-level BPE splits text into words with a chain of regexes before merging, chosen by the GGUF key
// tokenizer.ggml.pre. Each regex refines the pieces of the previous one: its matches and the text between
// them both become pieces (Hugging Face's "Isolated" split behaviour, as llama.cpp applies it).
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace uma {

struct PreTokenizerSpec {
  std::vector<std::string_view> names;   // tokenizer.ggml.pre values that select this spec
  std::vector<std::string_view> regexes;
  bool ignore_merges = false;  // a word that is itself a vocab token skips merging (Llama 3, Tekken)
  bool add_bos = false;        // llama.cpp's default for add_bos_token when the key is absent
};

// Looks up a pre-tokenizer by its tokenizer.ggml.pre name; "" selects llama.cpp's fallback regexes.
// Throws uma::Error naming the supported pre-tokenizers when the name is unknown.
const PreTokenizerSpec& find_pre_tokenizer(std::string_view name);
std::string supported_pre_tokenizers();

// The regex chain compiled once (PCRE2, UTF + UCP, JIT when available). Thread-safe.
class PreTokenizer {
 public:
  explicit PreTokenizer(const PreTokenizerSpec& spec);
  ~PreTokenizer();
  PreTokenizer(const PreTokenizer&) = delete;
  PreTokenizer& operator=(const PreTokenizer&) = delete;

  // Words in order; they concatenate back to `text`.
  std::vector<std::string_view> split(std::string_view text) const;

 private:
  struct Regex;
  std::vector<std::unique_ptr<Regex>> regexes_;
};

}  // namespace uma
