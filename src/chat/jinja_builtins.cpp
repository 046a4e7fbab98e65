// Filters, tests and globals. Methods of strings, lists and dicts live in jinja_methods.cpp.
#include "chat/jinja_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <map>

#include "chat/jinja_strings.h"
#include "uma/error.h"

namespace uma::jinja {
namespace {

using FilterFn = Value (*)(const Value& input, const Args& args);
using TestFn = bool (*)(const Value& input, const Args& args);

// The argument at `index`/`name`, or `fallback`.
Value arg(const Args& args, size_t index, std::string_view name, Value fallback = {}) {
  const Value* v = args.get(index, name);
  return v ? *v : fallback;
}

void expect_kind(const Value& v, bool ok, const char* filter, const char* wanted) {
  if (!ok) fail("filter '{}' expects {}, got {}", filter, wanted, v.type_name());
}

// `a.b.c` attribute paths, as selectattr/map/sort/join take them; integer parts index lists.
Value attribute_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur.is_array() && !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit)) {
      cur = get_item(cur, Value(static_cast<int64_t>(std::stoll(part))));
    } else {
      cur = get_item(cur, Value(part));
    }
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// Remaining positional arguments from `from` on, for select/map style filters that forward them to a test/filter.
Args forward_args(const Args& args, size_t from) {
  Args out;
  for (size_t i = from; i < args.positional.size(); ++i) out.positional.push_back(args.positional[i]);
  return out;
}

Value select_impl(const Value& input, const Args& args, bool by_attribute, bool keep) {
  Array out;
  for (const Value& item : iterate(input)) {
    Value subject = item;
    size_t test_at = 0;
    if (by_attribute) {
      subject = attribute_path(item, arg(args, 0, "attribute").str());
      test_at = 1;
    }
    bool ok;
    if (args.positional.size() > test_at) {
      ok = apply_test(args.positional[test_at].str(), subject, forward_args(args, test_at + 1));
    } else {
      ok = subject.truthy();
    }
    if (ok == keep) out.push_back(item);
  }
  return Value(std::move(out));
}

Value filter_map(const Value& input, const Args& args) {
  Array out;
  const Value* attribute = args.get(SIZE_MAX, "attribute");
  for (const Value& item : iterate(input)) {
    if (attribute) {
      Value v = attribute_path(item, attribute->str());
      if (v.is_undefined()) v = arg(args, SIZE_MAX, "default");
      out.push_back(v);
    } else if (!args.positional.empty()) {
      out.push_back(apply_filter(args.positional[0].str(), item, forward_args(args, 1)));
    } else {
      out.push_back(item);
    }
  }
  return Value(std::move(out));
}

Value sorted(const Value& input, const Args& args, bool is_dictsort) {
  bool reverse = arg(args, is_dictsort ? 2 : 0, "reverse", Value(false)).truthy();
  bool case_sensitive = arg(args, is_dictsort ? 0 : 1, "case_sensitive", Value(false)).truthy();
  Value attribute = is_dictsort ? Value() : arg(args, 2, "attribute");
  bool by_value = is_dictsort && arg(args, 1, "by", Value("key")).str() == "value";
  Array items;
  if (is_dictsort) {
    expect_kind(input, input.is_object(), "dictsort", "a dict");
    for (const auto& [k, v] : input.as_object()) items.push_back(Value(Array{Value(k), v}));
  } else {
    items = iterate(input);
  }
  auto key = [&](const Value& v) {
    Value k = is_dictsort ? v.as_array()[by_value ? 1 : 0] : attribute.is_undefined() ? v : attribute_path(v, attribute.str());
    if (!case_sensitive && k.is_string()) return Value(str::lower(k.as_string()));
    return k;
  };
  std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
    int c = compare(key(a), key(b));
    return reverse ? c > 0 : c < 0;
  });
  return Value(std::move(items));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

Value filter_indent(const Value& input, const Args& args) {
  Value width = arg(args, 0, "width", Value(4));
  std::string pad = width.is_string() ? width.as_string() : std::string(static_cast<size_t>(width.as_int()), ' ');
  bool first = arg(args, 1, "first", Value(false)).truthy();
  bool blank = arg(args, 2, "blank", Value(false)).truthy();
  std::vector<std::string> lines = str::split(input.str(), "\n", -1);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += '\n';
    bool indent = (i > 0 || first) && (blank || !str::strip(lines[i], nullptr).empty());
    if (indent) out += pad;
    out += lines[i];
  }
  return Value(std::move(out));
}

Value filter_round(const Value& input, const Args& args) {
  int64_t precision = arg(args, 0, "precision", Value(0)).as_int();
  std::string method = arg(args, 1, "method", Value("common")).str();
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = input.as_float() * scale;
  double r = method == "ceil" ? std::ceil(x) : method == "floor" ? std::floor(x) : std::round(x);
  return Value(r / scale);
}

Value filter_int(const Value& input, const Args& args) {
  Value fallback = arg(args, 0, "default", Value(0));
  if (input.is_number() || input.is_bool()) return Value(input.as_int());
  if (input.is_string()) {
    std::string s = str::strip(input.as_string(), nullptr);
    try {
      size_t used = 0;
      int64_t v = std::stoll(s, &used, 10);
      if (used == s.size()) return Value(v);
      double d = std::stod(s, &used);
      if (used == s.size()) return Value(static_cast<int64_t>(d));
    } catch (const std::exception&) {
    }
  }
  return fallback;
}

Value filter_float(const Value& input, const Args& args) {
  Value fallback = arg(args, 0, "default", Value(0.0));
  if (input.is_number() || input.is_bool()) return Value(input.as_float());
  if (input.is_string()) {
    try {
      size_t used = 0;
      std::string s = str::strip(input.as_string(), nullptr);
      double v = std::stod(s, &used);
      if (used == s.size()) return Value(v);
    } catch (const std::exception&) {
    }
  }
  return fallback;
}

Value filter_unique(const Value& input, const Args& args) {
  Array out;
  bool case_sensitive = arg(args, 0, "case_sensitive", Value(false)).truthy();
  Value attribute = arg(args, 1, "attribute");
  std::vector<Value> seen;
  for (const Value& item : iterate(input)) {
    Value k = attribute.is_undefined() ? item : attribute_path(item, attribute.str());
    if (!case_sensitive && k.is_string()) k = Value(str::lower(k.as_string()));
    if (std::find(seen.begin(), seen.end(), k) != seen.end()) continue;
    seen.push_back(k);
    out.push_back(item);
  }
  return Value(std::move(out));
}

Value min_max(const Value& input, const Args& args, bool want_max) {
  Array items = iterate(input);
  if (items.empty()) return {};
  Value attribute = arg(args, 1, "attribute");
  auto key = [&](const Value& v) { return attribute.is_undefined() ? v : attribute_path(v, attribute.str()); };
  Value best = items[0];
  for (const Value& v : items) {
    int c = compare(key(v), key(best));
    if (want_max ? c > 0 : c < 0) best = v;
  }
  return best;
}

const std::map<std::string, FilterFn, std::less<>>& filters() {
  static const std::map<std::string, FilterFn, std::less<>> table = {
      {"abs", [](const Value& v, const Args&) { return v.is_float() ? Value(std::fabs(v.as_float())) : Value(static_cast<int64_t>(std::llabs(v.as_int()))); }},
      {"attr", [](const Value& v, const Args& a) { return get_attribute(v, arg(a, 0, "name").str()); }},
      {"capitalize", [](const Value& v, const Args&) { return Value(str::capitalize(v.str())); }},
      {"count", [](const Value& v, const Args&) { return Value(v.length()); }},
      {"d", [](const Value& v, const Args& a) { return apply_filter("default", v, a); }},
      {"default",
       [](const Value& v, const Args& a) {
         bool boolean = arg(a, 1, "boolean", Value(false)).truthy();
         if (v.is_undefined() || (boolean && !v.truthy())) return arg(a, 0, "default_value", Value(""));
         return v;
       }},
      {"dictsort", [](const Value& v, const Args& a) { return sorted(v, a, true); }},
      {"e", [](const Value& v, const Args&) { return Value(html_escape(v.str())); }},
      {"escape", [](const Value& v, const Args&) { return Value(html_escape(v.str())); }},
      {"first",
       [](const Value& v, const Args&) {
         Array items = iterate(v);
         return items.empty() ? Value() : items.front();
       }},
      {"float", filter_float},
      {"forceescape", [](const Value& v, const Args&) { return Value(html_escape(v.str())); }},
      {"indent", filter_indent},
      {"int", filter_int},
      {"items",
       [](const Value& v, const Args&) {
         Array out;
         if (v.is_object()) {
           for (const auto& [k, item] : v.as_object()) out.push_back(Value(Array{Value(k), item}));
         } else if (!v.is_undefined() && !v.is_none()) {
           fail("filter 'items' expects a dict, got {}", v.type_name());
         }
         return Value(std::move(out));
       }},
      {"join",
       [](const Value& v, const Args& a) {
         std::string sep = arg(a, 0, "d", Value("")).str();
         Value attribute = arg(a, 1, "attribute");
         std::string out;
         bool first = true;
         for (const Value& item : iterate(v)) {
           if (!first) out += sep;
           first = false;
           out += (attribute.is_undefined() ? item : attribute_path(item, attribute.str())).str();
         }
         return Value(std::move(out));
       }},
      {"last",
       [](const Value& v, const Args&) {
         Array items = iterate(v);
         return items.empty() ? Value() : items.back();
       }},
      {"length", [](const Value& v, const Args&) { return Value(std::max<int64_t>(v.length(), 0)); }},
      {"list", [](const Value& v, const Args&) { return Value(iterate(v)); }},
      {"lower", [](const Value& v, const Args&) { return Value(str::lower(v.str())); }},
      {"map", filter_map},
      {"max", [](const Value& v, const Args& a) { return min_max(v, a, true); }},
      {"min", [](const Value& v, const Args& a) { return min_max(v, a, false); }},
      {"reject", [](const Value& v, const Args& a) { return select_impl(v, a, false, false); }},
      {"rejectattr", [](const Value& v, const Args& a) { return select_impl(v, a, true, false); }},
      {"replace",
       [](const Value& v, const Args& a) {
         return Value(str::replace(v.str(), arg(a, 0, "old").str(), arg(a, 1, "new").str(),
                                   arg(a, 2, "count", Value(-1)).as_int()));
       }},
      {"reverse",
       [](const Value& v, const Args&) {
         if (v.is_string()) {
           std::vector<std::string> chars = utf8_chars(v.as_string());
           std::string out;
           for (auto it = chars.rbegin(); it != chars.rend(); ++it) out += *it;
           return Value(std::move(out));
         }
         Array items = iterate(v);
         std::reverse(items.begin(), items.end());
         return Value(std::move(items));
       }},
      {"round", filter_round},
      {"safe", [](const Value& v, const Args&) { return v; }},
      {"select", [](const Value& v, const Args& a) { return select_impl(v, a, false, true); }},
      {"selectattr", [](const Value& v, const Args& a) { return select_impl(v, a, true, true); }},
      {"sort", [](const Value& v, const Args& a) { return sorted(v, a, false); }},
      {"string", [](const Value& v, const Args&) { return Value(v.str()); }},
      {"sum",
       [](const Value& v, const Args& a) {
         Value attribute = arg(a, 0, "attribute");
         Value total = arg(a, 1, "start", Value(0));
         for (const Value& item : iterate(v)) {
           Value x = attribute.is_undefined() ? item : attribute_path(item, attribute.str());
           total = total.is_float() || x.is_float() ? Value(total.as_float() + x.as_float()) : Value(total.as_int() + x.as_int());
         }
         return total;
       }},
      {"title", [](const Value& v, const Args&) { return Value(str::title(v.str())); }},
      {"tojson",
       [](const Value& v, const Args& a) {
         Value indent = arg(a, 0, "indent");
         return Value(v.to_json(indent.is_number() ? static_cast<int>(indent.as_int()) : -1));
       }},
      {"trim",
       [](const Value& v, const Args& a) {
         Value chars = arg(a, 0, "chars");
         return Value(str::strip(v.str(), chars.is_string() ? &chars.as_string() : nullptr));
       }},
      {"unique", filter_unique},
      {"upper", [](const Value& v, const Args&) { return Value(str::upper(v.str())); }},
      {"wordcount",
       [](const Value& v, const Args&) { return Value(static_cast<int64_t>(str::split_whitespace(v.str(), -1).size())); }},
  };
  return table;
}

bool is_integer_like(const Value& v) { return v.is_int() || (v.is_float() && v.as_float() == std::floor(v.as_float())); }

const std::map<std::string, TestFn, std::less<>>& tests() {
  static const std::map<std::string, TestFn, std::less<>> table = {
      {"boolean", [](const Value& v, const Args&) { return v.is_bool(); }},
      {"callable", [](const Value& v, const Args&) { return v.is_function(); }},
      {"defined", [](const Value& v, const Args&) { return !v.is_undefined(); }},
      {"divisibleby",
       [](const Value& v, const Args& a) {
         int64_t d = arg(a, 0, "num", Value(1)).as_int();
         return d != 0 && v.as_int() % d == 0;
       }},
      {"eq", [](const Value& v, const Args& a) { return v == arg(a, 0, "other"); }},
      {"equalto", [](const Value& v, const Args& a) { return v == arg(a, 0, "other"); }},
      {"==", [](const Value& v, const Args& a) { return v == arg(a, 0, "other"); }},
      {"even", [](const Value& v, const Args&) { return is_integer_like(v) && v.as_int() % 2 == 0; }},
      {"false", [](const Value& v, const Args&) { return v.is_bool() && !v.as_bool(); }},
      {"float", [](const Value& v, const Args&) { return v.is_float(); }},
      {"ge", [](const Value& v, const Args& a) { return compare(v, arg(a, 0, "other")) >= 0; }},
      {"gt", [](const Value& v, const Args& a) { return compare(v, arg(a, 0, "other")) > 0; }},
      {"greaterthan", [](const Value& v, const Args& a) { return compare(v, arg(a, 0, "other")) > 0; }},
      {"in", [](const Value& v, const Args& a) { return contains(arg(a, 0, "seq"), v); }},
      {"integer", [](const Value& v, const Args&) { return v.is_int(); }},
      {"iterable", [](const Value& v, const Args&) { return v.is_array() || v.is_object() || v.is_string(); }},
      {"le", [](const Value& v, const Args& a) { return compare(v, arg(a, 0, "other")) <= 0; }},
      {"lower", [](const Value& v, const Args&) { return v.is_string() && str::lower(v.as_string()) == v.as_string(); }},
      {"lt", [](const Value& v, const Args& a) { return compare(v, arg(a, 0, "other")) < 0; }},
      {"lessthan", [](const Value& v, const Args& a) { return compare(v, arg(a, 0, "other")) < 0; }},
      {"mapping", [](const Value& v, const Args&) { return v.is_object() && !v.is_namespace(); }},
      {"ne", [](const Value& v, const Args& a) { return v != arg(a, 0, "other"); }},
      {"none", [](const Value& v, const Args&) { return v.is_none(); }},
      {"number", [](const Value& v, const Args&) { return v.is_number(); }},
      {"odd", [](const Value& v, const Args&) { return is_integer_like(v) && v.as_int() % 2 != 0; }},
      {"sameas",
       [](const Value& v, const Args& a) {
         Value o = arg(a, 0, "other");
         return v.kind() == o.kind() && (v.is_none() || v.is_undefined() || v == o);
       }},
      {"sequence", [](const Value& v, const Args&) { return v.is_array() || v.is_string() || v.is_object(); }},
      {"string", [](const Value& v, const Args&) { return v.is_string(); }},
      {"true", [](const Value& v, const Args&) { return v.is_bool() && v.as_bool(); }},
      {"undefined", [](const Value& v, const Args&) { return v.is_undefined(); }},
      {"upper", [](const Value& v, const Args&) { return v.is_string() && str::upper(v.as_string()) == v.as_string(); }},
  };
  return table;
}

Value global_range(const Args& args) {
  int64_t start = 0, stop = 0, step = 1;
  if (args.positional.size() == 1) {
    stop = args.positional[0].as_int();
  } else if (args.positional.size() >= 2) {
    start = args.positional[0].as_int();
    stop = args.positional[1].as_int();
    if (args.positional.size() >= 3) step = args.positional[2].as_int();
  } else {
    fail("range() expects 1 to 3 integer arguments");
  }
  if (step == 0) fail("range() step must not be zero");
  Array out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(Value(i));
  return Value(std::move(out));
}

Value keyword_object(const Args& args, bool as_namespace) {
  Object o;
  for (const Value& p : args.positional) {
    if (p.is_object()) {
      for (const auto& [k, v] : p.as_object()) o.set(k, v);
    }
  }
  for (const auto& [k, v] : args.keyword) o.set(k, v);
  return as_namespace ? Value::make_namespace(std::move(o)) : Value(std::move(o));
}

}  // namespace

Value apply_filter(const std::string& name, const Value& input, const Args& args) {
  auto it = filters().find(name);
  if (it == filters().end()) fail("unknown filter '{}'", name);
  return it->second(input, args);
}

bool apply_test(const std::string& name, const Value& input, const Args& args) {
  auto it = tests().find(name);
  if (it == tests().end()) fail("unknown test '{}'", name);
  return it->second(input, args);
}

Value get_item(const Value& object, const Value& key) {
  if (object.is_object()) {
    if (const Value* v = object.as_object().find(key.is_string() ? key.as_string() : key.str())) return *v;
    return {};
  }
  if (object.is_array() && (key.is_int() || key.is_bool())) {
    const Array& a = object.as_array();
    int64_t i = key.as_int();
    if (i < 0) i += static_cast<int64_t>(a.size());
    if (i < 0 || i >= static_cast<int64_t>(a.size())) return {};
    return a[static_cast<size_t>(i)];
  }
  if (object.is_string() && key.is_int()) {
    std::vector<std::string> chars = utf8_chars(object.as_string());
    int64_t i = key.as_int();
    if (i < 0) i += static_cast<int64_t>(chars.size());
    if (i < 0 || i >= static_cast<int64_t>(chars.size())) return {};
    return Value(chars[static_cast<size_t>(i)]);
  }
  if (object.is_string() || object.is_array()) return get_attribute(object, key.str());
  return {};
}

Value slice(const Value& object, const Value& start_v, const Value& stop_v, const Value& step_v) {
  int64_t step = step_v.is_number() ? step_v.as_int() : 1;
  if (step == 0) fail("slice step cannot be zero");
  std::vector<std::string> chars;
  int64_t n;
  if (object.is_string()) {
    chars = utf8_chars(object.as_string());
    n = static_cast<int64_t>(chars.size());
  } else if (object.is_array()) {
    n = static_cast<int64_t>(object.as_array().size());
  } else {
    fail("cannot slice {}", object.type_name());
  }
  // Python's slice.indices(): clamp, with negative indices counted from the end.
  auto bound = [&](const Value& v, int64_t fallback) {
    if (!v.is_number()) return fallback;
    int64_t i = v.as_int();
    if (i < 0) i += n;
    if (step > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  int64_t start = bound(start_v, step > 0 ? 0 : n - 1);
  int64_t stop = bound(stop_v, step > 0 ? n : -1);
  std::string s;
  Array a;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (object.is_string()) {
      s += chars[static_cast<size_t>(i)];
    } else {
      a.push_back(object.as_array()[static_cast<size_t>(i)]);
    }
  }
  return object.is_string() ? Value(std::move(s)) : Value(std::move(a));
}

bool contains(const Value& haystack, const Value& needle) {
  if (haystack.is_string()) return needle.is_string() && haystack.as_string().find(needle.as_string()) != std::string::npos;
  if (haystack.is_array()) {
    for (const Value& v : haystack.as_array()) {
      if (v == needle) return true;
    }
    return false;
  }
  if (haystack.is_object()) return needle.is_string() && haystack.as_object().find(needle.as_string()) != nullptr;
  if (haystack.is_undefined() || haystack.is_none()) return false;
  fail("'in' needs a string, list or dict on the right, got {}", haystack.type_name());
}

Array iterate(const Value& value) {
  switch (value.kind()) {
    case Value::Kind::array: return value.as_array();
    case Value::Kind::object: {
      Array keys;
      for (const auto& [k, v] : value.as_object()) keys.push_back(Value(k));
      return keys;
    }
    case Value::Kind::string: {
      Array chars;
      for (std::string& c : utf8_chars(value.as_string())) chars.push_back(Value(std::move(c)));
      return chars;
    }
    case Value::Kind::undefined:
    case Value::Kind::none: return {};
    default: fail("{} is not iterable", value.type_name());
  }
}

void add_globals(Object& globals) {
  globals.set("range", Value::function(global_range));
  globals.set("namespace", Value::function([](const Args& a) { return keyword_object(a, true); }));
  globals.set("dict", Value::function([](const Args& a) { return keyword_object(a, false); }));
  globals.set("raise_exception", Value::function([](const Args& a) -> Value {
                throw TemplateException(arg(a, 0, "message", Value("error raised by the chat template")).str());
              }));
  globals.set("strftime_now", Value::function([](const Args& a) {
                std::time_t now = std::time(nullptr);
                std::tm tm{};
                localtime_r(&now, &tm);
                char buf[256];
                size_t n = std::strftime(buf, sizeof buf, arg(a, 0, "format", Value("%Y-%m-%d")).str().c_str(), &tm);
                return Value(std::string(buf, n));
              }));
}

}  // namespace uma::jinja
