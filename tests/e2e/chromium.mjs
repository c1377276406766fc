// Debian's headless Chromium for the e2e drivers (play.mjs, console.mjs, page_result.mjs),
// driven by playwright-core. Never a downloaded browser: the one `command -v chromium` finds.
import { execFileSync } from "node:child_process";
import { chromium } from "playwright-core";

export const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--autoplay-policy=no-user-gesture-required",
];

export function chromiumPath() {
  return execFileSync("sh", ["-c", "command -v chromium"]).toString().trim();
}

// A fresh headless browser; `timeout` bounds its start.
export function launchChromium(timeout = 30000) {
  return chromium.launch({ executablePath: chromiumPath(), headless: true, args: FLAGS, timeout });
}

export { chromium };
