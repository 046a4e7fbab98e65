// How a conversation becomes prompt tokens (the model's chat template, or a documented fallback), and how
// generated tokens become text that honours stop strings. Shared by `uma run --chat` and `uma serve`.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "runtime/engine.h"

namespace uma {

// How a conversation becomes prompt text.
class PromptFormat {
 public:
  // The model's tokenizer.chat_template when it has one; otherwise ChatML when the vocabulary has
  // <|im_start|>/<|im_end|>, else the plain "User:/Assistant:" transcript.
  explicit PromptFormat(const Engine& engine);

  // Role labels for the plain transcript (a character card names both sides); ignored by templates.
  struct Labels {
    std::string user = "User";
    std::string assistant = "Assistant";
  };
  // Throws uma::Error (with the template's own message) when the template rejects the conversation.
  std::string render(const std::vector<ChatMessage>& messages, const Labels& labels) const;
  // Prompt tokens for rendered text: special-token text is parsed, and BOS added unless the text has it.
  std::vector<TokenId> tokenize(const std::string& text) const;
  // Stop strings the format needs (the plain transcript stops before the user's next line).
  std::vector<std::string> stops(const Labels& labels) const;
  // "model", "fallback:chatml" or "fallback:user-assistant".
  const std::string& name() const { return name_; }

 private:
  const Engine& engine_;
  std::string name_;
  std::unique_ptr<ChatTemplate> template_;
  std::string bos_text_;
};

// Token ids -> text deltas: whole UTF-8 characters only, and never the text of a stop string, nor a tail
// that could still become one (it is held back until the next token decides).
class TextStream {
 public:
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stop);
  // Text that can be sent now. After a stop string appears, stopped() is true and the text before it is the
  // last thing returned.
  std::string push(TokenId token);
  // What is still held back, once generation ended without a stop string.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  const Tokenizer& tokenizer_;
  std::vector<std::string> stop_;
  Utf8Stream utf8_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace uma
