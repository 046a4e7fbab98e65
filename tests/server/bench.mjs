// Aggregate generation throughput of `uma serve` at several numbers of concurrent streams.
//   UMA_URL=http://127.0.0.1:PORT node bench.mjs [1,4,16] [max_tokens]
// Every stream asks for max_tokens with ignore_eos, so all streams do the same work; the figure is
// (generated tokens of all streams) / (wall time from the first request to the last stream's end).
const URL_ = process.env.UMA_URL;
const levels = (process.argv[2] || "1,4,16").split(",").map(Number);
const maxTokens = Number(process.argv[3] || 128);

async function stream(i) {
  const res = await fetch(URL_ + "/v1/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ prompt: `Once upon a time ${i}`, max_tokens: maxTokens, ignore_eos: true, temperature: 0.8,
      seed: i, stream: true, stream_options: { include_usage: true } }),
  });
  const text = await res.text();
  const usage = JSON.parse(text.split("\n\n").filter((l) => l.includes('"usage"')).at(-1).slice(6)).usage;
  return usage.completion_tokens;
}

await stream(0);  // warm up
for (const n of levels) {
  const t0 = performance.now();
  const tokens = (await Promise.all(Array.from({ length: n }, (_, i) => stream(i)))).reduce((a, b) => a + b, 0);
  const s = (performance.now() - t0) / 1000;
  console.log(`| ${n} | ${tokens} | ${s.toFixed(2)} | ${(tokens / s).toFixed(0)} |`);
}
