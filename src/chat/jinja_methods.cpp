// Attribute access and the Python methods templates call on strings, lists and dicts (`content.strip()`,
// `message.get('tool_calls')`, `ns.items.append(x)`). A method is returned as a function bound to its object.
#include "chat/jinja_builtins.h"
#include "chat/jinja_strings.h"
#include "uma/error.h"

namespace uma::jinja {
namespace {

Value arg(const Args& args, size_t index, std::string_view name, Value fallback = {}) {
  const Value* v = args.get(index, name);
  return v ? *v : fallback;
}

Value strings(std::vector<std::string> parts) {
  Array out;
  for (std::string& p : parts) out.push_back(Value(std::move(p)));
  return Value(std::move(out));
}

// startswith/endswith accept a string or a tuple (list) of strings.
bool affix_match(const std::string& s, const Value& affix, bool at_start) {
  if (affix.is_array()) {
    for (const Value& a : affix.as_array()) {
      if (affix_match(s, a, at_start)) return true;
    }
    return false;
  }
  if (!affix.is_string()) fail("{}() expects a string, got {}", at_start ? "startswith" : "endswith", affix.type_name());
  const std::string& a = affix.as_string();
  if (a.size() > s.size()) return false;
  return at_start ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
}

// Python's str.format with `{}` / `{0}` / `{name}` fields (no format specs).
std::string format(const std::string& fmt_str, const Args& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t i = 0; i < fmt_str.size(); ++i) {
    char c = fmt_str[i];
    if (c == '{' && i + 1 < fmt_str.size() && fmt_str[i + 1] == '{') {
      out += '{';
      ++i;
    } else if (c == '}' && i + 1 < fmt_str.size() && fmt_str[i + 1] == '}') {
      out += '}';
      ++i;
    } else if (c == '{') {
      size_t close = fmt_str.find('}', i);
      if (close == std::string::npos) fail("format(): unmatched '{{'");
      std::string field = fmt_str.substr(i + 1, close - i - 1);
      const Value* v = nullptr;
      if (field.empty()) {
        v = args.get(auto_index++, "");
      } else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
        v = args.get(std::stoul(field), "");
      } else {
        v = args.get(SIZE_MAX, field);
      }
      if (!v) fail("format(): no argument for field '{{{}}}'", field);
      out += v->str();
      i = close;
    } else {
      out += c;
    }
  }
  return out;
}

Value string_method(const std::string& s, const std::string& name) {
  auto bind = [](auto f) { return Value::function(f); };
  auto chars_arg = [](const Args& a, Value& holder) -> const std::string* {
    holder = arg(a, 0, "chars");
    return holder.is_string() ? &holder.as_string() : nullptr;
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    return bind([s, name, chars_arg](const Args& a) {
      Value holder;
      const std::string* chars = chars_arg(a, holder);
      return Value(name == "strip" ? str::strip(s, chars) : name == "lstrip" ? str::lstrip(s, chars) : str::rstrip(s, chars));
    });
  }
  if (name == "split" || name == "rsplit") {
    return bind([s, name](const Args& a) {
      Value sep = arg(a, 0, "sep");
      int64_t maxsplit = arg(a, 1, "maxsplit", Value(-1)).as_int();
      bool right = name == "rsplit";
      if (!sep.is_string()) return strings(right ? str::rsplit_whitespace(s, maxsplit) : str::split_whitespace(s, maxsplit));
      if (sep.as_string().empty()) fail("{}(): empty separator", name);
      return strings(right ? str::rsplit(s, sep.as_string(), maxsplit) : str::split(s, sep.as_string(), maxsplit));
    });
  }
  if (name == "startswith" || name == "endswith") {
    return bind([s, name](const Args& a) { return Value(affix_match(s, arg(a, 0, "prefix"), name == "startswith")); });
  }
  if (name == "replace") {
    return bind([s](const Args& a) {
      return Value(str::replace(s, arg(a, 0, "old").str(), arg(a, 1, "new").str(), arg(a, 2, "count", Value(-1)).as_int()));
    });
  }
  if (name == "upper") return bind([s](const Args&) { return Value(str::upper(s)); });
  if (name == "lower") return bind([s](const Args&) { return Value(str::lower(s)); });
  if (name == "title") return bind([s](const Args&) { return Value(str::title(s)); });
  if (name == "capitalize") return bind([s](const Args&) { return Value(str::capitalize(s)); });
  if (name == "format") return bind([s](const Args& a) { return Value(format(s, a)); });
  if (name == "find" || name == "rfind" || name == "index") {
    return bind([s, name](const Args& a) {
      std::string sub = arg(a, 0, "sub").str();
      size_t at = name == "rfind" ? s.rfind(sub) : s.find(sub);
      if (at == std::string::npos && name == "index") fail("substring not found");
      return Value(at == std::string::npos ? int64_t{-1} : static_cast<int64_t>(at));
    });
  }
  if (name == "count") {
    return bind([s](const Args& a) {
      std::string sub = arg(a, 0, "sub").str();
      if (sub.empty()) return Value(static_cast<int64_t>(s.size() + 1));
      int64_t n = 0;
      for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
      return Value(n);
    });
  }
  if (name == "join") {
    return bind([s](const Args& a) {
      std::string out;
      bool first = true;
      for (const Value& v : iterate(arg(a, 0, "iterable"))) {
        if (!first) out += s;
        first = false;
        out += v.str();
      }
      return Value(std::move(out));
    });
  }
  if (name == "splitlines") {
    return bind([s](const Args&) {
      std::vector<std::string> lines = str::split(s, "\n", -1);
      if (!lines.empty() && lines.back().empty()) lines.pop_back();
      for (std::string& l : lines) {
        if (!l.empty() && l.back() == '\r') l.pop_back();
      }
      return strings(std::move(lines));
    });
  }
  if (name == "isdigit" || name == "isspace" || name == "isalpha" || name == "isalnum") {
    return bind([s, name](const Args&) {
      if (s.empty()) return Value(false);
      for (unsigned char c : s) {
        bool ok = name == "isdigit" ? std::isdigit(c) : name == "isspace" ? std::isspace(c) : name == "isalpha" ? std::isalpha(c) : std::isalnum(c);
        if (!ok) return Value(false);
      }
      return Value(true);
    });
  }
  return {};
}

Value list_method(const Value& list, const std::string& name) {
  Array& a = list.as_array();
  auto bind = [](auto f) { return Value::function(f); };
  if (name == "append") {
    return bind([list, &a](const Args& args) {
      a.push_back(arg(args, 0, "item"));
      return Value(nullptr);
    });
  }
  if (name == "extend") {
    return bind([list, &a](const Args& args) {
      for (const Value& v : iterate(arg(args, 0, "iterable"))) a.push_back(v);
      return Value(nullptr);
    });
  }
  if (name == "insert") {
    return bind([list, &a](const Args& args) {
      int64_t i = arg(args, 0, "index").as_int();
      int64_t n = static_cast<int64_t>(a.size());
      if (i < 0) i = std::max<int64_t>(0, i + n);
      a.insert(a.begin() + std::min(i, n), arg(args, 1, "object"));
      return Value(nullptr);
    });
  }
  if (name == "pop") {
    return bind([list, &a](const Args& args) {
      if (a.empty()) fail("pop from empty list");
      int64_t n = static_cast<int64_t>(a.size());
      int64_t i = arg(args, 0, "index", Value(n - 1)).as_int();
      if (i < 0) i += n;
      if (i < 0 || i >= n) fail("pop index out of range");
      Value v = a[static_cast<size_t>(i)];
      a.erase(a.begin() + i);
      return v;
    });
  }
  if (name == "index" || name == "count") {
    return bind([list, &a, name](const Args& args) {
      Value x = arg(args, 0, "value");
      int64_t n = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        if (a[i] != x) continue;
        if (name == "index") return Value(static_cast<int64_t>(i));
        ++n;
      }
      if (name == "index") fail("value is not in list");
      return Value(n);
    });
  }
  if (name == "reverse") {
    return bind([list, &a](const Args&) {
      std::reverse(a.begin(), a.end());
      return Value(nullptr);
    });
  }
  return {};
}

Value dict_method(const Value& dict, const std::string& name) {
  Object& o = dict.as_object();
  auto bind = [](auto f) { return Value::function(f); };
  if (name == "items" || name == "keys" || name == "values") {
    return bind([dict, &o, name](const Args&) {
      Array out;
      for (const auto& [k, v] : o) {
        out.push_back(name == "items" ? Value(Array{Value(k), v}) : name == "keys" ? Value(k) : v);
      }
      return Value(std::move(out));
    });
  }
  if (name == "get") {
    return bind([dict, &o](const Args& args) {
      const Value* v = o.find(arg(args, 0, "key").str());
      return v ? *v : arg(args, 1, "default", Value(nullptr));
    });
  }
  if (name == "pop") {
    return bind([dict, &o](const Args& args) {
      std::string key = arg(args, 0, "key").str();
      const Value* v = o.find(key);
      if (!v) {
        if (const Value* d = args.get(1, "default")) return *d;
        fail("pop(): no key '{}'", key);
      }
      Value out = *v;
      o.erase(key);
      return out;
    });
  }
  if (name == "setdefault") {
    return bind([dict, &o](const Args& args) {
      std::string key = arg(args, 0, "key").str();
      if (const Value* v = o.find(key)) return *v;
      Value d = arg(args, 1, "default", Value(nullptr));
      o.set(key, d);
      return d;
    });
  }
  if (name == "update") {
    return bind([dict, &o](const Args& args) {
      for (const Value& p : args.positional) {
        if (p.is_object()) {
          for (const auto& [k, v] : p.as_object()) o.set(k, v);
        }
      }
      for (const auto& [k, v] : args.keyword) o.set(k, v);
      return Value(nullptr);
    });
  }
  return {};
}

}  // namespace

Value get_attribute(const Value& object, const std::string& name) {
  switch (object.kind()) {
    case Value::Kind::object: {
      if (const Value* v = object.as_object().find(name)) return *v;
      return object.is_namespace() ? Value() : dict_method(object, name);
    }
    case Value::Kind::string: return string_method(object.as_string(), name);
    case Value::Kind::array: return list_method(object, name);
    default: return {};  // lenient: attributes of undefined, none and scalars are undefined
  }
}

}  // namespace uma::jinja
