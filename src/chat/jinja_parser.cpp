// Recursive-descent parser. Expression precedence, loosest first, as in Jinja:
//   ternary (a if c else b) < or < and < not < comparisons and `in` < + - < ~ < * / // % < ** < unary -
//   < postfix (.attr, [index], (call)), filters (|f) and tests (is t).
#include <set>

#include "chat/jinja_ast.h"
#include "uma/error.h"

namespace uma::jinja {
namespace {

class Parser {
 public:
  explicit Parser(const std::vector<Token>& tokens) : tokens_(tokens) {}

  Body parse_template() {
    Body body = parse_body({});
    if (peek().type != TokenType::end) error(peek(), "unexpected '{% " + keyword_ + " %}'");
    return body;
  }

 private:
  // ---- template structure ----

  // Parses nodes until a `{% name %}` with name in `stop` (left in keyword_, its tag begun) or the end of input.
  Body parse_body(const std::set<std::string>& stop) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.type == TokenType::end) {
        if (!stop.empty()) error(t, "unexpected end of template: missing '{% " + *stop.begin() + " %}'");
        return body;
      }
      if (t.type == TokenType::text) {
        auto node = make_node(Node::Kind::text, t);
        node->text = t.text;
        body.push_back(std::move(node));
        ++pos_;
      } else if (t.type == TokenType::expr_begin) {
        ++pos_;
        auto node = make_node(Node::Kind::output, t);
        node->expr = parse_expression();
        expect(TokenType::expr_end, "'}}'");
        body.push_back(std::move(node));
      } else if (t.type == TokenType::stmt_begin) {
        const Token& kw = tokens_[pos_ + 1];
        if (kw.type != TokenType::name) error(kw, "expected a statement name after '{%'");
        if (stop.count(kw.text)) {
          keyword_ = kw.text;
          pos_ += 2;
          return body;
        }
        pos_ += 2;
        if (auto node = parse_statement(kw)) body.push_back(std::move(node));
      } else {
        error(t, "unexpected token");
      }
    }
  }

  std::unique_ptr<Node> parse_statement(const Token& kw) {
    const std::string& k = kw.text;
    if (k == "if") return parse_if(kw);
    if (k == "for") return parse_for(kw);
    if (k == "set") return parse_set(kw);
    if (k == "macro") return parse_macro(kw);
    if (k == "call") return parse_call_block(kw);
    if (k == "filter") return parse_filter_block(kw);
    if (k == "break" || k == "continue") {
      end_tag();
      return make_node(k == "break" ? Node::Kind::break_loop : Node::Kind::continue_loop, kw);
    }
    if (k == "do") {
      auto node = make_node(Node::Kind::do_expr, kw);
      node->expr = parse_expression();
      end_tag();
      return node;
    }
    if (k == "generation" || k == "endgeneration") {  // HF's assistant-mask markers render nothing
      end_tag();
      return nullptr;
    }
    error(kw, "unknown statement '" + k + "'");
  }

  std::unique_ptr<Node> parse_if(const Token& kw) {
    auto node = make_node(Node::Kind::if_block, kw);
    ExprPtr cond = parse_expression();
    end_tag();
    while (true) {
      Body body = parse_body({"elif", "else", "endif"});
      std::string next = keyword_;
      node->branches.emplace_back(std::move(cond), std::move(body));
      if (next == "endif") break;
      if (next == "else") {
        end_tag();
        node->branches.emplace_back(nullptr, parse_body({"endif"}));
        break;
      }
      cond = parse_expression();
      end_tag();
    }
    end_tag();
    return node;
  }

  std::unique_ptr<Node> parse_for(const Token& kw) {
    auto node = make_node(Node::Kind::for_loop, kw);
    node->targets = parse_targets();
    expect_name("in");
    node->expr = parse_or();  // not a ternary: a trailing `if` is the loop filter
    if (accept_name("if")) node->condition = parse_expression();
    accept_name("recursive");
    end_tag();
    node->body = parse_body({"else", "endfor"});
    if (keyword_ == "else") {
      end_tag();
      node->else_body = parse_body({"endfor"});
    }
    end_tag();
    return node;
  }

  std::unique_ptr<Node> parse_set(const Token& kw) {
    auto node = make_node(Node::Kind::set, kw);
    node->targets = parse_targets();
    if (node->targets.size() == 1 && accept_op(".")) node->attr = expect(TokenType::name, "an attribute name").text;
    if (peek().type == TokenType::stmt_end) {
      if (!node->attr.empty()) error(kw, "block set cannot assign an attribute");
      end_tag();
      node->kind = Node::Kind::set_block;
      node->body = parse_body({"endset"});
      end_tag();
      return node;
    }
    expect_op("=");
    node->expr = parse_tuple_or_expression();
    end_tag();
    return node;
  }

  std::unique_ptr<Node> parse_macro(const Token& kw) {
    auto node = make_node(Node::Kind::macro, kw);
    node->text = expect(TokenType::name, "a macro name").text;
    node->params = parse_params();
    end_tag();
    node->body = parse_body({"endmacro"});
    end_tag();
    return node;
  }

  std::unique_ptr<Node> parse_call_block(const Token& kw) {
    auto node = make_node(Node::Kind::call_block, kw);
    if (peek().type == TokenType::op && peek().text == "(") node->params = parse_params();
    node->expr = parse_expression();
    if (node->expr->kind != Expr::Kind::call) error(kw, "'{% call %}' needs a macro call");
    end_tag();
    node->body = parse_body({"endcall"});
    end_tag();
    return node;
  }

  std::unique_ptr<Node> parse_filter_block(const Token& kw) {
    auto node = make_node(Node::Kind::filter_block, kw);
    auto placeholder = make_expr(Expr::Kind::literal, kw);
    node->expr = parse_filter(std::move(placeholder));
    while (accept_op("|")) node->expr = parse_filter(std::move(node->expr));
    end_tag();
    node->body = parse_body({"endfilter"});
    end_tag();
    return node;
  }

  std::vector<Param> parse_params() {
    std::vector<Param> params;
    expect_op("(");
    while (!accept_op(")")) {
      if (!params.empty()) expect_op(",");
      if (accept_op(")")) break;
      Param p;
      p.name = expect(TokenType::name, "a parameter name").text;
      if (accept_op("=")) p.default_value = parse_expression();
      params.push_back(std::move(p));
    }
    return params;
  }

  // `x` or `a, b` or `(a, b)`.
  std::vector<std::string> parse_targets() {
    std::vector<std::string> names;
    bool paren = accept_op("(");
    do {
      names.push_back(expect(TokenType::name, "a variable name").text);
    } while (accept_op(","));
    if (paren) expect_op(")");
    return names;
  }

  void end_tag() { expect(TokenType::stmt_end, "'%}'"); }

  // ---- expressions ----

  ExprPtr parse_tuple_or_expression() {
    ExprPtr first = parse_expression();
    if (!(peek().type == TokenType::op && peek().text == ",")) return first;
    auto list = make_expr(Expr::Kind::list, peek());
    list->args.push_back(std::move(first));
    while (accept_op(",")) {
      if (peek().type == TokenType::stmt_end || peek().type == TokenType::expr_end) break;
      list->args.push_back(parse_expression());
    }
    return list;
  }

  ExprPtr parse_expression() {
    ExprPtr value = parse_or();
    if (peek().type == TokenType::name && peek().text == "if") {
      auto node = make_expr(Expr::Kind::ternary, next());
      node->args.push_back(std::move(value));
      node->args.push_back(parse_or());
      node->args.push_back(accept_name("else") ? parse_expression() : nullptr);
      return node;
    }
    return value;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (peek().type == TokenType::name && peek().text == "or") left = binary(std::move(left), next(), &Parser::parse_and);
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (peek().type == TokenType::name && peek().text == "and") left = binary(std::move(left), next(), &Parser::parse_not);
    return left;
  }

  ExprPtr parse_not() {
    if (peek().type == TokenType::name && peek().text == "not") {
      auto node = make_expr(Expr::Kind::unary, next());
      node->name = "not";
      node->args.push_back(parse_not());
      return node;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    ExprPtr left = parse_additive();
    while (true) {
      const Token& t = peek();
      std::string op;
      if (t.type == TokenType::op && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" ||
                                      t.text == "<=" || t.text == ">=")) {
        op = t.text;
        ++pos_;
      } else if (t.type == TokenType::name && t.text == "in") {
        op = "in";
        ++pos_;
      } else if (t.type == TokenType::name && t.text == "not" && tokens_[pos_ + 1].type == TokenType::name &&
                 tokens_[pos_ + 1].text == "in") {
        op = "not in";
        pos_ += 2;
      } else {
        return left;
      }
      auto node = make_expr(Expr::Kind::binary, t);
      node->name = op;
      node->args.push_back(std::move(left));
      node->args.push_back(parse_additive());
      left = std::move(node);
    }
  }

  ExprPtr parse_additive() {
    ExprPtr left = parse_concat();
    while (peek().type == TokenType::op && (peek().text == "+" || peek().text == "-")) {
      left = binary(std::move(left), next(), &Parser::parse_concat);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_multiplicative();
    while (peek().type == TokenType::op && peek().text == "~") {
      left = binary(std::move(left), next(), &Parser::parse_multiplicative);
    }
    return left;
  }

  ExprPtr parse_multiplicative() {
    ExprPtr left = parse_power();
    while (peek().type == TokenType::op &&
           (peek().text == "*" || peek().text == "/" || peek().text == "//" || peek().text == "%")) {
      left = binary(std::move(left), next(), &Parser::parse_power);
    }
    return left;
  }

  ExprPtr parse_power() {
    ExprPtr left = parse_unary();
    while (peek().type == TokenType::op && peek().text == "**") left = binary(std::move(left), next(), &Parser::parse_unary);
    return left;
  }

  ExprPtr parse_unary() {
    const Token& t = peek();
    if (t.type == TokenType::op && (t.text == "-" || t.text == "+")) {
      auto node = make_expr(Expr::Kind::unary, next());
      node->name = t.text;
      node->args.push_back(parse_unary_operand());
      return parse_filters_and_tests(std::move(node));
    }
    return parse_filters_and_tests(parse_postfix(parse_primary()));
  }

  ExprPtr parse_unary_operand() {
    const Token& t = peek();
    if (t.type == TokenType::op && (t.text == "-" || t.text == "+")) {
      auto node = make_expr(Expr::Kind::unary, next());
      node->name = t.text;
      node->args.push_back(parse_unary_operand());
      return node;
    }
    return parse_postfix(parse_primary());
  }

  ExprPtr parse_filters_and_tests(ExprPtr node) {
    while (true) {
      if (accept_op("|")) {
        node = parse_filter(std::move(node));
      } else if (peek().type == TokenType::name && peek().text == "is") {
        node = parse_test(std::move(node), next());
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_filter(ExprPtr operand) {
    const Token& name = expect(TokenType::name, "a filter name");
    auto node = make_expr(Expr::Kind::filter, name);
    node->name = name.text;
    while (accept_op(".")) node->name += "." + expect(TokenType::name, "a filter name").text;
    node->args.push_back(std::move(operand));
    if (peek().type == TokenType::op && peek().text == "(") {
      ++pos_;
      parse_call_args(*node);
    }
    return node;
  }

  ExprPtr parse_test(ExprPtr operand, const Token& is) {
    auto node = make_expr(Expr::Kind::test, is);
    node->negated = accept_name("not");
    const Token& name = expect(TokenType::name, "a test name");
    node->name = name.text;
    node->args.push_back(std::move(operand));
    const Token& t = peek();
    static const std::set<std::string> kStop = {"else", "or", "and", "if", "in", "not", "is"};
    if (t.type == TokenType::op && t.text == "(") {
      ++pos_;
      parse_call_args(*node);
    } else if ((t.type == TokenType::name && !kStop.count(t.text)) || t.type == TokenType::string ||
               t.type == TokenType::integer || t.type == TokenType::floating ||
               (t.type == TokenType::op && (t.text == "[" || t.text == "{" || t.text == "-"))) {
      // One-argument form: `x is divisibleby 3`, `x is sameas none`.
      node->args.push_back(parse_unary_operand());
    }
    return node;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      const Token& t = peek();
      if (t.type != TokenType::op) return node;
      if (t.text == ".") {
        ++pos_;
        const Token& name = peek();
        if (name.type != TokenType::name && name.type != TokenType::integer) error(name, "expected an attribute name");
        ++pos_;
        auto attr = make_expr(Expr::Kind::attr, name);
        attr->name = name.text;
        attr->args.push_back(std::move(node));
        node = std::move(attr);
      } else if (t.text == "[") {
        ++pos_;
        node = parse_subscript(std::move(node), t);
      } else if (t.text == "(") {
        ++pos_;
        auto call = make_expr(Expr::Kind::call, t);
        call->args.push_back(std::move(node));
        parse_call_args(*call);
        node = std::move(call);
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object, const Token& bracket) {
    ExprPtr parts[3];
    int n = 0;
    bool is_slice = false;
    while (true) {
      if (peek().type == TokenType::op && (peek().text == ":" || peek().text == "]")) {
        if (accept_op("]")) break;
        ++pos_;
        is_slice = true;
        if (++n > 2) error(bracket, "too many ':' in slice");
        continue;
      }
      if (parts[n]) error(peek(), "expected ':' or ']'");
      parts[n] = parse_expression();
    }
    if (!is_slice) {
      if (!parts[0]) error(bracket, "empty subscript");
      auto node = make_expr(Expr::Kind::index, bracket);
      node->args.push_back(std::move(object));
      node->args.push_back(std::move(parts[0]));
      return node;
    }
    auto node = make_expr(Expr::Kind::slice, bracket);
    node->args.push_back(std::move(object));
    for (auto& p : parts) node->args.push_back(std::move(p));
    return node;
  }

  // After '(': positional and keyword arguments up to ')'.
  void parse_call_args(Expr& call) {
    bool first = true;
    while (!accept_op(")")) {
      if (!first) {
        expect_op(",");
        if (accept_op(")")) break;
      }
      first = false;
      if (peek().type == TokenType::name && tokens_[pos_ + 1].type == TokenType::op && tokens_[pos_ + 1].text == "=") {
        std::string key = next().text;
        ++pos_;
        call.kwargs.emplace_back(key, parse_expression());
      } else {
        if (!call.kwargs.empty()) error(peek(), "positional argument after keyword argument");
        call.args.push_back(parse_expression());
      }
    }
  }

  ExprPtr parse_primary() {
    const Token& t = next();
    switch (t.type) {
      case TokenType::string: {
        auto node = make_expr(Expr::Kind::literal, t);
        std::string s = t.text;
        while (peek().type == TokenType::string) s += next().text;  // adjacent literals concatenate
        node->value = Value(std::move(s));
        return node;
      }
      case TokenType::integer: {
        auto node = make_expr(Expr::Kind::literal, t);
        node->value = Value(t.int_value);
        return node;
      }
      case TokenType::floating: {
        auto node = make_expr(Expr::Kind::literal, t);
        node->value = Value(t.float_value);
        return node;
      }
      case TokenType::name: {
        auto node = make_expr(Expr::Kind::literal, t);
        if (t.text == "true" || t.text == "True") {
          node->value = Value(true);
        } else if (t.text == "false" || t.text == "False") {
          node->value = Value(false);
        } else if (t.text == "none" || t.text == "None") {
          node->value = Value(nullptr);
        } else {
          node->kind = Expr::Kind::name;
          node->name = t.text;
        }
        return node;
      }
      case TokenType::op:
        if (t.text == "(") {
          if (accept_op(")")) return make_expr(Expr::Kind::list, t);  // empty tuple
          ExprPtr first = parse_expression();
          if (accept_op(")")) return first;
          auto tuple = make_expr(Expr::Kind::list, t);
          tuple->args.push_back(std::move(first));
          while (accept_op(",")) {
            if (peek().type == TokenType::op && peek().text == ")") break;
            tuple->args.push_back(parse_expression());
          }
          expect_op(")");
          return tuple;
        }
        if (t.text == "[") {
          auto list = make_expr(Expr::Kind::list, t);
          while (!accept_op("]")) {
            if (!list->args.empty()) {
              expect_op(",");
              if (accept_op("]")) break;
            }
            list->args.push_back(parse_expression());
          }
          return list;
        }
        if (t.text == "{") {
          auto dict = make_expr(Expr::Kind::dict, t);
          while (!accept_op("}")) {
            if (!dict->args.empty()) {
              expect_op(",");
              if (accept_op("}")) break;
            }
            dict->args.push_back(parse_expression());
            expect_op(":");
            dict->args.push_back(parse_expression());
          }
          return dict;
        }
        break;
      default: break;
    }
    error(t, t.type == TokenType::expr_end || t.type == TokenType::stmt_end ? "expected an expression" : "unexpected '" + t.text + "'");
  }

  using SubParser = ExprPtr (Parser::*)();
  ExprPtr binary(ExprPtr left, const Token& op, SubParser right) {
    auto node = make_expr(Expr::Kind::binary, op);
    node->name = op.text;
    node->args.push_back(std::move(left));
    node->args.push_back((this->*right)());
    return node;
  }

  // ---- token helpers ----

  const Token& peek() const { return tokens_[pos_]; }
  const Token& next() {
    const Token& t = tokens_[pos_];
    if (t.type != TokenType::end) ++pos_;
    return t;
  }
  bool accept_op(const char* op) {
    if (peek().type == TokenType::op && peek().text == op) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool accept_name(const char* name) {
    if (peek().type == TokenType::name && peek().text == name) {
      ++pos_;
      return true;
    }
    return false;
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) error(peek(), std::string("expected '") + op + "'");
  }
  void expect_name(const char* name) {
    if (!accept_name(name)) error(peek(), std::string("expected '") + name + "'");
  }
  const Token& expect(TokenType type, const std::string& what) {
    if (peek().type != type) error(peek(), "expected " + what);
    return next();
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::end: return "end of template";
      case TokenType::expr_end: return "'}}'";
      case TokenType::stmt_end: return "'%}'";
      case TokenType::text: return "text";
      default: return "'" + t.text + "'";
    }
  }

  [[noreturn]] void error(const Token& t, const std::string& message) const {
    fail("chat template line {}, column {}: {} (found {})", t.line, t.column, message, describe(t));
  }

  std::unique_ptr<Node> make_node(Node::Kind kind, const Token& t) const {
    auto node = std::make_unique<Node>();
    node->kind = kind;
    node->line = t.line;
    node->column = t.column;
    return node;
  }

  ExprPtr make_expr(Expr::Kind kind, const Token& t) const {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = t.line;
    e->column = t.column;
    return e;
  }

  const std::vector<Token>& tokens_;
  size_t pos_ = 0;
  std::string keyword_;  // the closing keyword that ended the last parse_body
};

}  // namespace

Body parse(const std::vector<Token>& tokens) { return Parser(tokens).parse_template(); }

}  // namespace uma::jinja
