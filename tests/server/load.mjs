// Load test on loopback, bounded in count and time: rounds of 64 concurrent streaming clients plus clients
// that disconnect mid-stream. Afterwards no slot may be busy or queued, and the server's resident memory
// must not keep growing from one round to the next. Exits non-zero on failure.
//   UMA_URL=http://127.0.0.1:PORT UMA_PID=<server pid> node load.mjs
import OpenAI from "openai";

const URL_ = process.env.UMA_URL;
const PID = process.env.UMA_PID;
const CLIENTS = Number(process.env.UMA_LOAD_CLIENTS || 64);
const QUITTERS = Number(process.env.UMA_LOAD_QUITTERS || 16);
const ROUNDS = Number(process.env.UMA_LOAD_ROUNDS || 3);
const DEADLINE = Date.now() + Number(process.env.UMA_LOAD_SECONDS || 120) * 1000;
if (!URL_ || !PID) throw new Error("set UMA_URL and UMA_PID");

const client = new OpenAI({ baseURL: URL_ + "/v1", apiKey: "unused", maxRetries: 0, timeout: 120_000 });
const rssKiB = async () => Number((await import("node:fs")).readFileSync(`/proc/${PID}/status`, "utf8").match(/VmRSS:\s+(\d+)/)[1]);
const health = async () => (await fetch(URL_ + "/health")).json();

async function streamer(i) {
  const stream = await client.chat.completions.create({
    model: "m", messages: [{ role: "user", content: `Story number ${i % 7}` }], max_tokens: 48, temperature: 0.8,
    seed: i, stream: true,
  });
  let n = 0, finish = null;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) ++n;
    if (chunk.choices[0]?.finish_reason) finish = chunk.choices[0].finish_reason;
  }
  if (!finish) throw new Error(`client ${i}: the stream ended without finish_reason`);
  return n;
}

async function quitter(i) {
  const ac = new AbortController();
  try {
    const stream = await client.completions.create({ model: "m", prompt: "Once upon a time", max_tokens: 100000,
      ignore_eos: true, stream: true }, { signal: ac.signal });
    let n = 0;
    for await (const _ of stream) if (++n === 3 + (i % 5)) ac.abort();
  } catch (e) {
    if (e.name !== "APIUserAbortError" && !ac.signal.aborted) throw e;
  }
}

async function idle() {
  for (let i = 0; i < 100 && Date.now() < DEADLINE; ++i) {
    const h = await health();
    if (h.slots_busy === 0 && h.queued === 0) return h;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("slots still busy after the round: " + JSON.stringify(await health()));
}

const rss = [await rssKiB()];
let total = 0;
for (let round = 0; round < ROUNDS; ++round) {
  if (Date.now() > DEADLINE) throw new Error("out of time");
  const t0 = performance.now();
  const results = await Promise.all([
    ...Array.from({ length: CLIENTS }, (_, i) => streamer(round * CLIENTS + i)),
    ...Array.from({ length: QUITTERS }, (_, i) => quitter(i).then(() => 0)),
  ]);
  const n = results.reduce((a, b) => a + b, 0);
  total += n;
  const h = await idle();
  rss.push(await rssKiB());
  console.log(`round ${round}: ${CLIENTS} streams + ${QUITTERS} disconnects, ${n} chunks in ${((performance.now() - t0) / 1000).toFixed(1)} s; ` +
    `slots idle ${h.slots_idle}/${h.slots_total}; RSS ${rss.at(-1)} KiB`);
}
// Memory is flat when the last round grew the RSS by less than 8 MiB over the first loaded round.
const growth = rss.at(-1) - rss[1];
console.log(`RSS before ${rss[0]} KiB, after round 1 ${rss[1]} KiB, after the last ${rss.at(-1)} KiB (growth ${growth} KiB)`);
if (growth > 8192) throw new Error(`resident memory keeps growing: +${growth} KiB`);
const metrics = await (await fetch(URL_ + "/metrics")).text();
const busy = Number(metrics.match(/^uma_slots_busy (\S+)/m)[1]);
if (busy !== 0) throw new Error("uma_slots_busy is " + busy);
console.log(`load test passed: ${total} chunks streamed`);
