#include "chat/jinja_value.h"

#include <charconv>
#include <cmath>

#include "uma/error.h"

namespace uma::jinja {

const Value* Object::find(std::string_view key) const {
  for (const auto& [k, v] : entries_) {
    if (k == key) return &v;
  }
  return nullptr;
}

Value* Object::find(std::string_view key) {
  for (auto& [k, v] : entries_) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Object::set(std::string key, Value value) {
  if (Value* existing = find(key)) {
    *existing = std::move(value);
    return;
  }
  entries_.emplace_back(std::move(key), std::move(value));
}

bool Object::erase(std::string_view key) {
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->first == key) {
      entries_.erase(it);
      return true;
    }
  }
  return false;
}

const Value* Args::get(size_t index, std::string_view name) const {
  if (index < positional.size()) return &positional[index];
  for (const auto& [k, v] : keyword) {
    if (k == name) return &v;
  }
  return nullptr;
}

Value Value::function(Function f) {
  Value v;
  v.kind_ = Kind::function;
  v.function_ = std::make_shared<Function>(std::move(f));
  return v;
}

Value Value::make_namespace(Object o) {
  Value v(std::move(o));
  v.namespace_ = true;
  return v;
}

Value Value::get(std::string_view key) const {
  if (kind_ != Kind::object) return {};
  const Value* v = object_->find(key);
  return v ? *v : Value();
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::undefined:
    case Kind::none: return false;
    case Kind::boolean:
    case Kind::integer: return int_ != 0;
    case Kind::floating: return float_ != 0;
    case Kind::string: return !string_->empty();
    case Kind::array: return !array_->empty();
    case Kind::object: return !object_->empty();
    case Kind::function: return true;
  }
  return false;
}

std::string format_float(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  if (f == std::floor(f) && std::fabs(f) < 1e16) {
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof buf, f, std::chars_format::fixed, 1);
    return std::string(buf, res.ptr);
  }
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, f);
  return std::string(buf, res.ptr);
}

std::string Value::str() const {
  switch (kind_) {
    case Kind::undefined:
    case Kind::none: return "";
    case Kind::boolean: return int_ ? "true" : "false";
    case Kind::integer: return std::to_string(int_);
    case Kind::floating: return format_float(float_);
    case Kind::string: return *string_;
    case Kind::array:
    case Kind::object: return to_json();
    case Kind::function: return "<function>";
  }
  return "";
}

namespace {

void json_string(std::string& out, const std::string& s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

void json_value(std::string& out, const Value& v, int indent, int depth) {
  auto newline = [&](int d) {
    out += '\n';
    out.append(static_cast<size_t>(indent) * d, ' ');
  };
  const char* item_sep = indent >= 0 ? "," : ", ";
  switch (v.kind()) {
    case Value::Kind::undefined:
    case Value::Kind::none: out += "null"; break;
    case Value::Kind::boolean: out += v.as_bool() ? "true" : "false"; break;
    case Value::Kind::integer: out += std::to_string(v.as_int()); break;
    case Value::Kind::floating: {
      // JSON numbers as JavaScript prints them: integral floats without ".0".
      double f = v.as_float();
      if (f == std::floor(f) && std::fabs(f) < 1e16) {
        out += std::to_string(static_cast<int64_t>(f));
      } else {
        out += format_float(f);
      }
      break;
    }
    case Value::Kind::string: json_string(out, v.as_string()); break;
    case Value::Kind::array: {
      const Array& a = v.as_array();
      out += '[';
      for (size_t i = 0; i < a.size(); ++i) {
        if (i) out += item_sep;
        if (indent >= 0) newline(depth + 1);
        json_value(out, a[i], indent, depth + 1);
      }
      if (indent >= 0 && !a.empty()) newline(depth);
      out += ']';
      break;
    }
    case Value::Kind::object: {
      const Object& o = v.as_object();
      out += '{';
      size_t i = 0;
      for (const auto& [key, item] : o) {
        if (i++) out += item_sep;
        if (indent >= 0) newline(depth + 1);
        json_string(out, key);
        out += ": ";
        json_value(out, item, indent, depth + 1);
      }
      if (indent >= 0 && !o.empty()) newline(depth);
      out += '}';
      break;
    }
    case Value::Kind::function: out += "null"; break;
  }
}

}  // namespace

std::string Value::to_json(int indent) const {
  std::string out;
  json_value(out, *this, indent, 0);
  return out;
}

const char* Value::type_name() const {
  switch (kind_) {
    case Kind::undefined: return "undefined";
    case Kind::none: return "none";
    case Kind::boolean: return "boolean";
    case Kind::integer: return "integer";
    case Kind::floating: return "float";
    case Kind::string: return "string";
    case Kind::array: return "list";
    case Kind::object: return namespace_ ? "namespace" : "dict";
    case Kind::function: return "function";
  }
  return "?";
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> chars;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    n = std::min(n, s.size() - i);
    chars.push_back(s.substr(i, n));
    i += n;
  }
  return chars;
}

int64_t Value::length() const {
  switch (kind_) {
    case Kind::string: {
      int64_t n = 0;
      for (unsigned char c : *string_) n += (c & 0xC0) != 0x80;
      return n;
    }
    case Kind::array: return static_cast<int64_t>(array_->size());
    case Kind::object: return static_cast<int64_t>(object_->size());
    default: return -1;
  }
}

bool Value::operator==(const Value& other) const {
  if (is_number() && other.is_number()) {
    if (is_int() && other.is_int()) return int_ == other.int_;
    return as_float() == other.as_float();
  }
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case Kind::undefined:
    case Kind::none: return true;
    case Kind::boolean: return int_ == other.int_;
    case Kind::string: return *string_ == *other.string_;
    case Kind::array: {
      if (array_ == other.array_) return true;
      if (array_->size() != other.array_->size()) return false;
      for (size_t i = 0; i < array_->size(); ++i) {
        if ((*array_)[i] != (*other.array_)[i]) return false;
      }
      return true;
    }
    case Kind::object: {
      if (object_ == other.object_) return true;
      if (object_->size() != other.object_->size()) return false;
      for (const auto& [k, v] : *object_) {
        const Value* o = other.object_->find(k);
        if (!o || *o != v) return false;
      }
      return true;
    }
    case Kind::function: return function_ == other.function_;
    default: return false;
  }
}

int compare(const Value& a, const Value& b) {
  if ((a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool())) {
    if (!a.is_float() && !b.is_float()) return a.as_int() < b.as_int() ? -1 : a.as_int() > b.as_int();
    return a.as_float() < b.as_float() ? -1 : a.as_float() > b.as_float();
  }
  if (a.is_string() && b.is_string()) {
    int c = a.as_string().compare(b.as_string());
    return c < 0 ? -1 : c > 0;
  }
  if (a.is_array() && b.is_array()) {
    const Array& x = a.as_array();
    const Array& y = b.as_array();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (int c = compare(x[i], y[i])) return c;
    }
    return x.size() < y.size() ? -1 : x.size() > y.size();
  }
  fail("cannot compare {} with {}", a.type_name(), b.type_name());
}

}  // namespace uma::jinja
