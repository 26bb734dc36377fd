// Drives the web viewer in Debian's Chromium with playwright-core, the way
// a person uses it, and prints what it saw as one JSON line for
// tests/e2e/viewer.rs to check. Arguments: base URL, API key, image file,
// screenshot folder.
import { launch, report } from "./browser.mjs";

const [base, key, image, shots] = process.argv.slice(2);
const { browser, context } = await launch();
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
  // The form starts from the API's own default.
  seen.maxTurnsDefault = await page.inputValue("#max-turns");
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
  seen.chartThresholds = await again.$$eval("svg.chart line[data-threshold]", ls => ls.map(l => Number(l.dataset.threshold)));
  // The header says what the job is, and why its result was chosen.
  seen.title = await again.textContent("#job-title");
  seen.documentTitle = await again.title();
  seen.meta = await again.textContent("#job-meta");
  seen.why = await again.textContent("#why-selected");
  await again.screenshot({ path: `${shots}/ui-finished.png`, fullPage: true });
  // Full size, wiping between the source and turn 2.
  await again.click('[data-turn="2"] img');
  await again.waitForSelector("#compare");
  await again.waitForFunction(() => ["compare-before", "compare-after"].every(i => document.getElementById(i).naturalWidth > 0));
  await again.$eval("#compare-slider", s => { s.value = 20; s.dispatchEvent(new Event("input")); });
  seen.compare = await again.evaluate(() => ({
    before: document.getElementById("compare-before").naturalWidth,
    after: document.getElementById("compare-after").naturalWidth,
    clip: document.getElementById("compare-after").style.clipPath,
    shown: document.getElementById("compare-after").getBoundingClientRect().width,
  }));
  await again.screenshot({ path: `${shots}/ui-compare.png` });
  await again.click("#compare-close");
  seen.compareClosed = (await again.$("#compare")) === null;

  // The recent jobs list on /ui, and the API reader on /docs.
  await again.goto(base + "/ui");
  await again.waitForSelector("#recent a");
  seen.recent = await again.$$eval("#recent a", as => as.map(a => [a.getAttribute("href"), a.querySelector(".status").textContent]));
  await again.waitForFunction(() => [...document.querySelectorAll("#recent .facts")].every(f => f.textContent.includes("turn")));
  seen.cards = await again.$$eval("#recent a", as => as.map(a => ({
    facts: a.querySelector(".facts").textContent,
    fit: getComputedStyle(a.querySelector("img")).objectFit,
  })));
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
  await again.waitForSelector("#failed-attempts");
  seen.failedCode = await again.textContent("#failed-code");
  seen.failedMessage = await again.textContent("#failed-message");
  seen.failedAttempts = await again.textContent("#failed-attempts");
  seen.failedChartHidden = await again.$eval("#chart-title", h => h.hidden);
} catch (e) {
  errors.push("script: " + (e && e.stack || e));
} finally {
  await report(browser, seen, errors);
}
