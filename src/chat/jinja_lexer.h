// Jinja lexer: splits template source into text and the tokens inside `{{ }}` and `{% %}` tags, applying the
// whitespace rules (`-` markers, trim_blocks, lstrip_blocks) so the parser only sees final text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace uma::jinja {

enum class TokenType {
  text,         // literal template text (already whitespace-adjusted)
  expr_begin,   // {{
  expr_end,     // }}
  stmt_begin,   // {%
  stmt_end,     // %}
  name,         // identifiers and keywords (if, for, in, not, true, ...)
  string,       // string literal, unescaped
  integer,
  floating,
  op,           // operators and punctuation: + - * / // % ** ~ == != < <= > >= = | . , : ( ) [ ] { }
  end,          // end of input
};

struct Token {
  TokenType type;
  std::string text;  // text, name, operator, or unescaped string literal
  int line = 1;
  int column = 1;
  int64_t int_value = 0;
  double float_value = 0;
};

struct LexOptions {
  bool trim_blocks = true;    // drop the first newline after a block tag or comment
  bool lstrip_blocks = true;  // drop spaces and tabs before a block tag or comment that starts a line
};

// Throws uma::Error with line/column on an unterminated tag, comment or string, or an unknown character.
std::vector<Token> tokenize(const std::string& source, const LexOptions& options);

}  // namespace uma::jinja
