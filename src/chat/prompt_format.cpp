#include "chat/prompt_format.h"

#include <algorithm>

#include "uma/error.h"

namespace uma {
namespace {

bool has_token(const Tokenizer& tok, const std::string& text) {
  const auto ids = tok.encode(text, false, true);
  return ids.size() == 1 && tok.token_text(ids[0]) == text;
}

}  // namespace

PromptFormat::PromptFormat(const Engine& engine) : engine_(engine) {
  const Tokenizer& tok = engine.tokenizer();
  bos_text_ = tok.bos() >= 0 ? std::string(tok.token_text(tok.bos())) : std::string();
  const std::string eos_text = tok.eos() >= 0 ? std::string(tok.token_text(tok.eos())) : std::string();
  const std::string source = engine.file().get_string("tokenizer.chat_template", "");
  if (!source.empty()) {
    template_ = std::make_unique<ChatTemplate>(source, bos_text_, eos_text);
    name_ = "model";
  } else if (has_token(tok, "<|im_start|>") && has_token(tok, "<|im_end|>")) {
    name_ = "fallback:chatml";
  } else {
    name_ = "fallback:user-assistant";
  }
}

std::string PromptFormat::render(const std::vector<ChatMessage>& messages, const Labels& labels) const {
  if (template_) {
    try {
      return template_->render(chat_messages(messages), /*add_generation_prompt=*/true);
    } catch (const Error& e) {
      fail("the model's chat template rejected the conversation: {}", e.what());
    }
  }
  std::string out;
  if (name_ == "fallback:chatml") {
    for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    return out + "<|im_start|>assistant\n";
  }
  // The plain transcript: system text first, then one "Name: text" line per turn.
  for (const auto& m : messages) {
    if (m.role == "system") out += m.content + "\n\n";
    else if (m.role == "assistant") out += labels.assistant + ": " + m.content + "\n";
    else out += labels.user + ": " + m.content + "\n";
  }
  return out + labels.assistant + ":";
}

std::vector<std::string> PromptFormat::stops(const Labels& labels) const {
  if (name_ == "fallback:user-assistant") return {"\n" + labels.user + ":"};
  return {};
}

std::vector<TokenId> PromptFormat::tokenize(const std::string& text) const {
  const bool has_bos = !bos_text_.empty() && text.starts_with(bos_text_);
  return engine_.tokenizer().encode(text, /*add_special=*/!has_bos, /*parse_special=*/true);
}

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop)
    : tokenizer_(tokenizer), stop_(std::move(stop)) {}

std::string TextStream::push(TokenId token) {
  if (stopped_) return {};
  held_ += utf8_.push(tokenizer_.token_bytes(token));
  // The earliest stop string wins.
  size_t at = std::string::npos;
  for (const auto& s : stop_) at = std::min(at, held_.find(s));
  if (at != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, at);
    held_.clear();
    return out;
  }
  // Hold back the longest tail that is the start of some stop string.
  size_t keep = 0;
  for (const auto& s : stop_)
    for (size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k)
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        keep = k;
        break;
      }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string TextStream::finish() {
  if (stopped_) return {};
  std::string out = held_ + utf8_.flush();
  held_.clear();
  return out;
}

}  // namespace uma
