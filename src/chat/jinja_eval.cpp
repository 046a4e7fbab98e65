// Tree-walking evaluator: renders a parsed template against a context object.
#include <cmath>

#include "chat/jinja.h"
#include "chat/jinja_ast.h"
#include "chat/jinja_builtins.h"
#include "uma/error.h"

namespace uma::jinja {
namespace {

// An error that already names its template position; inner errors are wrapped once, at the innermost expression.
class LocatedError : public Error {
 public:
  using Error::Error;
};

struct Scope;
using ScopePtr = std::shared_ptr<Scope>;

// Variables visible at one level: `for` bodies and macro calls open a child scope, `if` does not (as in Jinja).
struct Scope {
  ScopePtr parent;
  Object vars;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent.get()) {
      if (const Value* v = s->vars.find(name)) return v;
    }
    return nullptr;
  }
};

ScopePtr child_scope(const ScopePtr& parent) {
  auto s = std::make_shared<Scope>();
  s->parent = parent;
  return s;
}

enum class Flow { normal, break_loop, continue_loop };

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value(a.str() + b.str());
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value(a.as_string() + b.as_string());
    if (a.is_array() && b.is_array()) {
      Array r = a.as_array();
      r.insert(r.end(), b.as_array().begin(), b.as_array().end());
      return Value(std::move(r));
    }
    // Python raises on `str + dict`; HF's JavaScript engine concatenates the rendered forms, and templates such as
    // DeepSeek-V3.1's rely on it for tool-call arguments given as objects.
    if ((a.is_string() && !b.is_undefined()) || (b.is_string() && !a.is_undefined())) return Value(a.str() + b.str());
  }
  if (op == "*" && (a.is_string() || a.is_array()) && b.is_int()) {
    if (a.is_string()) {
      std::string r;
      for (int64_t i = 0; i < b.as_int(); ++i) r += a.as_string();
      return Value(std::move(r));
    }
    Array r;
    for (int64_t i = 0; i < b.as_int(); ++i) r.insert(r.end(), a.as_array().begin(), a.as_array().end());
    return Value(std::move(r));
  }
  bool numeric = (a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool());
  if (!numeric) fail("unsupported operand types for {}: {} and {}", op, a.type_name(), b.type_name());
  bool ints = !a.is_float() && !b.is_float();
  if (op == "/") {
    if (b.as_float() == 0) fail("division by zero");
    return Value(a.as_float() / b.as_float());
  }
  if (ints) {
    int64_t x = a.as_int(), y = b.as_int();
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (op == "//" || op == "%") {
      if (y == 0) fail("division by zero");
      int64_t q = floor_div(x, y);
      return op == "//" ? Value(q) : Value(x - q * y);
    }
    if (op == "**") {
      if (y < 0) return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t r = 1;
      for (int64_t i = 0; i < y; ++i) r *= x;
      return Value(r);
    }
  }
  double x = a.as_float(), y = b.as_float();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "//") return Value(std::floor(x / y));
  if (op == "%") return Value(x - std::floor(x / y) * y);
  if (op == "**") return Value(std::pow(x, y));
  fail("unknown operator '{}'", op);
}

class Renderer {
 public:
  Flow exec(const Body& body, const ScopePtr& scope, std::string& out) {
    for (const auto& node : body) {
      Flow flow = exec_node(*node, scope, out);
      if (flow != Flow::normal) return flow;
    }
    return Flow::normal;
  }

 private:
  Flow exec_node(const Node& node, const ScopePtr& scope, std::string& out) {
    switch (node.kind) {
      case Node::Kind::text: out += node.text; break;
      case Node::Kind::output: out += eval(*node.expr, scope).str(); break;
      case Node::Kind::if_block:
        for (const auto& [cond, body] : node.branches) {
          if (!cond || eval(*cond, scope).truthy()) return exec(body, scope, out);
        }
        break;
      case Node::Kind::for_loop: return exec_for(node, scope, out);
      case Node::Kind::set: assign(node, eval(*node.expr, scope), scope); break;
      case Node::Kind::set_block: {
        std::string captured;
        exec(node.body, scope, captured);
        assign(node, Value(std::move(captured)), scope);
        break;
      }
      case Node::Kind::macro: scope->vars.set(node.text, make_macro(node, scope)); break;
      case Node::Kind::call_block: {
        const Expr& call = *node.expr;
        // `caller()` inside the macro renders the call block's body, an anonymous macro.
        Value caller = Value::function([this, &node, scope](const Args& args) {
          return call_macro(node, node.params, node.body, scope, args);
        });
        Value fn = eval(*call.args[0], scope);
        Args args = eval_args(call, scope);
        args.keyword.emplace_back("caller", caller);
        out += invoke(fn, args, call).str();
        break;
      }
      case Node::Kind::filter_block: {
        std::string captured;
        exec(node.body, scope, captured);
        out += apply_filter_chain(*node.expr, Value(std::move(captured)), scope).str();
        break;
      }
      case Node::Kind::break_loop: return Flow::break_loop;
      case Node::Kind::continue_loop: return Flow::continue_loop;
      case Node::Kind::do_expr: eval(*node.expr, scope); break;
    }
    return Flow::normal;
  }

  // Applies a `{% filter %}` chain whose innermost operand is a placeholder literal.
  Value apply_filter_chain(const Expr& e, Value input, const ScopePtr& scope) {
    if (e.kind != Expr::Kind::filter) return input;
    Value inner = apply_filter_chain(*e.args[0], std::move(input), scope);
    Args args = eval_args(e, scope, 1);
    return located(e, [&] { return apply_filter(e.name, inner, args); });
  }

  Flow exec_for(const Node& node, const ScopePtr& scope, std::string& out) {
    Value iterable = eval(*node.expr, scope);
    ScopePtr loop_scope = child_scope(scope);
    Array items;
    if (!iterable.is_undefined() && !iterable.is_none()) {
      Array all = located(*node.expr, [&] { return iterate(iterable); });
      for (Value& item : all) {
        if (node.condition) {
          bind_targets(node, item, *loop_scope);
          if (!eval(*node.condition, loop_scope).truthy()) continue;
        }
        items.push_back(std::move(item));
      }
    }
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      Object loop;
      loop.set("index", Value(i + 1));
      loop.set("index0", Value(i));
      loop.set("revindex", Value(n - i));
      loop.set("revindex0", Value(n - i - 1));
      loop.set("first", Value(i == 0));
      loop.set("last", Value(i == n - 1));
      loop.set("length", Value(n));
      loop.set("previtem", i > 0 ? items[i - 1] : Value());
      loop.set("nextitem", i + 1 < n ? items[i + 1] : Value());
      loop_scope->vars.set("loop", Value(std::move(loop)));
      bind_targets(node, items[i], *loop_scope);
      if (exec(node.body, loop_scope, out) == Flow::break_loop) break;
    }
    if (items.empty()) exec(node.else_body, loop_scope, out);
    return Flow::normal;
  }

  void bind_targets(const Node& node, const Value& item, Scope& scope) {
    if (node.targets.size() == 1) {
      scope.vars.set(node.targets[0], item);
      return;
    }
    if (!item.is_array() || item.as_array().size() != node.targets.size()) {
      fail_at(node, fmt::format("cannot unpack {} into {} variables", item.type_name(), node.targets.size()));
    }
    for (size_t i = 0; i < node.targets.size(); ++i) scope.vars.set(node.targets[i], item.as_array()[i]);
  }

  void assign(const Node& node, Value value, const ScopePtr& scope) {
    if (!node.attr.empty()) {
      const Value* target = scope->find(node.targets[0]);
      if (!target || !target->is_object()) {
        fail_at(node, fmt::format("cannot set attribute '{}' of {} '{}': use namespace()", node.attr,
                                  target ? target->type_name() : "undefined", node.targets[0]));
      }
      target->set(node.attr, std::move(value));
      return;
    }
    if (node.targets.size() == 1) {
      scope->vars.set(node.targets[0], std::move(value));
      return;
    }
    bind_targets(node, value, *scope);
  }

  Value make_macro(const Node& node, const ScopePtr& scope) {
    return Value::function([this, &node, scope](const Args& args) {
      return call_macro(node, node.params, node.body, scope, args);
    });
  }

  Value call_macro(const Node& node, const std::vector<Param>& params, const Body& body, const ScopePtr& def_scope,
                   const Args& args) {
    ScopePtr s = child_scope(def_scope);
    Object extra_kwargs;
    for (const auto& [k, v] : args.keyword) {
      bool is_param = false;
      for (const Param& p : params) is_param |= p.name == k;
      if (!is_param) {
        if (k == "caller") {
          s->vars.set(k, v);
        } else {
          extra_kwargs.set(k, v);
        }
      }
    }
    for (size_t i = 0; i < params.size(); ++i) {
      const Value* given = args.get(i, params[i].name);
      s->vars.set(params[i].name, given ? *given : Value());
    }
    for (size_t i = 0; i < params.size(); ++i) {  // defaults see the other parameters, as in Jinja
      if (!args.get(i, params[i].name) && params[i].default_value) {
        s->vars.set(params[i].name, eval(*params[i].default_value, s));
      }
    }
    Array varargs;
    for (size_t i = params.size(); i < args.positional.size(); ++i) varargs.push_back(args.positional[i]);
    s->vars.set("varargs", Value(std::move(varargs)));
    s->vars.set("kwargs", Value(std::move(extra_kwargs)));
    std::string out;
    exec(body, s, out);
    return Value(std::move(out));
  }

  Args eval_args(const Expr& e, const ScopePtr& scope, size_t first = 1) {
    Args args;
    for (size_t i = first; i < e.args.size(); ++i) args.positional.push_back(eval(*e.args[i], scope));
    for (const auto& [k, v] : e.kwargs) args.keyword.emplace_back(k, eval(*v, scope));
    return args;
  }

  Value invoke(const Value& fn, const Args& args, const Expr& call) {
    if (!fn.is_function()) {
      const Expr& callee = *call.args[0];
      std::string what = callee.kind == Expr::Kind::name || callee.kind == Expr::Kind::attr ? "'" + callee.name + "'" : "value";
      fail_at(call, fmt::format("{} is {}, not a function", what, fn.type_name()));
    }
    return fn.as_function()(args);
  }

  // Runs `f`, attaching the position of `e` to an error that has none yet.
  template <typename F>
  auto located(const Expr& e, F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const LocatedError&) {
      throw;
    } catch (const TemplateException&) {
      throw;
    } catch (const std::exception& err) {
      throw LocatedError(fmt::format("chat template line {}, column {}: {}", e.line, e.column, err.what()));
    }
  }

  template <typename N>
  [[noreturn]] void fail_at(const N& n, const std::string& message) {
    throw LocatedError(fmt::format("chat template line {}, column {}: {}", n.line, n.column, message));
  }

 public:
  Value eval(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case Expr::Kind::literal: return e.value;
      case Expr::Kind::name: {
        const Value* v = scope->find(e.name);
        return v ? *v : Value();
      }
      case Expr::Kind::list: {
        Array items;
        for (const auto& a : e.args) items.push_back(eval(*a, scope));
        return Value(std::move(items));
      }
      case Expr::Kind::dict: {
        Object o;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value key = eval(*e.args[i], scope);
          o.set(key.str(), eval(*e.args[i + 1], scope));
        }
        return Value(std::move(o));
      }
      case Expr::Kind::attr: {
        Value object = eval(*e.args[0], scope);
        return located(e, [&] { return get_attribute(object, e.name); });
      }
      case Expr::Kind::index: {
        Value object = eval(*e.args[0], scope);
        Value key = eval(*e.args[1], scope);
        return located(e, [&] { return get_item(object, key); });
      }
      case Expr::Kind::slice: {
        Value object = eval(*e.args[0], scope);
        Value parts[3];
        for (int i = 0; i < 3; ++i) {
          if (e.args[i + 1]) parts[i] = eval(*e.args[i + 1], scope);
        }
        return located(e, [&] { return slice(object, parts[0], parts[1], parts[2]); });
      }
      case Expr::Kind::call: {
        Value fn = eval(*e.args[0], scope);
        Args args = eval_args(e, scope);
        return located(e, [&] { return invoke(fn, args, e); });
      }
      case Expr::Kind::filter: {
        Value input = eval(*e.args[0], scope);
        Args args = eval_args(e, scope);
        return located(e, [&] { return apply_filter(e.name, input, args); });
      }
      case Expr::Kind::test: {
        Value input = eval(*e.args[0], scope);
        Args args = eval_args(e, scope);
        bool r = located(e, [&] { return apply_test(e.name, input, args); });
        return Value(r != e.negated);
      }
      case Expr::Kind::unary: {
        Value v = eval(*e.args[0], scope);
        if (e.name == "not") return Value(!v.truthy());
        if (!v.is_number() && !v.is_bool()) fail_at(e, fmt::format("bad operand type for unary {}: {}", e.name, v.type_name()));
        if (e.name == "+") return v;
        return v.is_float() ? Value(-v.as_float()) : Value(-v.as_int());
      }
      case Expr::Kind::binary: {
        if (e.name == "and") {
          Value left = eval(*e.args[0], scope);
          return left.truthy() ? eval(*e.args[1], scope) : left;
        }
        if (e.name == "or") {
          Value left = eval(*e.args[0], scope);
          return left.truthy() ? left : eval(*e.args[1], scope);
        }
        Value a = eval(*e.args[0], scope);
        Value b = eval(*e.args[1], scope);
        return located(e, [&] { return binary(e.name, a, b); });
      }
      case Expr::Kind::ternary:
        if (eval(*e.args[1], scope).truthy()) return eval(*e.args[0], scope);
        return e.args[2] ? eval(*e.args[2], scope) : Value();
    }
    return {};
  }

 private:
  static Value binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return Value(a == b);
    if (op == "!=") return Value(a != b);
    if (op == "<") return Value(compare(a, b) < 0);
    if (op == ">") return Value(compare(a, b) > 0);
    if (op == "<=") return Value(compare(a, b) <= 0);
    if (op == ">=") return Value(compare(a, b) >= 0);
    if (op == "in") return Value(contains(b, a));
    if (op == "not in") return Value(!contains(b, a));
    return arithmetic(op, a, b);
  }
};

}  // namespace

struct Template::Impl {
  Body body;
};

Template::Template(const std::string& source) : impl_(std::make_unique<Impl>()) {
  impl_->body = parse(tokenize(source, LexOptions{}));
}

Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Value& context) const {
  auto globals = std::make_shared<Scope>();
  add_globals(globals->vars);
  ScopePtr root = child_scope(globals);
  if (context.is_object()) {
    for (const auto& [k, v] : context.as_object()) root->vars.set(k, v);
  }
  Renderer renderer;
  std::string out;
  try {
    renderer.exec(impl_->body, root, out);
  } catch (const TemplateException& e) {
    throw Error(e.what());
  }
  return out;
}

}  // namespace uma::jinja
