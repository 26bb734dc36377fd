// Drives the web viewer in Debian's Chromium with playwright-core, the way
// a person uses it, and prints what it saw as one JSON line for
// tests/e2e/viewer.rs to check. Arguments: base URL, API key, image file,
// screenshot folder.
import { chromium } from "playwright-core";

const [base, key, image, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
const errors = [];
const seen = {};

async function open(url) {
  const page = await context.newPage();
  page.on("pageerror", e => errors.push(String(e)));
  // The browser logs the 401 that makes the page ask for a key; that is
  // the expected way in, not an error.
  page.on("console", m => {
    if (m.type() === "error" && !/status of 401/.test(m.text())) errors.push(m.text());
  });
  await page.goto(url);
  return page;
}

async function giveKey(page) {
  await page.waitForSelector("#key-form");
  await page.fill("#api-key", key);
  await page.click("#key-form button");
}

const scores = (page, n) => page.textContent(`[data-turn="${n}"] .scores`);

try {
  // /ui: the key first (auth is on), then the form.
  const page = await open(base + "/ui");
  await giveKey(page);
  await page.waitForSelector("#submit-form");
  seen.editors = await page.$$eval("#editor option", os => os.map(o => o.value));
  await page.setInputFiles("#image", image);
  await page.fill("#instruction", "paint the door red");
  await page.fill("#max-turns", "3");
  await page.screenshot({ path: `${shots}/ui-submit.png` });
  await page.click("#submit");
  await page.waitForURL(/\/ui\/jobs\/[^/]+$/);
  seen.jobUrl = page.url();

  // Turns appear live: turn 1 has its scores while the job still runs.
  await page.waitForSelector('[data-turn="1"] .overall', { timeout: 30000 });
  seen.statusAtTurn1 = await page.textContent("#status");
  seen.turn1 = await scores(page, 1);
  seen.turn1Instruction = await page.textContent('[data-turn="1"] .instruction');

  // A reload mid-job shows the same state and goes on.
  await page.reload();
  await page.waitForSelector('[data-turn="1"] .overall', { timeout: 30000 });
  seen.turn1AfterReload = await scores(page, 1);
  seen.statusAfterReload = await page.textContent("#status");

  await page.waitForSelector("#selected", { timeout: 30000 });
  seen.finalStatus = await page.textContent("#status");
  seen.turns = await page.$$eval(".turn", ts => ts.length);
  seen.selectedTurn = await page.$eval(".turn.selected", t => t.dataset.turn);
  seen.turn2Inserted = await page.$$eval('[data-turn="2"] .instruction ins', i => i.map(x => x.textContent));
  seen.downloadHref = await page.getAttribute("#download", "href");
  seen.turnImagesLoaded = await page.$$eval(".turn img", is => is.every(i => i.complete && i.naturalWidth > 0));
  await page.screenshot({ path: `${shots}/ui-job.png`, fullPage: true });

  // A finished job opened in a new tab: the key again (it lives in one
  // tab only), then the replayed turns and the chart.
  const again = await open(seen.jobUrl);
  await giveKey(again);
  await again.waitForSelector("#selected", { timeout: 30000 });
  seen.replayTurns = await again.$$eval(".turn", ts => ts.length);
  seen.chartSeries = await again.$$eval("svg.chart polyline", ls => ls.map(l => [l.dataset.series, l.getAttribute("points").split(" ").length]));
  await again.screenshot({ path: `${shots}/ui-finished.png`, fullPage: true });

  // The recent jobs list on /ui, and the API reader on /docs.
  await again.goto(base + "/ui");
  await again.waitForSelector("#recent a");
  seen.recent = await again.$$eval("#recent a", as => as.map(a => [a.getAttribute("href"), a.querySelector(".status").textContent]));
  await again.goto(base + "/docs");
  await again.waitForSelector("details#create_job");
  seen.docsOperations = await again.$$eval("main details[id]", ds => ds.length);

  // A job that fails (the editor refuses it), retried from its page: the
  // new attempt's events follow on the same page.
  await again.goto(base + "/ui");
  await again.waitForSelector("#submit-form");
  await again.setInputFiles("#image", image);
  await again.fill("#instruction", "make it forbidden");
  await again.click("#submit");
  await again.waitForSelector('#status[data-failures="1"]', { timeout: 30000 });
  seen.failedUrl = again.url();
  seen.failedInfo = await again.textContent("#info");
  await again.click("#retry");
  await again.waitForSelector('#status[data-failures="2"]', { timeout: 30000 });
  seen.retryHiddenWhileFailed = await again.$eval("#retry", b => b.hidden);
} catch (e) {
  errors.push("script: " + (e && e.stack || e));
} finally {
  seen.errors = errors;
  console.log(JSON.stringify(seen));
  await browser.close();
}
