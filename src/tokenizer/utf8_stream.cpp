// Utf8Stream: tokens split characters (byte-fallback tokens carry one byte of a multi-byte character;
// byte-level BPE tokens may end mid-character), so streamed text is held back until a character completes.
#include "tokenizer/tokenizer.h"
#include "tokenizer/utf8.h"

namespace uma {

std::string Utf8Stream::push(std::string_view bytes) {
  pending_.append(bytes);
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const utf8::Decoded d = utf8::decode(pending_, pos);
    if (d.status == utf8::Status::incomplete) break;  // wait for the rest of this character
    if (d.status == utf8::Status::ok) {
      out.append(pending_, pos, d.len);
    } else {
      utf8::append(out, 0xFFFD);  // cannot become valid whatever follows
    }
    pos += d.len;
  }
  pending_.erase(0, pos);
  return out;
}

std::string Utf8Stream::flush() {
  std::string out = utf8::sanitize(pending_);
  pending_.clear();
  return out;
}

}  // namespace uma
