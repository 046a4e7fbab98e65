// Test helper: turns a Hugging Face tokenizer.json (byte-level BPE) into a vocab-only GGUF the way
// llama.cpp's converter does, so uma can tokenize with exactly the vocabulary a reference used.
#pragma once
#include <filesystem>
#include <string>

namespace uma::test {

// `pre` is the tokenizer.ggml.pre name to record (e.g. "qwen2", "llama-bpe", "deepseek-v3").
// Added tokens become control tokens (type 3) when marked special, user-defined (type 4) otherwise.
void hf_tokenizer_json_to_gguf(const std::filesystem::path& tokenizer_json, const std::string& pre,
                               const std::filesystem::path& out);

}  // namespace uma::test
