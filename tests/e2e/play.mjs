// Play pages of proxy/static/player.html in Debian's headless Chromium, driven by playwright-core,
// and print one JSON result. Never downloads a browser: the one `command -v chromium` finds.
//
//   node tests/e2e/play.mjs --url URL --screenshot PNG [--url URL --screenshot PNG ...]
//        [--play-seconds 2] [--page-timeout-ms 20000] [--timeout-ms 90000]
//
// Each page is opened in turn in one browser; a page is done when the video has played past
// --play-seconds with decoded frames, when the player reports an error (then it is watched for
// one more second to confirm playback stays at 0), or at --page-timeout-ms. A screenshot of
// each page is saved. --timeout-ms bounds the whole run: the browser is killed and the process
// exits 3. Output: {"userAgent": ..., "pages": [{url, state, error, currentTime,
// decodedFrames, licenseRequests, answers, screenshot, console}]} (the `token` query is never
// printed).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FLAGS, chromium, chromiumPath } from "./chromium.mjs";

function parseArgs(argv) {
  const options = { pages: [], playSeconds: 2, pageTimeoutMs: 20000, timeoutMs: 90000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === "--url") options.pages.push({ url: value, screenshot: null });
    else if (name === "--screenshot") {
      const last = options.pages.at(-1);
      if (!last || last.screenshot) throw new Error("--screenshot must follow its --url");
      last.screenshot = value;
    } else if (name === "--play-seconds") options.playSeconds = Number(value);
    else if (name === "--page-timeout-ms") options.pageTimeoutMs = Number(value);
    else if (name === "--timeout-ms") options.timeoutMs = Number(value);
    else throw new Error(`unknown option ${name}`);
  }
  if (!options.pages.length || options.pages.some((p) => !p.screenshot)) {
    throw new Error("give at least one --url, each followed by --screenshot");
  }
  return options;
}

function withoutToken(url) {
  const parsed = new URL(url);
  if (parsed.searchParams.has("token")) parsed.searchParams.set("token", "redacted");
  return parsed.toString();
}

async function readState(page) {
  return page.evaluate(() => {
    const video = document.querySelector("video");
    if (!video) return { state: "no-player", error: null, errorData: null, licenseRequests: 0,
                         currentTime: 0, decodedFrames: 0, answers: [] };
    const quality = video.getVideoPlaybackQuality();
    const e = window.e2e || {};
    return {
      state: e.state ?? "no-page-state",
      error: e.error ?? null,
      errorData: e.errorData ?? null,
      licenseRequests: e.licenseRequests ?? 0,
      // What the page lists per license or key answer: {request, status, provider}.
      answers: e.answers ?? [],
      currentTime: video.currentTime,
      decodedFrames: quality.totalVideoFrames,
    };
  });
}

async function playOne(context, spec, options) {
  const page = await context.newPage();
  const consoleLines = [];
  page.on("console", (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`.slice(0, 300)));
  page.on("pageerror", (err) => consoleLines.push(`pageerror: ${err.message}`.slice(0, 300)));
  let timedOut = false;
  try {
    await page.goto(spec.url, { waitUntil: "load", timeout: options.pageTimeoutMs });
    await page.waitForFunction(
      (seconds) => {
        const video = document.querySelector("video");
        const e = window.e2e;
        if (!e) return false;
        if (e.error !== null) return true;
        return video.currentTime > seconds && video.getVideoPlaybackQuality().totalVideoFrames > 0;
      },
      options.playSeconds,
      { timeout: options.pageTimeoutMs, polling: 100 },
    );
  } catch (err) {
    timedOut = true;
    consoleLines.push(`runner: ${String(err.message).split("\n")[0]}`);
  }
  let state = await readState(page);
  if (state.error !== null) {
    // An error must leave playback where it was: look again a second later.
    await page.waitForTimeout(1000);
    state = await readState(page);
  }
  await page.evaluate(() => window.e2eRender && window.e2eRender());
  await page.screenshot({ path: spec.screenshot });
  await page.close();
  return {
    url: withoutToken(spec.url),
    ...state,
    timedOut,
    screenshot: spec.screenshot,
    console: consoleLines.slice(-20),
  };
}

let hardTimedOut = false;

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const executablePath = chromiumPath();
  const userDataDir = mkdtempSync(join(tmpdir(), "drm-gateway-chromium-"));
  let context = null;
  const killer = setTimeout(() => {
    hardTimedOut = true;
    console.log(JSON.stringify({ error: `hard timeout after ${options.timeoutMs} ms` }));
    // Close the browser if it still answers; playwright-core's exit handler kills it if not.
    const closing = context ? context.close() : Promise.resolve();
    Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 2000))]).finally(() =>
      process.exit(3),
    );
  }, options.timeoutMs);
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: FLAGS,
    viewport: { width: 720, height: 560 },
    timeout: 30000,
  });
  // Registered after the launch, so it runs after playwright-core has killed the browser.
  process.on("exit", () => rmSync(userDataDir, { recursive: true, force: true }));
  try {
    const pages = [];
    for (const spec of options.pages) pages.push(await playOne(context, spec, options));
    const probe = await context.newPage();
    const userAgent = await probe.evaluate(() => navigator.userAgent);
    console.log(JSON.stringify({ userAgent, pages }));
  } finally {
    await context.close();
    clearTimeout(killer);
  }
}

main().catch((err) => {
  if (hardTimedOut) return; // the timer reports and exits once the browser is closed
  console.log(JSON.stringify({ error: String(err && err.stack ? err.stack : err) }));
  process.exit(2);
});
