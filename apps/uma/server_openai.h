// The OpenAI-shaped parts of `uma serve` that need no socket: reading request fields with type checks,
// OpenAI error bodies, the prompt format (the model's chat template or a documented fallback), and the
// token -> text stream that honours stop strings.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "runtime/engine.h"

namespace uma::app {

// An error answered to the client: HTTP status plus OpenAI's {"error": {message, type, param, code}}.
struct ApiError : std::runtime_error {
  ApiError(int status, const std::string& message, std::string type = "invalid_request_error",
           std::string param = {}, std::string code = {})
      : std::runtime_error(message), status(status), type(std::move(type)), param(std::move(param)),
        code(std::move(code)) {}
  int status;
  std::string type;
  std::string param;
  std::string code;
};
nlohmann::json error_json(const ApiError& e);

// Fields shared by /v1/chat/completions and /v1/completions.
struct GenerationParams {
  SamplerParams sampling;
  int64_t max_tokens = -1;  // -1: until end of generation or the context is full
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool ignore_eos = false;
};

// Reads and type-checks the generation fields of a request body; throws ApiError(400) naming the field.
// Defaults follow OpenAI (temperature 1, top_p 1, no top-k / min-p); top_k, min_p, repeat_penalty and
// ignore_eos are accepted as extensions.
GenerationParams parse_generation_params(const nlohmann::json& body, int max_n);
// `messages` of a chat request: content as a string or an array of {"type": "text"} parts.
std::vector<ChatMessage> parse_messages(const nlohmann::json& body);
// An optional string field (null counts as absent); throws ApiError(400) when it is another type.
std::string optional_string(const nlohmann::json& body, const char* key);

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

}  // namespace uma::app
