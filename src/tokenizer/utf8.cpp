#include "tokenizer/utf8.h"

#include <array>

namespace uma::utf8 {

size_t lead_length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  if ((c & 0xF8) == 0xF0) return 4;
  return 1;
}

Decoded decode(std::string_view s, size_t pos) {
  const auto c0 = static_cast<unsigned char>(s[pos]);
  if (c0 < 0x80) return {c0, 1, Status::ok};
  size_t n;
  uint32_t cp;
  uint32_t min;
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    n = 2, cp = c0 & 0x1F, min = 0x80;
  } else if ((c0 & 0xF0) == 0xE0) {
    n = 3, cp = c0 & 0x0F, min = 0x800;
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    n = 4, cp = c0 & 0x07, min = 0x10000;
  } else {
    return {0, 1, Status::invalid};
  }
  size_t i = 1;
  for (; i < n && pos + i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[pos + i]);
    if ((c & 0xC0) != 0x80) return {0, 1, Status::invalid};
    cp = (cp << 6) | (c & 0x3F);
    // Reject overlong/surrogate/too-large prefixes as soon as the second byte shows them.
    if (i == 1) {
      if (n == 3 && ((c0 == 0xE0 && c < 0xA0) || (c0 == 0xED && c > 0x9F))) return {0, 1, Status::invalid};
      if (n == 4 && ((c0 == 0xF0 && c < 0x90) || (c0 == 0xF4 && c > 0x8F))) return {0, 1, Status::invalid};
    }
  }
  if (i < n) return {0, i, Status::incomplete};
  if (cp < min) return {0, 1, Status::invalid};
  return {cp, n, Status::ok};
}

void append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t pos = 0; pos < s.size();) {
    const Decoded d = decode(s, pos);
    if (d.status == Status::ok) {
      out.append(s.substr(pos, d.len));
    } else {
      append(out, 0xFFFD);
    }
    pos += d.len;
  }
  return out;
}

namespace {

struct ByteTable {
  std::array<std::string, 256> to_unicode;
  std::array<int16_t, 512> from_unicode;  // every mapped code point is below U+0144

  ByteTable() {
    from_unicode.fill(-1);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? static_cast<uint32_t>(b) : next++;
      append(to_unicode[b], cp);
      from_unicode[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteTable& table() {
  static const ByteTable t;
  return t;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t byte) { return table().to_unicode[byte]; }

int unicode_to_byte(uint32_t cp) { return cp < 512 ? table().from_unicode[cp] : -1; }

std::string bytes_to_unicode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += byte_to_unicode(static_cast<uint8_t>(c));
  return out;
}

}  // namespace uma::utf8
