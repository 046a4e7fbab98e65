// Character cards for `uma serve`: Character Card V2 JSON (spec "chara_card_v2", fields under `data`), the
// older V1 layout (the same fields at the top level), and PNG cards whose tEXt chunk "chara" holds the JSON
// in base64. A card becomes a system prompt (with example dialogue) plus a greeting.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace uma::app {

struct CharacterCard {
  std::string id;  // the file name without extension: what requests select
  std::string name;
  std::string description;
  std::string personality;
  std::string scenario;
  std::string first_mes;
  std::string mes_example;
  std::string system_prompt;
  std::string post_history_instructions;
  std::string creator_notes;
  std::vector<std::string> tags;
  std::filesystem::path path;
};

// Parses card JSON (V2 or V1). Throws uma::Error naming what is missing or malformed.
CharacterCard parse_character_card(std::string_view json_text, const std::string& id);
// The card JSON inside a PNG (tEXt "chara", base64). Throws uma::Error when there is none.
std::string png_character_json(std::string_view png_bytes);
// Loads every *.json and *.png card in `dir` (sorted by id); unreadable ones are skipped with a line in `warnings`.
std::vector<CharacterCard> load_character_cards(const std::filesystem::path& dir, std::vector<std::string>& warnings);

// Replaces {{char}} / {{user}} (and the legacy <BOT> / <USER>), case-insensitively.
std::string substitute_names(std::string_view text, std::string_view char_name, std::string_view user_name);

// What the server puts around a conversation for a card.
struct CharacterPrompt {
  std::string system;        // system prompt + description + personality + scenario + example dialogue
  std::string greeting;      // first_mes, the character's opening line
  std::string post_history;  // appended after the last user message
};
CharacterPrompt character_prompt(const CharacterCard& card, std::string_view user_name);

}  // namespace uma::app
