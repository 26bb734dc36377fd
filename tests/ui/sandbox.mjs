// The README's quick start in Debian's Chromium: the viewer of
// `editthinker serve --sandbox`, an image dropped in, "make the sky
// purple", Edit, and the job watched to its end. Prints what it saw as one
// JSON line for tests/e2e/viewer.rs. Arguments: base URL, image file,
// instruction, screenshot folder.
import { launch, report, watchedPage } from "./browser.mjs";

const [base, image, instruction, shots] = process.argv.slice(2);
const { browser, context } = await launch();
const errors = [];
const seen = {};
const page = await watchedPage(context, errors);

try {
  await page.goto(base + "/ui");
  await page.waitForSelector("#submit-form");
  seen.editors = await page.$$eval("#editor option", os => os.map(o => o.textContent));
  await page.setInputFiles("#image", image);
  await page.fill("#instruction", instruction);
  const started = Date.now();
  await page.click("#submit");
  await page.waitForURL(/\/ui\/jobs\/[^/]+$/);
  // The reasoning streams into turn 1's card before its scores arrive.
  await page.waitForFunction(() => {
    const card = document.querySelector('[data-turn="1"]');
    return card && !card.querySelector(".overall") && card.querySelector(".reasoning").textContent.length > 20;
  }, null, { timeout: 30000 });
  seen.liveReasoning = await page.textContent('[data-turn="1"] .reasoning');
  await page.waitForSelector("#selected", { timeout: 60000 });
  seen.secondsToFinished = (Date.now() - started) / 1000;
  seen.status = await page.textContent("#status");
  seen.turns = await page.$$eval(".turn", ts => ts.length);
  seen.selectedTurn = await page.$eval(".turn.selected", t => t.dataset.turn);
  seen.badge = await page.textContent("[data-sandbox]");
  seen.badgeTitle = await page.getAttribute("[data-sandbox]", "title");
  seen.why = await page.textContent("#why-selected");
  await page.screenshot({ path: `${shots}/ui-sandbox.png`, fullPage: true });
  await page.goto(base + "/ui");
  await page.waitForSelector("#recent a");
  seen.cardBadges = await page.$$eval("#recent a [data-sandbox]", bs => bs.length);
} catch (e) {
  errors.push("script: " + (e && e.stack || e));
} finally {
  await report(browser, seen, errors);
}
