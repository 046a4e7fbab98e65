// The web page in a real browser: Debian's Chromium driven by playwright-core. Opens the page, picks a
// character, sends a message, checks that the reply streams (its text is rewritten delta by delta),
// checks that the conversation survives a reload (localStorage), and saves a screenshot.
//   UMA_URL=http://127.0.0.1:PORT UMA_SCREENSHOT=out.png node browser.mjs
import { chromium } from "playwright-core";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const URL_ = process.env.UMA_URL;
const SHOT = process.env.UMA_SCREENSHOT || "uma-web.png";
const userDataDir = mkdtempSync(join(tmpdir(), "uma-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: process.env.UMA_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1100, height: 720 },
});
const fail = (msg) => { throw new Error(msg); };
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30_000);
  await page.goto(URL_ + "/");
  await page.waitForFunction(() => document.getElementById("info").textContent.includes("slots"));
  const info = await page.textContent("#info");
  console.log("model info:", info);
  await page.selectOption("#character", "lily");
  await page.waitForFunction(() => document.querySelectorAll(".msg.assistant").length === 1);  // the greeting
  await page.fill("#max-tokens", "200");
  await page.fill("#input", "Hello! Can you tell me a story?");
  // Count every update of the conversation's text while the reply arrives. Each streamed delta rewrites the
  // reply's text node once; the observer sees every such write even when several deltas land between two
  // polls (stories260K generates thousands of tokens per second, faster than a poll loop can sample).
  await page.evaluate(() => {
    window.__umaTextUpdates = 0;
    new MutationObserver((records) => {
      window.__umaTextUpdates += records.filter((r) => r.type === "characterData").length;
    }).observe(document.getElementById("messages"), { subtree: true, characterData: true });
  });
  await page.click("#send");
  // Also watch the reply grow (informative: how many of the updates a poll loop catches).
  const lengths = [];
  for (let i = 0; i < 400; ++i) {
    const len = await page.evaluate(() => { const m = document.querySelectorAll(".msg.assistant"); return m.length > 1 ? m[m.length - 1].textContent.length : 0; });
    if (lengths.at(-1) !== len) lengths.push(len);
    if (await page.isDisabled("#stop")) break;
    await page.waitForTimeout(5);
  }
  await page.waitForFunction(() => document.getElementById("stats").textContent.includes("tokens/s"));
  const updates = await page.evaluate(() => window.__umaTextUpdates);
  console.log("reply lengths seen while polling:", lengths.join(" "), "| text updates while streaming:", updates);
  if (updates < 3) fail("the reply did not stream (" + updates + " text updates)");
  console.log("stats:", await page.textContent("#stats"));
  const before = await page.$$eval(".msg", (m) => m.map((x) => x.textContent));
  await page.reload();
  await page.waitForFunction((n) => document.querySelectorAll(".msg").length === n, before.length);
  const after = await page.$$eval(".msg", (m) => m.map((x) => x.textContent));
  if (JSON.stringify(after) !== JSON.stringify(before)) fail("the conversation was not kept in localStorage");
  await page.screenshot({ path: SHOT, fullPage: true });
  console.log("screenshot:", SHOT);
} finally {
  await context.close();
}
