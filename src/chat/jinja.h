// A Jinja2 template engine sized for chat templates (`tokenizer.chat_template` in HF tokenizer_config.json and GGUF
// metadata). Parse once with Template, render per request with a context object.
//
// Semantics follow Jinja2 as HF renders chat templates (trim_blocks and lstrip_blocks on, no autoescape, lenient
// undefined), and where Python and the JavaScript port @huggingface/jinja disagree, the JavaScript one (our reference
// in tests): none renders as "", booleans as true/false, lists and dicts as JSON.
//
//   jinja::Template t(source);
//   jinja::Value ctx = jinja::Value::object();
//   ctx.set("messages", messages);
//   std::string prompt = t.render(ctx);
#pragma once

#include <memory>
#include <string>

#include "chat/jinja_value.h"

namespace uma::jinja {

struct Node;

class Template {
 public:
  // Throws uma::Error ("chat template line L, column C: ...") on a syntax error.
  explicit Template(const std::string& source);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with the variables of `context` (an object) plus the globals range, namespace, dict, raise_exception
  // and strftime_now. Throws uma::Error with line/column on a runtime error; `raise_exception(msg)` gives msg.
  std::string render(const Value& context) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace uma::jinja
