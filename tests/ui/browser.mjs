// What the browser scripts share: Debian's Chromium through playwright-core
// (never a downloaded browser), one window size, and the report the Rust
// tests read: what the page showed, as one JSON line, with the errors.
import { chromium } from "playwright-core";

export async function launch() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu"],
  });
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  return { browser, context };
}

export async function report(browser, seen, errors) {
  seen.errors = errors;
  console.log(JSON.stringify(seen));
  await browser.close();
}
