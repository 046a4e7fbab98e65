#include "uma/server_cards.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "uma/error.h"

namespace uma::app {
namespace {

std::string text_field(const nlohmann::json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return {};
  if (!it->is_string()) fail("character card field '{}' should be a string", key);
  return it->get<std::string>();
}

std::string base64_decode(std::string_view in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=' || std::isspace(static_cast<unsigned char>(c))) continue;
    const int v = value(c);
    if (v < 0) fail("the PNG card's 'chara' text is not base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

uint32_t be32(std::string_view s, size_t at) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(s[at + i])); };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

CharacterCard parse_character_card(std::string_view json_text, const std::string& id) {
  nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) fail("character card '{}' is not a JSON object", id);
  // V2 (and V3, which keeps the V2 fields) nests the fields under `data`; V1 has them at the top level.
  const nlohmann::json& d = j.contains("data") && j["data"].is_object() ? j["data"] : j;
  CharacterCard c;
  c.id = id;
  c.name = text_field(d, "name");
  if (c.name.empty()) c.name = text_field(j, "char_name");  // some exporters
  if (c.name.empty()) fail("character card '{}' has no name", id);
  c.description = text_field(d, "description");
  c.personality = text_field(d, "personality");
  c.scenario = text_field(d, "scenario");
  c.first_mes = text_field(d, "first_mes");
  c.mes_example = text_field(d, "mes_example");
  c.system_prompt = text_field(d, "system_prompt");
  c.post_history_instructions = text_field(d, "post_history_instructions");
  c.creator_notes = text_field(d, "creator_notes");
  if (auto it = d.find("tags"); it != d.end() && it->is_array())
    for (const auto& t : *it)
      if (t.is_string()) c.tags.push_back(t.get<std::string>());
  return c;
}

std::string png_character_json(std::string_view png) {
  static constexpr std::string_view kSignature("\x89PNG\r\n\x1a\n", 8);
  if (png.size() < 8 || png.substr(0, 8) != kSignature) fail("not a PNG file");
  size_t at = 8;
  std::string found;
  while (at + 12 <= png.size()) {
    const uint32_t length = be32(png, at);
    if (length > png.size() - at - 12) fail("the PNG is truncated (a chunk runs past the end)");
    const std::string_view type = png.substr(at + 4, 4);
    const std::string_view data = png.substr(at + 8, length);
    if (type == "tEXt") {
      const size_t nul = data.find('\0');
      if (nul != std::string_view::npos) {
        const std::string_view key = data.substr(0, nul);
        // "ccv3" (card V3) supersedes "chara" when both are present.
        if (key == "ccv3" || (key == "chara" && found.empty())) found = base64_decode(data.substr(nul + 1));
      }
    }
    if (type == "IEND") break;
    at += 12 + length;
  }
  if (found.empty()) fail("the PNG has no 'chara' text chunk, so it is not a character card");
  return found;
}

std::vector<CharacterCard> load_character_cards(const std::filesystem::path& dir, std::vector<std::string>& warnings) {
  std::vector<CharacterCard> cards;
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) fail("--characters: {} is not a directory", dir.string());
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (!entry.is_regular_file()) continue;
    const auto ext = lower(entry.path().extension().string());
    if (ext != ".json" && ext != ".png") continue;
    try {
      const std::string bytes = read_file(entry.path());
      const std::string json = ext == ".png" ? png_character_json(bytes) : bytes;
      CharacterCard card = parse_character_card(json, entry.path().stem().string());
      card.path = entry.path();
      cards.push_back(std::move(card));
    } catch (const std::exception& e) {
      warnings.push_back(entry.path().string() + ": " + e.what());
    }
  }
  std::sort(cards.begin(), cards.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  // Two files with one stem (x.json, x.png): keep the first, say so.
  for (size_t i = 1; i < cards.size();)
    if (cards[i].id == cards[i - 1].id) {
      warnings.push_back(cards[i].path.string() + ": a card with id '" + cards[i].id + "' is already loaded");
      cards.erase(cards.begin() + static_cast<std::ptrdiff_t>(i));
    } else {
      ++i;
    }
  return cards;
}

std::string substitute_names(std::string_view text, std::string_view char_name, std::string_view user_name) {
  static const std::pair<std::string_view, int> kMarks[] = {{"{{char}}", 0}, {"{{user}}", 1}, {"<bot>", 0},
                                                            {"<user>", 1}};
  const std::string low = lower(text);
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    bool replaced = false;
    for (const auto& [mark, who] : kMarks)
      if (low.compare(i, mark.size(), mark) == 0) {
        out += who == 0 ? char_name : user_name;
        i += mark.size();
        replaced = true;
        break;
      }
    if (!replaced) out += text[i++];
  }
  return out;
}

CharacterPrompt character_prompt(const CharacterCard& card, std::string_view user_name) {
  auto sub = [&](const std::string& s) { return substitute_names(s, card.name, user_name); };
  std::string system = card.system_prompt.empty()
                           ? "Write {{char}}'s next reply in a fictional chat between {{char}} and {{user}}."
                           : card.system_prompt;
  // V2 lets the card's system prompt embed the default one as {{original}}; there is no other default here.
  if (auto at = system.find("{{original}}"); at != std::string::npos) system.erase(at, 12);
  std::string out = sub(system);
  auto section = [&](std::string_view title, const std::string& body) {
    if (body.empty()) return;
    out += "\n\n";
    out += title;
    out += sub(body);
  };
  section("", card.description);
  section(card.name + "'s personality: ", card.personality);
  section("Scenario: ", card.scenario);
  // mes_example: dialogue blocks, each introduced by a <START> line; keep the dialogue, drop the markers.
  if (!card.mes_example.empty()) {
    std::string examples;
    std::istringstream lines(card.mes_example);
    for (std::string line; std::getline(lines, line);) {
      if (lower(line).find("<start>") != std::string::npos) continue;
      examples += line + "\n";
    }
    while (!examples.empty() && (examples.back() == '\n' || examples.back() == '\r')) examples.pop_back();
    section("Example dialogue:\n", examples);
  }
  return {out, sub(card.first_mes), sub(card.post_history_instructions)};
}

}  // namespace uma::app
