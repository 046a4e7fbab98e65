// Built-in filters (`x | name`), tests (`x is name`), methods (`s.strip()`, `d.items()`) and global functions.
#pragma once

#include <string>

#include "chat/jinja_value.h"

namespace uma::jinja {

// Applies the filter `name` to `input`. Throws uma::Error for an unknown filter or bad arguments.
Value apply_filter(const std::string& name, const Value& input, const Args& args);

// Evaluates the test `name` on `input`. Throws uma::Error for an unknown test.
bool apply_test(const std::string& name, const Value& input, const Args& args);

// `object.name`: an object member, a list/string/dict method bound to the object, or undefined.
Value get_attribute(const Value& object, const std::string& name);

// `object[key]` with Python's negative indices; undefined when absent.
Value get_item(const Value& object, const Value& key);

// `object[start:stop:step]` for strings and lists; absent parts are undefined or none.
Value slice(const Value& object, const Value& start, const Value& stop, const Value& step);

// `needle in haystack` for strings (substring), lists (element) and dicts (key).
bool contains(const Value& haystack, const Value& needle);

// The values iterated by `for`: list items, dict keys, string characters.
Array iterate(const Value& value);

// Adds range, namespace, dict, raise_exception and strftime_now to `globals`.
void add_globals(Object& globals);

// Thrown by raise_exception(): the template's own message, shown without decoration.
class TemplateException : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace uma::jinja
