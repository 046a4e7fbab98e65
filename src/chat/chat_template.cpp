#include "chat/chat_template.h"

namespace uma {

jinja::Value chat_messages(const std::vector<ChatMessage>& messages) {
  jinja::Value out = jinja::Value::array();
  for (const ChatMessage& m : messages) {
    jinja::Value msg = jinja::Value::object();
    msg.set("role", jinja::Value(m.role));
    msg.set("content", jinja::Value(m.content));
    out.push_back(msg);
  }
  return out;
}

ChatTemplate::ChatTemplate(const std::string& source, std::string bos_token, std::string eos_token)
    : template_(source), bos_token_(std::move(bos_token)), eos_token_(std::move(eos_token)) {}

std::string ChatTemplate::render(const jinja::Value& messages, bool add_generation_prompt,
                                 const jinja::Value& extra) const {
  jinja::Value context = jinja::Value::object();
  context.set("messages", messages);
  context.set("add_generation_prompt", jinja::Value(add_generation_prompt));
  context.set("bos_token", jinja::Value(bos_token_));
  context.set("eos_token", jinja::Value(eos_token_));
  if (extra.is_object()) {
    for (const auto& [k, v] : extra.as_object()) context.set(k, v);
  }
  return template_.render(context);
}

std::string render_chat_template(const std::string& tmpl, const jinja::Value& messages, bool add_generation_prompt,
                                 const std::string& bos_token, const std::string& eos_token,
                                 const jinja::Value& extra) {
  return ChatTemplate(tmpl, bos_token, eos_token).render(messages, add_generation_prompt, extra);
}

}  // namespace uma
