// `uma serve` through the official openai client. Two servers are started by tests/e2e/test_server.cpp:
// UMA_STORIES_URL (stories260K: no chat template, so the plain "User:/Assistant:" fallback, plus character
// cards) and UMA_QWEN_URL (the qwen2 fixture with a ChatML template).
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const STORIES = process.env.UMA_STORIES_URL;
const QWEN = process.env.UMA_QWEN_URL;
if (!STORIES || !QWEN) throw new Error("set UMA_STORIES_URL and UMA_QWEN_URL (tests/e2e/test_server.cpp does)");

const client = (url) => new OpenAI({ baseURL: url + "/v1", apiKey: "unused", maxRetries: 0, timeout: 60_000 });
const stories = client(STORIES);
const qwen = client(QWEN);

async function chat(c, body) {
  const r = await c.chat.completions.create({ model: "m", ...body });
  return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason, usage: r.usage, r };
}

async function chatStream(c, body) {
  const stream = await c.chat.completions.create({ model: "m", ...body, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, usage = null, chunks = 0;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    const ch = chunk.choices[0];
    if (!ch) continue;
    if (ch.delta?.content) { text += ch.delta.content; ++chunks; }
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, finish, usage, chunks };
}

async function complete(c, body) {
  const r = await c.completions.create({ model: "m", ...body });
  return { text: r.choices[0].text, finish: r.choices[0].finish_reason, usage: r.usage };
}

async function completeStream(c, body) {
  const stream = await c.completions.create({ model: "m", ...body, stream: true });
  let text = "", finish = null;
  for await (const chunk of stream) {
    const ch = chunk.choices[0];
    if (!ch) continue;
    text += ch.text;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  return { text, finish };
}

const hi = [{ role: "user", content: "Tell me a story about a cat." }];

describe("models and health", () => {
  test("GET /v1/models reports the prompt format", async () => {
    const s = await stories.models.list();
    assert.equal(s.data[0].meta.chat_template, "fallback:user-assistant");
    assert.ok(s.data.some((m) => m.id === "uma:lily"));
    const q = await qwen.models.list();
    assert.equal(q.data[0].meta.chat_template, "model");
  });
  test("GET /health counts slots", async () => {
    const h = await (await fetch(STORIES + "/health")).json();
    assert.equal(h.status, "ok");
    assert.equal(h.slots_total, h.slots_idle + h.slots_busy);
  });
});

describe("chat completions", () => {
  for (const [name, c] of [["stories260K", stories], ["qwen2 (ChatML template)", qwen]]) {
    test(`${name}: non-streaming and streaming agree, usage adds up`, async () => {
      const a = await chat(c, { messages: hi, max_tokens: 24, temperature: 0 });
      assert.ok(a.text.length > 0);
      assert.ok(["stop", "length"].includes(a.finish));
      assert.ok(a.usage.prompt_tokens > 5);
      assert.equal(a.usage.total_tokens, a.usage.prompt_tokens + a.usage.completion_tokens);
      if (a.finish === "length") assert.equal(a.usage.completion_tokens, 24);
      const b = await chatStream(c, { messages: hi, max_tokens: 24, temperature: 0 });
      assert.equal(b.text, a.text);
      assert.equal(b.finish, a.finish);
      assert.deepEqual(
        [b.usage.prompt_tokens, b.usage.completion_tokens],
        [a.usage.prompt_tokens, a.usage.completion_tokens]);
      assert.ok(b.chunks > 1, "tokens arrive in several chunks");
    });
  }

  test("the same seed gives the same text; another seed another", async () => {
    const body = { messages: hi, max_tokens: 40, temperature: 1.0, seed: 1234 };
    const a = await chat(stories, body);
    const b = await chat(stories, body);
    const s = await chatStream(stories, body);
    assert.equal(b.text, a.text);
    assert.equal(s.text, a.text);
    const others = await Promise.all([1, 2, 3].map((k) => chat(stories, { ...body, seed: 1234 + k })));
    assert.ok(others.some((o) => o.text !== a.text));
  });

  test("stop strings cut the text and finish with 'stop'", async () => {
    const full = await complete(stories, { prompt: "Once upon a time", max_tokens: 60, temperature: 0 });
    const words = full.text.split(" ");
    const stop = " " + words[6];  // a word well inside the text
    const cut = full.text.slice(0, full.text.indexOf(stop));
    for (const stream of [false, true]) {
      const body = { prompt: "Once upon a time", max_tokens: 60, temperature: 0, stop: [stop, "zzzz"] };
      const r = stream ? await completeStream(stories, body) : await complete(stories, body);
      assert.equal(r.text, cut, `stream=${stream}`);
      assert.equal(r.finish, "stop");
    }
    const c = await chat(qwen, { messages: hi, max_tokens: 30, temperature: 0 });
    const stopAt = c.text.slice(5, 8);
    const d = await chat(qwen, { messages: hi, max_tokens: 30, temperature: 0, stop: stopAt });
    assert.equal(d.text, c.text.slice(0, c.text.indexOf(stopAt)));
    assert.equal(d.finish, "stop");
  });

  test("n choices", async () => {
    const r = await stories.chat.completions.create({ model: "m", messages: hi, max_tokens: 12, temperature: 1, seed: 5, n: 3 });
    assert.equal(r.choices.length, 3);
    assert.deepEqual(r.choices.map((c) => c.index), [0, 1, 2]);
    assert.equal(r.usage.completion_tokens, r.choices.length * 12);
  });
});

describe("completions", () => {
  test("non-streaming and streaming agree", async () => {
    const a = await complete(stories, { prompt: "The little dog", max_tokens: 30, temperature: 0 });
    const b = await completeStream(stories, { prompt: "The little dog", max_tokens: 30, temperature: 0 });
    assert.equal(b.text, a.text);
    assert.equal(a.usage.completion_tokens, 30);
    assert.equal(a.finish, "length");
  });
  test("token-id prompts", async () => {
    const a = await complete(qwen, { prompt: [10, 11, 12], max_tokens: 8, temperature: 0 });
    assert.equal(a.usage.prompt_tokens, 3);
  });
});

describe("parallel requests give the same tokens as sequential ones", () => {
  const prompts = ["Once upon a time", "The little dog", "Lily and Tom", "One day", "A big red ball",
    "The sun was hot", "Tim had a toy", "The bird sang"];
  for (const mode of ["greedy", "seeded"]) {
    test(mode, async () => {
      const body = (p, i) => ({ prompt: p, max_tokens: 40 + 5 * i, temperature: mode === "greedy" ? 0 : 0.9, seed: 77 + i });
      const sequential = [];
      for (const [i, p] of prompts.entries()) sequential.push((await complete(stories, body(p, i))).text);
      const parallel = await Promise.all(prompts.map((p, i) =>
        i % 2 ? completeStream(stories, body(p, i)) : complete(stories, body(p, i))));
      assert.deepEqual(parallel.map((r) => r.text), sequential);
      const q = ["Hello", "What is two plus two?", "Name a colour.", "Write a haiku."];
      const qs = [];
      for (const m of q) qs.push((await chat(qwen, { messages: [{ role: "user", content: m }], max_tokens: 16, temperature: mode === "greedy" ? 0 : 0.9, seed: 3 })).text);
      const qp = await Promise.all(q.map((m) => chat(qwen, { messages: [{ role: "user", content: m }], max_tokens: 16, temperature: mode === "greedy" ? 0 : 0.9, seed: 3 })));
      assert.deepEqual(qp.map((r) => r.text), qs);
    });
  }
  test("a shared system prompt is reused from the cache", async () => {
    const system = "You are a storyteller. ".repeat(12);
    const ask = (m) => chat(qwen, { messages: [{ role: "system", content: system }, { role: "user", content: m }], max_tokens: 8, temperature: 0 });
    const first = await ask("Tell me about dogs.");
    const second = await ask("Tell me about cats.");
    assert.ok(second.r.usage.prompt_tokens_details.cached_tokens >= 16, JSON.stringify(second.r.usage));
    assert.ok(first.text.length > 0);
  });
});

describe("characters", () => {
  test("GET /v1/characters lists JSON and PNG cards", async () => {
    const list = await (await fetch(STORIES + "/v1/characters")).json();
    assert.deepEqual(list.data.map((c) => c.id).sort(), ["lily", "tom"]);
    const tom = list.data.find((c) => c.id === "tom");
    assert.equal(tom.name, "Tom");
  });
  test("selected by the 'character' field or the model name uma:<id>", async () => {
    const a = await chat(stories, { messages: [{ role: "user", content: "Hi" }], max_tokens: 12, temperature: 0, character: "lily" });
    const b = await stories.chat.completions.create({ model: "uma:lily", messages: [{ role: "user", content: "Hi" }], max_tokens: 12, temperature: 0 });
    assert.equal(b.choices[0].message.content, a.text);
    const plain = await chat(stories, { messages: [{ role: "user", content: "Hi" }], max_tokens: 12, temperature: 0 });
    assert.ok(a.usage.prompt_tokens > plain.usage.prompt_tokens + 20, "the card adds its system prompt");
  });
});

describe("errors are OpenAI-shaped and leave no slot behind", () => {
  test("wrong field types, unknown character, over-long prompt", async () => {
    await assert.rejects(stories.chat.completions.create({ model: "m", messages: hi, temperature: "hot" }),
      (e) => e.status === 400 && e.error?.param === "temperature");
    await assert.rejects(stories.chat.completions.create({ model: "m", messages: "hello" }), (e) => e.status === 400);
    await assert.rejects(stories.chat.completions.create({ model: "uma:nobody", messages: hi }), (e) => e.status === 404);
    await assert.rejects(stories.completions.create({ model: "m", prompt: "once upon a time ".repeat(3000) }),
      (e) => e.status === 400 && e.code === "context_length_exceeded");
    await assert.rejects(qwen.completions.create({ model: "m", prompt: [1, 2, 1 << 30] }), (e) => e.status === 400);
  });
  test("malformed JSON and unknown routes", async () => {
    const r = await fetch(STORIES + "/v1/chat/completions", { method: "POST", body: "{nope", headers: { "Content-Type": "application/json" } });
    assert.equal(r.status, 400);
    assert.equal((await r.json()).error.type, "invalid_request_error");
    const n = await fetch(STORIES + "/v1/nothing");
    assert.equal(n.status, 404);
    assert.ok((await n.json()).error.message);
  });
  test("a client that disconnects mid-stream frees its slot", async () => {
    const ac = new AbortController();
    const stream = await stories.completions.create({ model: "m", prompt: "Once", max_tokens: 100000, ignore_eos: true, stream: true }, { signal: ac.signal });
    let n = 0;
    try {
      for await (const _ of stream) if (++n === 5) ac.abort();
    } catch { /* an aborted stream may end quietly or throw */ }
    assert.ok(n >= 5);
    for (let i = 0; i < 50; ++i) {
      const h = await (await fetch(STORIES + "/health")).json();
      if (h.slots_busy === 0 && h.queued === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail("the slot stayed busy after the client left");
  });
});
