// Text <-> token ids, built from a GGUF file's tokenizer.ggml.* metadata.
// Two algorithms: SentencePiece-style (tokenizer.ggml.model = "llama": score-driven merges, byte fallback,
// space prefix) and byte-level BPE ("gpt2": regex pre-tokenizer chosen by tokenizer.ggml.pre, rank-driven merges).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace uma {
class GgufFile;

using TokenId = int32_t;

class Tokenizer {
 public:
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& file);
  virtual ~Tokenizer() = default;

  // add_special: prepend BOS (and append EOS) when the model's metadata asks for it.
  // parse_special: recognise special/control token text such as "<|im_start|>" in the input.
  virtual std::vector<TokenId> encode(std::string_view text, bool add_special, bool parse_special) const = 0;
  // The raw bytes of one token (byte-fallback tokens give one byte; may be an incomplete UTF-8 sequence).
  // Control tokens give their text only when `special` is true.
  virtual std::string token_bytes(TokenId id, bool special = false) const = 0;
  std::string decode(const std::vector<TokenId>& ids, bool special = false) const;

  virtual int32_t vocab_size() const = 0;
  virtual TokenId bos() const = 0;  // -1 when absent
  virtual TokenId eos() const = 0;
  // End of generation: EOS, EOT, <|im_end|> and the like.
  virtual bool is_eog(TokenId id) const = 0;
  virtual std::string_view token_text(TokenId id) const = 0;  // as stored in the vocab

 protected:
  // SentencePiece vocabularies add a space in front of the text; decode() drops it again from the first
  // token (the one after BOS when the ids start with BOS), as llama.cpp and Hugging Face do.
  virtual bool decode_strips_first_space() const { return false; }
};

// Joins token bytes into complete UTF-8 characters so a stream never prints half a character:
// push() returns the longest complete prefix, holding back an unfinished multi-byte sequence.
class Utf8Stream {
 public:
  std::string push(std::string_view bytes);
  std::string flush();  // whatever is left (invalid bytes replaced by U+FFFD)

 private:
  std::string pending_;
};

}  // namespace uma
