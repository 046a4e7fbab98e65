#include "chat/jinja_lexer.h"

#include <cctype>
#include <cstring>

#include "uma/error.h"

namespace uma::jinja {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  Lexer(const std::string& source, const LexOptions& options) : src_(source), options_(options) {
    // Jinja's default keep_trailing_newline=False: one trailing newline of the template is dropped.
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool strip_next = false;  // a `-` closed the previous tag: drop leading whitespace of the next text
    while (pos < src_.size()) {
      size_t open = find_tag(pos);
      std::string text = src_.substr(pos, open - pos);
      if (strip_next) {
        size_t i = 0;
        while (i < text.size() && is_space(text[i])) ++i;
        text.erase(0, i);
      }
      strip_next = false;
      if (open < src_.size()) trim_before_tag(text, open);
      if (!text.empty()) push(TokenType::text, text, pos);
      if (open >= src_.size()) break;
      pos = lex_tag(open, strip_next);
    }
    tokens_.push_back(Token{TokenType::end, "", line_at(src_.size()), 1});
    return std::move(tokens_);
  }

 private:
  // Position of the next `{{`, `{%` or `{#`, or the end of the source.
  size_t find_tag(size_t pos) const {
    while (true) {
      size_t p = src_.find('{', pos);
      if (p == std::string::npos || p + 1 >= src_.size()) return src_.size();
      char c = src_[p + 1];
      if (c == '{' || c == '%' || c == '#') return p;
      pos = p + 1;
    }
  }

  // Whitespace before a tag: `{{-`/`{%-`/`{#-` strip all of it; lstrip_blocks strips spaces and tabs that start the
  // line of a block tag or comment (unless it is written `{%+`).
  void trim_before_tag(std::string& text, size_t open) const {
    char kind = src_[open + 1];
    char marker = open + 2 < src_.size() ? src_[open + 2] : 0;
    if (marker == '-') {
      while (!text.empty() && is_space(text.back())) text.pop_back();
      return;
    }
    if (!options_.lstrip_blocks || kind == '{' || marker == '+') return;
    size_t i = open;
    while (i > 0 && (src_[i - 1] == ' ' || src_[i - 1] == '\t')) --i;
    if (i != 0 && src_[i - 1] != '\n') return;
    size_t n = open - i;
    if (n <= text.size()) text.resize(text.size() - n);
  }

  // Lexes one tag starting at `open`; returns the position after it.
  size_t lex_tag(size_t open, bool& strip_next) {
    char kind = src_[open + 1];
    size_t pos = open + 2;
    if (pos < src_.size() && (src_[pos] == '-' || src_[pos] == '+')) ++pos;
    if (kind == '#') {
      size_t close = src_.find("#}", pos);
      if (close == std::string::npos) error(open, "unterminated comment: add '#}'");
      strip_next = close > pos && src_[close - 1] == '-';
      return after_block_close(close + 2, strip_next, close > 0 && src_[close - 1] == '+');
    }
    bool is_expr = kind == '{';
    push(is_expr ? TokenType::expr_begin : TokenType::stmt_begin, "", open);
    int depth = 0;  // bracket depth: `}}` inside `{'a': {'b': 1}}` closes dict literals, not the tag
    while (true) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
      if (pos >= src_.size()) error(open, is_expr ? "unterminated '{{': add '}}'" : "unterminated '{%': add '%}'");
      char c = src_[pos];
      // Tag close, possibly with a whitespace-control marker.
      size_t mark = (c == '-' || c == '+') ? 1 : 0;
      char close1 = is_expr ? '}' : '%';
      if (depth == 0 && pos + mark + 1 < src_.size() && src_[pos + mark] == close1 && src_[pos + mark + 1] == '}') {
        push(is_expr ? TokenType::expr_end : TokenType::stmt_end, "", pos);
        strip_next = c == '-';
        size_t after = pos + mark + 2;
        return is_expr ? after : after_block_close(after, strip_next, c == '+');
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t start = pos;
        while (pos < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[pos])) || src_[pos] == '_')) ++pos;
        push(TokenType::name, src_.substr(start, pos - start), start);
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        pos = lex_number(pos);
      } else if (c == '"' || c == '\'') {
        pos = lex_string(pos);
      } else {
        static const char* const kTwoChar[] = {"**", "//", "==", "!=", "<=", ">="};
        std::string op(1, c);
        for (const char* two : kTwoChar) {
          if (src_.compare(pos, 2, two) == 0) op = two;
        }
        if (op.size() == 1 && !std::strchr("+-*/%~<>=|.,:()[]{}!", c)) {
          error(pos, std::string("unexpected character '") + c + "' in tag");
        }
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        push(TokenType::op, op, pos);
        pos += op.size();
      }
    }
  }

  // trim_blocks: the first newline after a block tag or comment is dropped (not after `+%}`).
  size_t after_block_close(size_t pos, bool stripped, bool plus) const {
    if (stripped || plus || !options_.trim_blocks) return pos;
    if (pos < src_.size() && src_[pos] == '\n') return pos + 1;
    if (pos + 1 < src_.size() && src_[pos] == '\r' && src_[pos + 1] == '\n') return pos + 2;
    return pos;
  }

  size_t lex_number(size_t pos) {
    size_t start = pos;
    while (pos < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[pos])) || src_[pos] == '_')) ++pos;
    bool is_float = false;
    if (pos + 1 < src_.size() && src_[pos] == '.' && std::isdigit(static_cast<unsigned char>(src_[pos + 1]))) {
      is_float = true;
      ++pos;
      while (pos < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos]))) ++pos;
    }
    if (pos < src_.size() && (src_[pos] == 'e' || src_[pos] == 'E')) {
      size_t p = pos + 1;
      if (p < src_.size() && (src_[p] == '+' || src_[p] == '-')) ++p;
      if (p < src_.size() && std::isdigit(static_cast<unsigned char>(src_[p]))) {
        is_float = true;
        pos = p;
        while (pos < src_.size() && std::isdigit(static_cast<unsigned char>(src_[pos]))) ++pos;
      }
    }
    std::string digits;
    for (size_t i = start; i < pos; ++i) {
      if (src_[i] != '_') digits += src_[i];
    }
    Token& t = push(is_float ? TokenType::floating : TokenType::integer, digits, start);
    if (is_float) {
      t.float_value = std::stod(digits);
    } else {
      t.int_value = std::stoll(digits);
    }
    return pos;
  }

  // Python string literal escapes: \n \t \r \\ \' \" \xHH \uHHHH; unknown escapes keep the backslash.
  size_t lex_string(size_t pos) {
    size_t start = pos;
    char quote = src_[pos++];
    std::string value;
    while (true) {
      if (pos >= src_.size()) error(start, "unterminated string literal");
      char c = src_[pos++];
      if (c == quote) break;
      if (c != '\\' || pos >= src_.size()) {
        value += c;
        continue;
      }
      char e = src_[pos++];
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case '0': value += '\0'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': break;
        case 'x':
        case 'u': {
          size_t n = e == 'x' ? 2 : 4;
          if (pos + n > src_.size()) error(start, "truncated escape in string literal");
          uint32_t cp = static_cast<uint32_t>(std::stoul(src_.substr(pos, n), nullptr, 16));
          pos += n;
          append_utf8(value, cp);
          break;
        }
        default:
          value += '\\';
          value += e;
      }
    }
    push(TokenType::string, value, start);
    return pos;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  Token& push(TokenType type, std::string text, size_t offset) {
    auto [line, column] = position(offset);
    tokens_.push_back(Token{type, std::move(text), line, column});
    return tokens_.back();
  }

  int line_at(size_t offset) const { return position(offset).first; }

  // Line and column of a byte offset. Tokens are produced in order, so the scan resumes where the last one stopped.
  std::pair<int, int> position(size_t offset) const {
    if (offset < scan_offset_) {
      scan_offset_ = 0;
      scan_line_ = 1;
      scan_line_start_ = 0;
    }
    for (; scan_offset_ < offset && scan_offset_ < src_.size(); ++scan_offset_) {
      if (src_[scan_offset_] == '\n') {
        ++scan_line_;
        scan_line_start_ = scan_offset_ + 1;
      }
    }
    return {scan_line_, static_cast<int>(offset - scan_line_start_) + 1};
  }

  [[noreturn]] void error(size_t offset, const std::string& message) const {
    auto [line, column] = position(offset);
    fail("chat template line {}, column {}: {}", line, column, message);
  }

  std::string src_;
  LexOptions options_;
  std::vector<Token> tokens_;
  mutable size_t scan_offset_ = 0;
  mutable int scan_line_ = 1;
  mutable size_t scan_line_start_ = 0;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source, const LexOptions& options) {
  return Lexer(source, options).run();
}

}  // namespace uma::jinja
