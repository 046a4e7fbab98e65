#include "hf_tokenizer_json.h"

#include <fstream>
#include <nlohmann/json.hpp>

#include "gguf/gguf_writer.h"
#include "uma/error.h"

namespace uma::test {

void hf_tokenizer_json_to_gguf(const std::filesystem::path& tokenizer_json, const std::string& pre,
                               const std::filesystem::path& out) {
  std::ifstream in(tokenizer_json);
  if (!in) fail("cannot open {}", tokenizer_json.string());
  const nlohmann::json j = nlohmann::json::parse(in);
  const auto& model = j.at("model");
  if (model.at("type") != "BPE") fail("{}: only BPE tokenizer.json files are supported", tokenizer_json.string());

  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  auto put = [&](size_t id, const std::string& text, int32_t type) {
    if (id >= tokens.size()) {
      for (size_t i = tokens.size(); i <= id; ++i) tokens.push_back("[PAD" + std::to_string(i) + "]");
      types.resize(tokens.size(), 5);  // unused until something fills the slot
    }
    tokens[id] = text;
    types[id] = type;
  };
  for (const auto& [text, id] : model.at("vocab").items()) put(id.get<size_t>(), text, 1);
  for (const auto& added : j.at("added_tokens")) {
    put(added.at("id").get<size_t>(), added.at("content").get<std::string>(), added.at("special").get<bool>() ? 3 : 4);
  }

  std::vector<std::string> merges;
  for (const auto& m : model.at("merges")) {
    // Older files write "a b", newer ones ["a", "b"].
    merges.push_back(m.is_string() ? m.get<std::string>()
                                   : m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
  }

  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", tokenizer_json.parent_path().parent_path().filename().string());
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", tokens);
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", merges);
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.write(out);
}

}  // namespace uma::test
