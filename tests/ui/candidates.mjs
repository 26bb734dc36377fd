// A turn of three candidates in the viewer of `editthinker serve
// --sandbox`: the form's candidates field, the strip filling live (a tile
// per edited candidate, its own reasoning while it streams), the chosen one
// marked with every candidate's scores, and the same strip after a reload
// (the stream replays). Prints what it saw as one JSON line for
// tests/e2e/viewer.rs. Arguments: base URL, image file, screenshot folder,
// and "verifier" to rank the candidates by the verifier.
import { launch, report, watchedPage } from "./browser.mjs";

const [base, image, shots, rankBy] = process.argv.slice(2);
const { browser, context } = await launch();
const errors = [];
const seen = {};
const page = await watchedPage(context, errors);

// Turn 1's strip as a person reads it, tile by tile.
const strip = () => page.$$eval('[data-turn="1"] .candidate', tiles => tiles.map(t => ({
  candidate: t.dataset.candidate,
  chosen: t.classList.contains("chosen"),
  label: t.querySelector(".candidate-label").textContent,
  scores: t.querySelector(".candidate-scores").textContent,
  imageLoaded: t.querySelector("img").naturalWidth > 0,
})));
// Everything the job read about its candidates: every tile has its seed.
const settled = () => page.waitForFunction(() => {
  const tiles = [...document.querySelectorAll('[data-turn="1"] .candidate')];
  return tiles.length > 1 && tiles.every(t => t.querySelector(".seed") && t.querySelector("img").naturalWidth > 0);
}, null, { timeout: 30000 });

try {
  await page.goto(base + "/ui");
  await page.waitForSelector("#submit-form");
  seen.candidatesDefault = await page.inputValue("#candidates");
  await page.setInputFiles("#image", image);
  await page.fill("#instruction", "make the sky purple");
  await page.fill("#max-turns", "1");
  await page.fill("#candidates", "3");
  if (rankBy) await page.selectOption("#rank-by", rankBy);
  await page.click("#submit");
  await page.waitForURL(/\/ui\/jobs\/[^/]+$/);
  // Live: tiles and their reasoning before the turn has chosen.
  await page.waitForFunction(() => {
    const reasoning = [...document.querySelectorAll('[data-turn="1"] .candidate-reasoning')];
    return !document.querySelector(".candidate.chosen") && reasoning.some(r => r.textContent.length > 20);
  }, null, { timeout: 30000 });
  seen.liveTiles = (await strip()).length;
  seen.liveTurnScores = await page.textContent('[data-turn="1"] .scores');
  await page.waitForSelector("#selected", { timeout: 60000 });
  await settled();
  seen.status = await page.textContent("#status");
  seen.turns = await page.$$eval(".turn", ts => ts.length);
  seen.meta = await page.textContent("#job-meta");
  seen.strip = await strip();
  seen.turnScores = await page.textContent('[data-turn="1"] .scores');
  seen.turnImageLoaded = await page.$eval('[data-turn="1"] > img', i => !i.hidden && i.naturalWidth > 0);
  seen.chartPoints = await page.$eval('svg.chart polyline[data-series="overall"]', l => l.getAttribute("points").split(" ").length);
  await page.screenshot({ path: `${shots}/ui-candidates.png`, fullPage: true });
  // A candidate opens large like a turn.
  await page.click('[data-turn="1"] .candidate[data-candidate="2"] img');
  await page.waitForSelector("#compare");
  seen.compareTitle = await page.textContent("#compare strong");
  await page.click("#compare-close");
  // The finished job after a reload: the stream replays the same strip.
  await page.reload();
  await page.waitForSelector("#selected", { timeout: 30000 });
  await settled();
  seen.replayedStrip = await strip();
} catch (e) {
  errors.push("script: " + (e && e.stack || e));
} finally {
  await report(browser, seen, errors);
}
