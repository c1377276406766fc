// Drive the gateway's console page (/admin/ui) in Debian's headless Chromium with playwright-core,
// for tests/e2e/test_console_chromium.py. Never downloads a browser: the one `command -v chromium`
// finds. The admin credentials come from the environment (CONSOLE_USER, CONSOLE_PASSWORD), never
// the command line, and are never printed.
//
//   node tests/e2e/console.mjs --url URL [--timeout-ms 90000] [--page-timeout-ms 30000]
//
// Prints one JSON line per step on stdout:
//   {"event": "refused", status, wwwAuthenticate, contentType, body}  the page opened without
//        credentials (their browser context sends none);
//   {"event": "values", refreshes, generatedAt, values: {data-k: data-v}, charts, console}
//        once the page has shown its first refresh, and again after each `values` command.
// Then reads commands, one per stdin line:
//   values           wait for a refresh that starts after the command, print the values again;
//   screenshot PATH  save a full-page screenshot, print {"event": "screenshot", path};
//   quit             close the browser and exit 0 (so does the end of stdin).
// --timeout-ms bounds the whole run: the browser is killed and the process exits 3.
import { createInterface } from "node:readline";
import { launchChromium } from "./chromium.mjs";

function parseArgs(argv) {
  const options = { url: null, timeoutMs: 90000, pageTimeoutMs: 30000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === "--url") options.url = value;
    else if (name === "--timeout-ms") options.timeoutMs = Number(value);
    else if (name === "--page-timeout-ms") options.pageTimeoutMs = Number(value);
    else throw new Error(`unknown option ${name}`);
  }
  if (!options.url) throw new Error("--url is required");
  return options;
}

function say(event) {
  console.log(JSON.stringify(event));
}

async function openRefused(browser, url, timeout) {
  // Not page.goto: offered Basic with no credentials to give, headless Chromium fails the
  // navigation itself (ERR_INVALID_AUTH_CREDENTIALS). The context's own request shows the 401.
  const context = await browser.newContext();
  try {
    const response = await context.request.get(url, { timeout });
    const headers = response.headersArray().filter((h) => h.name.toLowerCase() === "www-authenticate");
    say({
      event: "refused",
      status: response.status(),
      wwwAuthenticate: headers.map((h) => h.value),
      contentType: response.headers()["content-type"] ?? null,
      body: (await response.text()).slice(0, 500),
    });
  } finally {
    await context.close();
  }
}

// Every element's data-k -> data-v, the points each chart line has, and the refresh numbers.
async function readValues(page) {
  return page.evaluate(() => {
    const values = {};
    for (const node of document.querySelectorAll("[data-k]")) values[node.dataset.k] = node.dataset.v;
    const charts = {};
    const chart = document.querySelector("svg.share-svg");
    for (const name of chart ? chart.getAttributeNames() : []) {
      if (name.startsWith("data-points-")) charts[name.slice("data-points-".length)] = Number(chart.getAttribute(name));
    }
    return {
      state: document.body.dataset.state,
      refreshes: Number(document.body.dataset.refreshes),
      generatedAt: document.body.dataset.generatedAt ?? null,
      banner: document.getElementById("banner").hidden ? null : document.getElementById("banner").textContent,
      values,
      charts,
    };
  });
}

async function waitForRefresh(page, after, timeout) {
  await page.waitForFunction(
    (n) => Number(document.body.dataset.refreshes) > n && document.body.dataset.state === "ready",
    after,
    { timeout, polling: 100 },
  );
}

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const username = process.env.CONSOLE_USER ?? "";
  const password = process.env.CONSOLE_PASSWORD ?? "";
  if (!password) throw new Error("CONSOLE_PASSWORD is not set");
  const browser = await launchChromium();
  const killer = setTimeout(() => {
    say({ event: "error", error: `hard timeout after ${options.timeoutMs} ms` });
    Promise.race([browser.close(), new Promise((r) => setTimeout(r, 2000))]).finally(() => process.exit(3));
  }, options.timeoutMs);
  try {
    await openRefused(browser, options.url, options.pageTimeoutMs);
    const context = await browser.newContext({
      httpCredentials: { username, password },
      viewport: { width: 1280, height: 900 },
    });
    const page = await context.newPage();
    const consoleLines = [];
    page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`.slice(0, 300)));
    page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`.slice(0, 300)));
    const response = await page.goto(options.url, { waitUntil: "load", timeout: options.pageTimeoutMs });
    try {
      await waitForRefresh(page, 0, options.pageTimeoutMs);
    } catch (err) {
      const seen = { status: response.status(), state: await page.evaluate(() => document.body && document.body.dataset.state) };
      throw new Error(`the page never showed a refresh: ${JSON.stringify(seen)} ${consoleLines.slice(-10).join(" | ")}`);
    }
    say({ event: "values", ...(await readValues(page)), console: consoleLines.slice(-30) });
    const commands = createInterface({ input: process.stdin });
    for await (const line of commands) {
      const [command, ...rest] = line.trim().split(" ");
      if (command === "values") {
        const started = await page.evaluate(() => Number(document.body.dataset.refreshStarted || 0));
        await waitForRefresh(page, started, options.pageTimeoutMs);
        say({ event: "values", ...(await readValues(page)), console: consoleLines.slice(-30) });
      } else if (command === "screenshot") {
        await page.screenshot({ path: rest.join(" "), fullPage: true });
        say({ event: "screenshot", path: rest.join(" ") });
      } else if (command === "quit") {
        break;
      } else {
        say({ event: "error", error: `unknown command ${command}` });
      }
    }
  } finally {
    clearTimeout(killer);
    await browser.close();
  }
}

// Exit once done: stdin, still open, would keep node waiting.
main().then(() => process.exit(0), (err) => {
  say({ event: "error", error: String(err && err.stack ? err.stack : err) });
  process.exit(2);
});
