// Rendering a model's chat template (`tokenizer.chat_template`) into the prompt text for a conversation.
#pragma once

#include <string>
#include <vector>

#include "chat/jinja.h"

namespace uma {

struct ChatMessage {
  std::string role;
  std::string content;
};

// Builds the `messages` array of {"role", "content"} objects that templates iterate.
jinja::Value chat_messages(const std::vector<ChatMessage>& messages);

// A parsed chat template plus the special tokens it is rendered with. Parse once per model, render per request.
class ChatTemplate {
 public:
  ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token);

  // `messages` is an array of message objects (role, content, and optionally tool_calls, name, ...).
  // `extra` (an object) adds variables such as tools, documents, enable_thinking; it may also override bos/eos.
  // Throws uma::Error on a template error; a template's raise_exception(msg) gives msg.
  std::string render(const jinja::Value& messages, bool add_generation_prompt, const jinja::Value& extra = {}) const;

 private:
  jinja::Template template_;
  std::string bos_token_;
  std::string eos_token_;
};

// One-shot form of ChatTemplate::render (parses the template each call).
std::string render_chat_template(const std::string& tmpl, const jinja::Value& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token,
                                 const jinja::Value& extra = {});

}  // namespace uma
