// The Jinja syntax tree: expressions (Expr) and template nodes (Node). Built once per template by parse(), then
// walked by the evaluator for every render.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja_lexer.h"
#include "chat/jinja_value.h"

namespace uma::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    literal,   // value
    name,      // name
    list,      // args: items
    dict,      // args: key0, value0, key1, value1, ...
    attr,      // args[0].name
    index,     // args[0][args[1]]
    slice,     // args[0][args[1]:args[2]:args[3]], absent parts are null
    call,      // args[0](args[1..], kwargs)
    filter,    // args[0] | name(args[1..], kwargs)
    test,      // args[0] is [not] name(args[1..])
    unary,     // name is "-", "+" or "not"; args[0]
    binary,    // args[0] name args[1]; name is an operator, "and", "or", "in", "not in"
    ternary,   // args[0] if args[1] else args[2] (args[2] may be null)
  };
  Kind kind;
  int line = 0;
  int column = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;  // `is not`
};

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;

struct Param {
  std::string name;
  ExprPtr default_value;  // null when required
};

struct Node {
  enum class Kind {
    text,          // text
    output,        // {{ expr }}
    if_block,      // branches: (condition, body); a final else has a null condition
    for_loop,      // for targets in expr [if condition] body [else else_body]
    set,           // set targets = expr; or set targets[0].attr = expr
    set_block,     // set targets[0] %}body{% endset
    macro,         // macro name(params) body
    call_block,    // call(params) expr body: `caller()` renders body
    filter_block,  // filter expr(args[0] is a placeholder) body
    break_loop,
    continue_loop,
    do_expr,       // do expr
  };
  Kind kind;
  int line = 0;
  int column = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr condition;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::vector<Param> params;
};

// Throws uma::Error with line/column on a syntax error.
Body parse(const std::vector<Token>& tokens);

}  // namespace uma::jinja
