// The OpenAI-shaped parts of `uma serve` that need no socket: reading request fields with type checks and
// OpenAI error bodies. (Prompt formats and stop-string streaming live in src/chat/prompt_format.h.)
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "chat/chat_template.h"
#include "chat/prompt_format.h"
#include "runtime/engine.h"

namespace uma::app {

using uma::PromptFormat;
using uma::TextStream;

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

}  // namespace uma::app
