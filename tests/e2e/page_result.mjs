// Open one page in Debian's headless Chromium (driven by playwright-core, as play.mjs does),
// wait until it sets window.e2eResult, and print {"result": ..., "console": [...]}.
//
//   node tests/e2e/page_result.mjs --url URL [--timeout-ms 30000]
//
// For pages that compute something rather than play: tests/e2e/web/fairplay.html runs
// Shaka Player's FairPlay helpers against the gateway. Exits 2 on an error, 3 on the timeout.
import { launchChromium } from "./chromium.mjs";

function parseArgs(argv) {
  const options = { url: null, timeoutMs: 30000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === "--url") options.url = value;
    else if (name === "--timeout-ms") options.timeoutMs = Number(value);
    else throw new Error(`unknown option ${name}`);
  }
  if (!options.url) throw new Error("give --url");
  return options;
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const browser = await launchChromium(options.timeoutMs);
  const killer = setTimeout(() => {
    console.log(JSON.stringify({ error: `timeout after ${options.timeoutMs} ms` }));
    browser.close().finally(() => process.exit(3));
  }, options.timeoutMs);
  try {
    const page = await browser.newPage();
    const lines = [];
    page.on("console", (msg) => lines.push(`${msg.type()}: ${msg.text()}`.slice(0, 300)));
    page.on("pageerror", (err) => lines.push(`pageerror: ${err.message}`.slice(0, 300)));
    await page.goto(options.url, { waitUntil: "load" });
    const handle = await page.waitForFunction(() => window.e2eResult, null, {
      timeout: options.timeoutMs,
      polling: 100,
    });
    console.log(JSON.stringify({ result: await handle.jsonValue(), console: lines.slice(-20) }));
  } finally {
    clearTimeout(killer);
    await browser.close();
  }
}

main().catch((err) => {
  console.log(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }));
  process.exit(2);
});
