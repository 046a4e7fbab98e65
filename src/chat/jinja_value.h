// The dynamic value of the Jinja template engine: what templates see as `messages`, `tools`, literals and the results
// of expressions. Arrays and objects have reference semantics (copies share storage), as in Python, so that
// `{% set _ = list.append(x) %}` and `namespace()` attribute assignment are visible through every copy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace uma::jinja {

class Value;
using Array = std::vector<Value>;

// A string-keyed map that keeps insertion order (JSON objects and Python dicts both iterate in insertion order).
// Lookup is linear: chat messages and tool schemas have a handful of keys.
class Object {
 public:
  using Entry = std::pair<std::string, Value>;
  const Value* find(std::string_view key) const;
  Value* find(std::string_view key);
  void set(std::string key, Value value);
  bool erase(std::string_view key);
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  std::vector<Entry>::const_iterator begin() const { return entries_.begin(); }
  std::vector<Entry>::const_iterator end() const { return entries_.end(); }

 private:
  std::vector<Entry> entries_;
};

// Arguments of a call from a template: positional first, then keyword (`f(1, indent=2)`).
struct Args {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;

  // The argument at `index`, or the keyword argument `name`, or nullptr when neither was given.
  const Value* get(size_t index, std::string_view name) const;
};

using Function = std::function<Value(const Args&)>;

class Value {
 public:
  enum class Kind { undefined, none, boolean, integer, floating, string, array, object, function };

  Value() = default;  // undefined
  Value(std::nullptr_t) : kind_(Kind::none) {}
  Value(bool b) : kind_(Kind::boolean), int_(b) {}
  template <typename T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Value(T i) : kind_(Kind::integer), int_(static_cast<int64_t>(i)) {}  // any integer type, size_t included
  Value(double f) : kind_(Kind::floating), float_(f) {}
  Value(const char* s) : kind_(Kind::string), string_(std::make_shared<std::string>(s)) {}
  Value(std::string s) : kind_(Kind::string), string_(std::make_shared<std::string>(std::move(s))) {}
  Value(std::string_view s) : Value(std::string(s)) {}
  Value(Array a) : kind_(Kind::array), array_(std::make_shared<Array>(std::move(a))) {}
  Value(Object o) : kind_(Kind::object), object_(std::make_shared<Object>(std::move(o))) {}
  static Value array() { return Value(Array{}); }
  static Value object() { return Value(Object{}); }
  static Value function(Function f);
  // A `namespace()` object: attribute-assignable, but not a mapping for `is mapping`.
  static Value make_namespace(Object o);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::undefined; }
  bool is_none() const { return kind_ == Kind::none; }
  bool is_bool() const { return kind_ == Kind::boolean; }
  bool is_int() const { return kind_ == Kind::integer; }
  bool is_float() const { return kind_ == Kind::floating; }
  bool is_number() const { return kind_ == Kind::integer || kind_ == Kind::floating; }
  bool is_string() const { return kind_ == Kind::string; }
  bool is_array() const { return kind_ == Kind::array; }
  bool is_object() const { return kind_ == Kind::object; }
  bool is_namespace() const { return kind_ == Kind::object && namespace_; }
  bool is_function() const { return kind_ == Kind::function; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return kind_ == Kind::floating ? static_cast<int64_t>(float_) : int_; }
  double as_float() const { return kind_ == Kind::floating ? float_ : static_cast<double>(int_); }
  const std::string& as_string() const { return *string_; }
  Array& as_array() const { return *array_; }
  Object& as_object() const { return *object_; }
  const Function& as_function() const { return *function_; }

  // Array building: push_back on an array; set on an object. Both mutate the shared storage.
  void push_back(Value v) const { array_->push_back(std::move(v)); }
  void set(std::string key, Value v) const { object_->set(std::move(key), std::move(v)); }
  // Object member or undefined (also undefined when this is not an object).
  Value get(std::string_view key) const;

  // Python truthiness: empty strings, containers, zero, none and undefined are false.
  bool truthy() const;
  // The text `{{ value }}` renders: strings as is, none/undefined as "", containers as JSON, floats with ".0".
  std::string str() const;
  // JSON like Python's json.dumps(ensure_ascii=False): ", " and ": " separators, or "," and newlines when indenting.
  std::string to_json(int indent = -1) const;
  // Type name for error messages.
  const char* type_name() const;
  // Length of a string (in code points), array or object; -1 for other kinds.
  int64_t length() const;

  bool operator==(const Value& other) const;
  bool operator!=(const Value& other) const { return !(*this == other); }

 private:
  Kind kind_ = Kind::undefined;
  bool namespace_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<std::string> string_;
  std::shared_ptr<Array> array_;
  std::shared_ptr<Object> object_;
  std::shared_ptr<Function> function_;
};

// Three-way comparison for `<`, sort and dictsort: numbers by value, strings bytewise, arrays lexicographically.
// Throws uma::Error on kinds that cannot be ordered.
int compare(const Value& a, const Value& b);

// UTF-8 helpers shared by filters and methods.
std::vector<std::string> utf8_chars(const std::string& s);
std::string format_float(double f);

}  // namespace uma::jinja
