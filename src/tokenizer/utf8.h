// UTF-8 helpers shared by the tokenizers: decoding one character with validation, encoding a code point,
// and GPT-2's byte <-> printable-character table used by byte-level BPE vocabularies.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace uma::utf8 {

enum class Status { ok, invalid, incomplete };

struct Decoded {
  uint32_t cp = 0;   // valid only when status == ok
  size_t len = 1;    // bytes consumed (1 for an invalid byte)
  Status status = Status::ok;
};

// Decodes the character starting at s[pos]. Rejects overlong forms, surrogates and values above U+10FFFF.
// `incomplete` means a valid prefix that the end of `s` cut short (len = the bytes present).
Decoded decode(std::string_view s, size_t pos);

// Length of the character whose lead byte is `c` (1 for continuation/invalid bytes), as llama.cpp splits text.
size_t lead_length(unsigned char c);

void append(std::string& out, uint32_t cp);

// Replaces every invalid or truncated sequence with U+FFFD.
std::string sanitize(std::string_view s);

// GPT-2 byte-level BPE: every byte maps to one printable code point (printable Latin-1 bytes map to
// themselves, the rest to U+0100 + n) so that vocabularies never contain raw control bytes or spaces.
const std::string& byte_to_unicode(uint8_t byte);  // UTF-8 of the mapped code point
int unicode_to_byte(uint32_t cp);                  // -1 when cp is not in the table
std::string bytes_to_unicode(std::string_view bytes);

}  // namespace uma::utf8
