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

// A new page whose errors, console errors and failed requests go to
// `errors`.
export async function watchedPage(context, errors) {
  const page = await context.newPage();
  page.on("pageerror", e => errors.push(String(e)));
  page.on("console", m => { if (m.type() === "error") errors.push(m.text()); });
  page.on("response", r => { if (r.status() >= 400) errors.push(r.status() + " " + new URL(r.url()).pathname); });
  return page;
}

export async function report(browser, seen, errors) {
  seen.errors = errors;
  console.log(JSON.stringify(seen));
  await browser.close();
}
