#include "uma/server_openai.h"

#include <algorithm>
#include <limits>

#include "gguf/gguf.h"
#include "uma/error.h"

namespace uma::app {
namespace {

using nlohmann::json;

const json* field(const json& body, const char* key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

[[noreturn]] void bad_field(const char* key, const std::string& what) {
  throw ApiError(400, std::string("'") + key + "' " + what, "invalid_request_error", key);
}

double number(const json& body, const char* key, double fallback, double lo, double hi) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number()) bad_field(key, "must be a number");
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad_field(key, "must be between " + json(lo).dump() + " and " + json(hi).dump());
  return x;
}

int64_t integer(const json& body, const char* key, int64_t fallback, int64_t lo, int64_t hi) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_number_integer()) bad_field(key, "must be an integer");
  if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi))
    bad_field(key, "must be at most " + std::to_string(hi));
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad_field(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  return x;
}

bool boolean(const json& body, const char* key, bool fallback) {
  const json* v = field(body, key);
  if (!v) return fallback;
  if (!v->is_boolean()) bad_field(key, "must be true or false");
  return v->get<bool>();
}

}  // namespace

json error_json(const ApiError& e) {
  return {{"error",
           {{"message", e.what()},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

std::string optional_string(const json& body, const char* key) {
  const json* v = field(body, key);
  if (!v) return {};
  if (!v->is_string()) bad_field(key, "must be a string");
  return v->get<std::string>();
}

GenerationParams parse_generation_params(const json& body, int max_n) {
  GenerationParams p;
  SamplerParams& s = p.sampling;
  s.temperature = static_cast<float>(number(body, "temperature", 1.0, 0.0, 2.0));
  s.top_p = static_cast<float>(number(body, "top_p", 1.0, 0.0, 1.0));
  s.top_k = static_cast<int>(integer(body, "top_k", 0, 0, std::numeric_limits<int32_t>::max()));
  s.min_p = static_cast<float>(number(body, "min_p", 0.0, 0.0, 1.0));
  s.presence_penalty = static_cast<float>(number(body, "presence_penalty", 0.0, -2.0, 2.0));
  s.frequency_penalty = static_cast<float>(number(body, "frequency_penalty", 0.0, -2.0, 2.0));
  s.repeat_penalty = static_cast<float>(number(body, "repeat_penalty", 1.0, 0.0, 10.0));
  // Penalties in OpenAI's sense look at the generated text: over all tokens since the start.
  s.repeat_last_n = s.presence_penalty != 0 || s.frequency_penalty != 0 ? -1 : 64;
  if (const json* seed = field(body, "seed")) {
    if (!seed->is_number_integer()) bad_field("seed", "must be an integer");
    s.seed = seed->is_number_unsigned() ? seed->get<uint64_t>() : static_cast<uint64_t>(seed->get<int64_t>());
    if (s.seed == 0xFFFFFFFFFFFFFFFFull) s.seed = 0xFFFFFFFFFFFFFFFEull;  // that value means "random" to the sampler
  }
  const int64_t max_tokens = integer(body, "max_tokens", -1, 1, std::numeric_limits<int32_t>::max());
  p.max_tokens = integer(body, "max_completion_tokens", max_tokens, 1, std::numeric_limits<int32_t>::max());
  p.n = static_cast<int>(integer(body, "n", 1, 1, max_n));
  p.stream = boolean(body, "stream", false);
  p.ignore_eos = boolean(body, "ignore_eos", false);
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) bad_field("stream_options", "must be an object");
    p.include_usage = boolean(*so, "include_usage", false);
  }
  if (const json* stop = field(body, "stop")) {
    if (stop->is_string()) {
      p.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array()) {
      if (stop->size() > 4) bad_field("stop", "may hold at most 4 strings");
      for (const auto& x : *stop) {
        if (!x.is_string()) bad_field("stop", "must be a string or an array of strings");
        p.stop.push_back(x.get<std::string>());
      }
    } else {
      bad_field("stop", "must be a string or an array of strings");
    }
    std::erase_if(p.stop, [](const std::string& x) { return x.empty(); });
  }
  return p;
}

std::vector<ChatMessage> parse_messages(const json& body) {
  const json* msgs = field(body, "messages");
  if (!msgs) throw ApiError(400, "'messages' is required", "invalid_request_error", "messages");
  if (!msgs->is_array() || msgs->empty()) bad_field("messages", "must be a non-empty array");
  std::vector<ChatMessage> out;
  for (const auto& m : *msgs) {
    if (!m.is_object()) bad_field("messages", "must hold objects with 'role' and 'content'");
    ChatMessage cm;
    cm.role = optional_string(m, "role");
    if (cm.role.empty()) bad_field("messages", "entries need a 'role'");
    if (cm.role == "developer") cm.role = "system";  // OpenAI's newer name for the system role
    const json* content = field(m, "content");
    if (!content) {
    } else if (content->is_string()) {
      cm.content = content->get<std::string>();
    } else if (content->is_array()) {
      for (const auto& part : *content) {
        if (!part.is_object() || optional_string(part, "type") != "text")
          throw ApiError(400, "only text content parts are supported", "invalid_request_error", "messages");
        cm.content += optional_string(part, "text");
      }
    } else {
      bad_field("messages", "content must be a string or an array of text parts");
    }
    out.push_back(std::move(cm));
  }
  return out;
}

}  // namespace uma::app
