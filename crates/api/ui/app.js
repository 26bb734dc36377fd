// The EditThinker web viewer: /ui (submit, recent jobs) and /ui/jobs/{id}
// (every turn, live). Plain JavaScript, no dependencies, served from the
// binary. The server renders the relative way back to its root
// (the page's data-root); every URL is built from it, so the viewer works under
// a gateway's path prefix.
"use strict";

const BASE = new URL((document.documentElement.dataset.root || ".") + "/", location.href).pathname.replace(/\/$/, "");
const KEY_STORAGE = "editthinker.key";
const app = document.getElementById("app");

// ---- API -------------------------------------------------------------------

class Unauthorized extends Error {}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, options) {
  options = options || {};
  const response = await fetch(BASE + path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (response.status === 401) throw new Unauthorized();
  if (!response.ok) {
    let problem = {};
    try { problem = await response.json(); } catch (_) {}
    throw new Error((problem.code || response.status) + ": " + (problem.detail || response.statusText));
  }
  return response;
}

async function json(path, options) {
  return (await api(path, options)).json();
}

// Image routes need the key too, so images are fetched and shown as blobs.
const blobs = new Map();
async function imageUrl(path) {
  if (!blobs.has(path)) {
    blobs.set(path, api(path).then(r => r.blob()).then(b => URL.createObjectURL(b)));
  }
  return blobs.get(path);
}

function setImage(img, path) {
  imageUrl(path).then(url => { img.src = url; }).catch(() => { img.alt = "image unavailable"; });
}

// A job's events over fetch (EventSource cannot send a key), resumed with
// Last-Event-ID when the connection drops (or after `after`). Calls
// onEvent(kind, data, id).
async function streamEvents(id, onEvent, isDone, after) {
  let last = after === undefined ? null : after;
  for (let failures = 0; failures < 30 && !isDone(); ) {
    const h = { Accept: "text/event-stream" };
    if (last !== null) h["Last-Event-ID"] = String(last);
    let response;
    try {
      response = await fetch(BASE + "/v1/jobs/" + id + "/events", { headers: headers(h) });
    } catch (_) {
      failures++;
      await sleep(500 * failures);
      continue;
    }
    if (response.status === 401) throw new Unauthorized();
    if (response.status === 204) return;
    if (!response.ok) throw new Error("events: " + response.status);
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        failures = 0;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let kind = "message", data = "", eventId = null;
          for (const line of block.split("\n")) {
            const colon = line.indexOf(":");
            if (colon <= 0) continue;
            const field = line.slice(0, colon), value = line.slice(colon + 1).replace(/^ /, "");
            if (field === "id") eventId = Number(value);
            else if (field === "event") kind = value;
            else if (field === "data") data += (data ? "\n" : "") + value;
          }
          if (!data) continue;
          if (eventId !== null) last = eventId;
          onEvent(kind, JSON.parse(data), eventId);
        }
      }
    } catch (_) {
      // The connection broke: resume after the last event.
    }
    if (isDone()) return;
    failures++;
    await sleep(300 * failures);
  }
}

function sleep(ms) { return new Promise(r => setTimeout(r, ms)); }

// ---- helpers -------------------------------------------------------------------

// Bidirectional embedding, override and isolate controls: in client or
// model text they can make an instruction read differently from what the
// editor got (issue 20, finding 11), so the viewer never shows them.
const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;
function plain(text) { return String(text).replace(BIDI_CONTROLS, ""); }

// Every text node goes through plain().
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(plain(child)));
  }
  return node;
}

function fmt(score) {
  if (score === null || score === undefined) return "–";
  return Number.isInteger(score) ? String(score) : score.toFixed(2);
}

// The instruction with the words that are new since the previous one marked.
function diffInstruction(previous, current) {
  const node = el("span", { class: "instruction", dir: "auto" });
  current = plain(current);
  previous = previous === null ? null : plain(previous);
  const before = new Set((previous || "").toLowerCase().split(/\s+/).filter(Boolean));
  current.split(/(\s+)/).forEach(part => {
    if (/^\s+$/.test(part) || !part) node.append(part);
    else if (previous !== null && !before.has(part.toLowerCase())) node.append(el("ins", {}, part));
    else node.append(part);
  });
  return node;
}

// "4.2 s", "3 min 5 s": how long between two ISO times (null when one is missing).
/** A job's usage ledger in a few words: calls, tokens and cost. */
function usageText(u) {
  if (!u) return "";
  const calls = u.editor_calls + (u.editor_calls === 1 ? " edit, " : " edits, ") +
    u.thinker_calls + (u.thinker_calls === 1 ? " critique" : " critiques") +
    (u.verifier_calls > 0 ? ", " + u.verifier_calls + " verifier " + (u.verifier_calls === 1 ? "call" : "calls") : "");
  const tokens = u.thinker_input_tokens + u.thinker_output_tokens;
  const cost = u.cost > 0 ? ", " + u.cost.toFixed(4) + " " + u.currency : "";
  return "usage: " + calls + " (" + tokens + " tokens" + cost + ")";
}

function took(from, to) {
  if (!from || !to) return null;
  const s = Math.max(0, (Date.parse(to) - Date.parse(from)) / 1000);
  return s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
}

// What a failed job's code means, for a person; the raw message stays
// available under it.
const FAILURE_TEXT = {
  editor_unavailable: "The editor could not be reached, or kept failing, on every attempt.",
  editor_refused: "The editor refused the instruction (moderation or safety).",
  editor_invalid: "The editor rejected the request as invalid.",
  editor_auth: "The editor rejected the service's credentials: an operator must fix the key.",
  editor_ambiguous: "An edit's outcome was unknown (a timeout after it was sent), and the job ran out of attempts.",
  thinker_unavailable: "The thinker could not be reached, or kept failing, on every attempt.",
  thinker_auth: "The thinker rejected the service's credentials: an operator must fix the key.",
  thinker_invalid: "The thinker rejected the request: its configuration needs fixing.",
  deadline_exceeded: "The job's deadline passed before any turn was recorded.",
  budget_exhausted: "The job's budget left no room for even one edit.",
  verifier_unavailable: "The verifier could not be reached, or kept failing, on every attempt.",
  verifier_invalid: "The verifier rejected the request or answered without a score, or the job asks for a verifier the service lacks.",
  unknown_editor: "No worker knows this job's editor.",
};

// The API's own defaults (the OpenAPI document), so the form never
// disagrees with a job created without options.
async function apiDefaults() {
  try {
    const doc = await (await fetch(BASE + "/openapi.json")).json();
    const options = doc.components.schemas.JobOptions.properties;
    const candidates = options.candidates || {};
    return { maxTurns: options.max_turns["x-server-default"], candidates: candidates["x-server-default"] ?? candidates.default };
  } catch (_) {
    return {};
  }
}

function showError(error) {
  if (error instanceof Unauthorized) return askForKey();
  app.replaceChildren(el("p", { class: "error" }, String(error.message || error)));
}

// With authentication on, the page asks for a key and keeps it in this
// tab's session storage only.
function askForKey() {
  const input = el("input", { type: "password", id: "api-key", placeholder: "et_…", size: 50 });
  app.replaceChildren(el("form", {
    class: "card submit", id: "key-form",
    onsubmit: e => { e.preventDefault(); sessionStorage.setItem(KEY_STORAGE, input.value.trim()); route(); },
  }, el("h1", {}, "API key"), el("p", { class: "muted" }, "This service needs a key. It is kept in this tab only."),
    input, el("div", {}, el("button", { type: "submit" }, "Use key"))));
}

// ---- /ui ---------------------------------------------------------------------------

// Everything a sandbox provider made is labelled (docs/api.md "Sandbox").
function sandboxBadge(job) {
  if (!job.sandbox) return "";
  return el("span", {
    class: "badge sandbox", "data-sandbox": "",
    title: "Made by the sandbox providers (test mode): the edits and critiques are made up",
  }, "sandbox");
}

async function home() {
  const editors = (await json("/v1/editors")).editors;
  const list = await json("/v1/jobs?limit=24");
  const defaults = await apiDefaults();
  let file = null;
  const preview = el("img", { hidden: "" });
  const fileInput = el("input", { type: "file", id: "image", accept: "image/*", hidden: "" });
  const drop = el("div", { class: "drop", id: "drop", onclick: () => fileInput.click() },
    "Drop an image here, or click to choose one", preview);
  const choose = f => { file = f; preview.hidden = false; preview.src = URL.createObjectURL(f); };
  fileInput.addEventListener("change", () => fileInput.files[0] && choose(fileInput.files[0]));
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", e => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) choose(e.dataTransfer.files[0]);
  });
  const instruction = el("textarea", { id: "instruction", placeholder: "What should change?", required: "" });
  const editor = el("select", { id: "editor" }, ...editors.map(e =>
    el("option", { value: e.name, selected: e.default ? "" : null }, e.name + " (" + e.kind + ")")));
  const maxTurns = el("input", { id: "max-turns", type: "number", min: 1, max: 10, value: defaults.maxTurns ?? "" });
  const selection = el("select", { id: "selection" }, el("option", { value: "best" }, "best"), el("option", { value: "last" }, "last"));
  // Candidates edited per turn, and which score picks one (the verifier
  // needs a [verifier] on the service).
  const candidates = el("input", { id: "candidates", type: "number", min: 1, max: 8, value: defaults.candidates ?? 1 });
  const rankBy = el("select", { id: "rank-by" }, el("option", { value: "thinker" }, "thinker"), el("option", { value: "verifier" }, "verifier"));
  const message = el("p", { class: "error", id: "submit-error" });
  const form = el("form", {
    class: "card submit", id: "submit-form",
    onsubmit: async e => {
      e.preventDefault();
      if (!file) { message.textContent = "Choose an image first."; return; }
      const body = new FormData();
      body.append("image", file, file.name);
      body.append("instruction", instruction.value);
      body.append("editor", editor.value);
      const options = { selection: selection.value };
      if (maxTurns.value) options.max_turns = Number(maxTurns.value);
      if (candidates.value && Number(candidates.value) !== 1) options.candidates = Number(candidates.value);
      if (rankBy.value !== "thinker") options.rank_by = rankBy.value;
      body.append("options", JSON.stringify(options));
      try {
        const job = await json("/v1/jobs", { method: "POST", body });
        history.pushState({}, "", BASE + "/ui/jobs/" + job.id);
        route();
      } catch (error) {
        if (error instanceof Unauthorized) return askForKey();
        message.textContent = error.message;
      }
    },
  }, el("h1", {}, "New job"), drop, fileInput, instruction,
    el("div", { class: "row" }, el("label", {}, "Editor ", editor), el("label", {}, "Max turns ", maxTurns),
      el("label", {}, "Selection ", selection)),
    el("div", { class: "row" }, el("label", {}, "Candidates per turn ", candidates), el("label", {}, "Ranked by ", rankBy)),
    el("div", {}, el("button", { type: "submit", id: "submit" }, "Edit")), message);
  const jobs = el("div", { class: "jobs", id: "recent" }, ...list.jobs.map(job => {
    const img = el("img", { class: "thumb", alt: "" });
    setImage(img, job.status === "succeeded" ? "/v1/jobs/" + job.id + "/result" : "/v1/jobs/" + job.id + "/source");
    const facts = el("div", { class: "muted facts" }, job.editor);
    // The listing has no turns: each card reads its job for the count and
    // the best score.
    json("/v1/jobs/" + job.id).then(full => {
      const parts = [full.editor];
      const time = took(full.created_at, full.finished_at);
      if (time) parts.push(time);
      parts.push(full.turns.length + (full.turns.length === 1 ? " turn" : " turns"));
      const scores = full.turns.map(t => t.critique && t.critique.overall).filter(v => typeof v === "number");
      if (scores.length) parts.push("best " + fmt(Math.max(...scores)));
      facts.textContent = parts.join(" · ");
    }).catch(() => {});
    return el("a", { href: BASE + "/ui/jobs/" + job.id, class: "card", "data-job": job.id }, img,
      el("div", {}, el("span", { class: "status " + job.status }, job.status), " ", sandboxBadge(job)),
      el("div", { dir: "auto" }, job.instruction), facts);
  }));
  app.replaceChildren(form, el("h2", {}, "Recent jobs"), list.jobs.length ? jobs : el("p", { class: "muted" }, "No jobs yet."));
}

// ---- /ui/jobs/{id} ---------------------------------------------------------------

async function jobPage(id) {
  const job = await json("/v1/jobs/" + id);
  const state = { turns: new Map(), status: job.status, done: false, result: null, last: null, failures: 0 };
  const statusBadge = el("span", { class: "status " + job.status, id: "status" }, job.status);
  const sourceImg = el("img", { alt: "source", class: "zoomable", onclick: () => compare(null) });
  setImage(sourceImg, "/v1/jobs/" + id + "/source");
  const grid = el("div", { class: "turns", id: "turns" },
    el("div", { class: "card source" }, el("h2", {}, "Source"), sourceImg, el("p", { dir: "auto" }, job.instruction)));
  const chart = el("div", { id: "chart" });
  const download = el("a", { id: "download", hidden: "", download: "editthinker-" + id + ".png" }, el("button", { type: "button" }, "Download result"));
  const cancel = el("button", {
    class: "secondary", id: "cancel", type: "button",
    onclick: async () => { try { await api("/v1/jobs/" + id + "/cancel", { method: "POST" }); } catch (e) { info.textContent = e.message; } },
  }, "Cancel");
  const info = el("p", { class: "muted", id: "info" });
  // A failed job can be queued again; it resumes after its last turn and
  // its new events follow on the same page.
  const retry = el("button", {
    class: "secondary", id: "retry", type: "button", hidden: "",
    onclick: async () => {
      try {
        await api("/v1/jobs/" + id + "/retry", { method: "POST" });
        retry.hidden = true;
        info.textContent = "Queued again";
        state.done = false;
        await streamEvents(id, onEvent, () => state.done, state.last);
      } catch (e) {
        if (e instanceof Unauthorized) return askForKey();
        info.textContent = e.message;
      }
    },
  }, "Retry");
  const meta = el("p", { class: "muted", id: "job-meta" });
  const showMeta = j => {
    const parts = ["job " + id, "editor " + j.editor, "max " + j.options.max_turns + " turns"];
    const queued = took(j.created_at, j.started_at);
    const ran = took(j.started_at, j.finished_at);
    if (queued) parts.push("queued " + queued);
    if (ran) parts.push("ran " + ran);
    if (j.attempt > 1) parts.push(j.attempt + " attempts");
    const k = j.options.candidates || 1, first = j.options.first_turn_candidates;
    if (k > 1 || first > 1) {
      parts.push(k + " candidates a turn" + (first && first !== k ? " (" + first + " on turn 1)" : "") +
        ", ranked by the " + (j.options.rank_by || "thinker"));
    }
    parts.push(usageText(j.usage));
    meta.textContent = parts.join(" · ");
  };
  showMeta(job);
  const why = el("p", { id: "why-selected" });
  const chartTitle = el("h2", { id: "chart-title", hidden: "" }, "Scores per turn");
  app.replaceChildren(
    el("h1", { id: "job-title", dir: "auto" }, plain(job.instruction)),
    el("div", { class: "row" }, statusBadge, sandboxBadge(job)), meta,
    el("div", { class: "row" }, download, cancel, retry), info, why, grid, chartTitle, chart);
  document.title = plain(job.instruction) + " · EditThinker";

  const card = n => {
    if (!state.turns.has(n)) {
      const t = {
        n, instruction: null, critique: null, strip: null, tiles: new Map(), shown: false,
        img: el("img", { alt: "turn " + n, class: "zoomable", onclick: () => compare(n) }),
        head: el("h2", {}, "Turn " + n, " "),
        text: el("p", {}),
        scores: el("div", { class: "scores" }),
        reasoning: el("div", { class: "reasoning" }),
      };
      t.node = el("div", { class: "card turn", "data-turn": n }, t.head, t.img, t.text, t.scores, t.reasoning);
      state.turns.set(n, t);
      grid.append(t.node);
    }
    return state.turns.get(n);
  };
  const redrawInstructions = () => {
    let previous = job.instruction;
    [...state.turns.values()].sort((a, b) => a.n - b.n).forEach(t => {
      if (t.instruction === null) return;
      t.text.replaceChildren(diffInstruction(t.n === 1 ? null : previous, t.instruction));
      previous = t.instruction;
    });
  };
  const setStatus = s => {
    state.status = s;
    statusBadge.textContent = s;
    statusBadge.className = "status " + s;
    cancel.hidden = ["succeeded", "failed", "canceled"].includes(s);
    retry.hidden = s !== "failed";
  };
  const finish = data => {
    state.done = true;
    json("/v1/jobs/" + id).then(showMeta).catch(() => {});
    if (state.status === "succeeded") {
      const n = data.result_turn;
      if (n && state.turns.has(n)) {
        const t = state.turns.get(n);
        t.node.classList.add("selected");
        t.head.append(el("span", { class: "badge", id: "selected" }, "selected"));
        why.textContent = whySelected(n, job.options.selection, [...state.turns.values()]);
      }
      imageUrl("/v1/jobs/" + id + "/result").then(url => { download.href = url; download.hidden = false; });
      info.textContent = "Stopped: " + (data.stop_reason || "");
    }
  };
  // Full size, with a slider that wipes between the source and turn `n`
  // (n null: the source alone), or candidate `c` of turn `n`.
  const compare = async (n, c) => {
    const src = await imageUrl("/v1/jobs/" + id + "/source");
    const name = n === null ? "source" : "turn " + n + (c === undefined ? "" : " candidate " + c);
    const after = n === null ? src : await imageUrl(c === undefined ? "/v1/jobs/" + id + "/turns/" + n + "/image" : candidatePath(n, c));
    const top = el("img", { src: after, alt: name, id: "compare-after" });
    const under = el("img", { src, alt: "source", id: "compare-before" });
    const slider = el("input", { type: "range", min: 0, max: 100, value: 50, id: "compare-slider" });
    const wipe = () => { top.style.clipPath = "inset(0 0 0 " + slider.value + "%)"; };
    slider.addEventListener("input", wipe);
    wipe();
    const overlay = el("div", { class: "overlay", id: "compare", onclick: e => { if (e.target === overlay) overlay.remove(); } },
      el("div", { class: "compare-box" },
        el("div", { class: "row" }, el("strong", {}, n === null ? "Source" : "Source ◀ ▶ " + name),
          el("button", { type: "button", class: "secondary", id: "compare-close", onclick: () => overlay.remove() }, "Close")),
        el("div", { class: "compare-stage" }, under, top), slider));
    document.body.append(overlay);
  };

  // ---- a turn's candidates: a strip of tiles under the turn ----
  // A turn is one candidate (shown as always) unless the job's options
  // edit several or a second one shows up. Each tile has its image, its
  // scores, and its own reasoning while it streams (never mixed with the
  // other candidates'); the turn itself shows the chosen one's.
  const candidatePath = (n, c) => "/v1/jobs/" + id + "/turns/" + n + "/candidates/" + c + "/image";
  const candidatesFor = n => (n === 1 && job.options.first_turn_candidates) || job.options.candidates || 1;
  const several = (t, c) => c > 0 || t.strip !== null || candidatesFor(t.n) > 1;
  const tile = (t, c) => {
    if (!t.strip) {
      t.strip = el("div", { class: "candidates", "data-candidates": "" });
      t.node.append(t.strip);
      t.img.hidden = true;
      // Shown as a one-candidate turn until a second candidate came: the
      // turn so far is candidate 0.
      if (t.shown) {
        const first = tile(t, 0);
        setImage(first.img, candidatePath(t.n, 0));
        first.critique = t.critique;
        showTile(first);
        t.critique = null;
        t.reasoning.textContent = "";
        drawChart(chart, [...state.turns.values()], job.options.stop);
      }
    }
    if (!t.tiles.has(c)) {
      const x = {
        c, raw: "", critique: null, seed: null, verifier: null,
        img: el("img", { alt: "turn " + t.n + " candidate " + c, class: "zoomable", onclick: () => compare(t.n, c) }),
        label: el("div", { class: "candidate-label" }, "candidate " + c, " "),
        scores: el("div", { class: "candidate-scores" }),
        reasoning: el("div", { class: "candidate-reasoning" }),
      };
      x.node = el("div", { class: "candidate", "data-candidate": c }, x.img, x.label, x.scores, x.reasoning);
      // In index order, whatever order they arrive in.
      const next = [...t.tiles.values()].filter(o => o.c > c).sort((a, b) => a.c - b.c)[0];
      t.strip.insertBefore(x.node, next ? next.node : null);
      t.tiles.set(c, x);
      showTile(x);
    }
    return t.tiles.get(c);
  };
  const showTile = x => {
    const c = x.critique;
    const scores = c ? [["semantic", c.semantic], ["quality", c.quality], ["overall", c.overall]]
      .map(([name, v]) => el("span", { "data-score": name }, name + " " + fmt(v))) : [el("span", { class: "muted" }, "thinking…")];
    x.scores.replaceChildren(x.seed === null || x.seed === undefined ? "" : el("span", { class: "seed" }, "seed " + x.seed),
      ...scores, x.verifier ? el("span", { "data-score": "verifier" }, "verifier " + fmt(x.verifier.overall)) : "");
  };
  // Until the turn chooses: how far its candidates are.
  const progress = t => {
    if (t.critique) return;
    const tiles = [...t.tiles.values()];
    const of = Math.max(candidatesFor(t.n), tiles.length);
    t.scores.replaceChildren(el("span", { class: "muted" },
      tiles.length + " of " + of + " candidates edited, " + tiles.filter(x => x.critique).length + " critiqued…"));
  };
  // The turn's scores: its one candidate's, or the chosen one's.
  const showScores = (t, c, by) => {
    t.critique = c;
    t.scores.replaceChildren(
      el("span", { class: "semantic" }, "semantic " + fmt(c.semantic)),
      el("span", { class: "quality" }, "quality " + fmt(c.quality)),
      el("strong", { class: "overall" }, "overall " + fmt(c.overall)),
      by ? el("span", { class: "muted chosen-by" }, "chosen by the " + by) : "");
    t.reasoning.textContent = plain(c.reasoning || t.reasoning.textContent);
    chartTitle.hidden = false;
    drawChart(chart, [...state.turns.values()], job.options.stop);
  };
  // The seeds and verifier scores are in the job, not the events: read
  // once the turns chosen in a burst (a replay) have all arrived.
  let reading = null;
  const readCandidates = () => {
    if (reading) return;
    reading = sleep(200).then(() => { reading = null; return json("/v1/jobs/" + id); }).then(j => {
      for (const turn of j.turns) {
        const t = state.turns.get(turn.index);
        if (!t || !t.strip || turn.candidates.length < 2) continue;
        for (const read of turn.candidates) {
          const x = tile(t, read.index);
          Object.assign(x, { seed: read.seed, verifier: read.verifier, critique: x.critique || read.critique });
          showTile(x);
        }
      }
    }).catch(() => { reading = null; });
  };
  setStatus(job.status);

  const onEvent = (kind, data, eventId) => {
    if (eventId !== null && eventId !== undefined) state.last = eventId;
    switch (kind) {
      // A failed job retried goes on: its stream continues after job.failed.
      case "job.queued": state.done = false; setStatus("queued"); break;
      case "job.started": state.done = false; setStatus("running"); break;
      case "job.retrying": info.textContent = "Retrying (" + data.reason + ", " + (data.code || "-") + ")"; setStatus("queued"); break;
      case "turn.edited": {
        const t = card(data.turn);
        const c = data.candidate || 0;
        t.instruction = data.instruction;
        redrawInstructions();
        if (several(t, c)) {
          setImage(tile(t, c).img, candidatePath(data.turn, c));
          progress(t);
          break;
        }
        t.shown = true;
        setImage(t.img, "/v1/jobs/" + id + "/turns/" + data.turn + "/image");
        t.scores.replaceChildren(el("span", { class: "muted" }, "thinking…"));
        break;
      }
      case "turn.thinking": {
        const t = card(data.turn);
        const c = data.candidate || 0;
        // Each candidate's reasoning in its own tile.
        const into = several(t, c) ? tile(t, c) : t;
        if (!into.critique) {
          into.raw = (into.raw || "") + (data.delta || "");
          into.reasoning.textContent = readableReasoning(plain(into.raw));
        }
        break;
      }
      case "turn.critiqued": {
        const t = card(data.turn);
        const c = data.candidate || 0;
        if (several(t, c)) {
          const x = tile(t, c);
          x.critique = data.critique || {};
          x.verifier = data.verifier || x.critique.verifier || x.verifier;
          // The tile keeps its reasoning as a tooltip; the turn shows the
          // chosen one's.
          x.node.title = plain(x.critique.reasoning || x.reasoning.textContent);
          x.reasoning.textContent = "";
          showTile(x);
          progress(t);
          break;
        }
        showScores(t, data.critique || {});
        break;
      }
      case "turn.chosen": {
        const t = card(data.turn);
        // Chosen among one: the turn as shown.
        if (!t.strip) break;
        const x = tile(t, data.candidate);
        for (const other of t.tiles.values()) {
          other.node.classList.toggle("chosen", other === x);
          other.label.querySelectorAll(".chosen-badge").forEach(b => b.remove());
        }
        x.label.append(el("span", { class: "badge chosen-badge" }, "chosen"));
        t.img.hidden = false;
        setImage(t.img, "/v1/jobs/" + id + "/turns/" + data.turn + "/image");
        showScores(t, x.critique || {}, data.by);
        readCandidates();
        break;
      }
      case "job.succeeded": setStatus("succeeded"); finish(data); break;
      case "job.failed":
        state.failures++;
        statusBadge.dataset.failures = state.failures;
        setStatus("failed");
        info.replaceChildren(
          el("strong", { id: "failed-code" }, data.code), " ",
          FAILURE_TEXT[data.code] || "The job failed.",
          el("details", {}, el("summary", {}, "details"), el("code", { id: "failed-message" }, plain(data.message || ""))));
        json("/v1/jobs/" + id).then(j => {
          showMeta(j);
          info.append(el("span", { class: "muted", id: "failed-attempts" }, " After " + j.attempt + (j.attempt === 1 ? " attempt." : " attempts.")));
        }).catch(() => {});
        state.done = true;
        break;
      case "job.canceled": setStatus("canceled"); state.done = true; break;
    }
  };
  // The whole history first (a reload mid-job shows the same state), then live.
  await streamEvents(id, onEvent, () => state.done);
}

// A thinker's raw text as a person reads it: no <think> tags, and nothing
// from <score> on (the scores and the rewritten instruction show below).
function readableReasoning(raw) {
  const at = raw.toLowerCase().indexOf("<score>");
  return (at < 0 ? raw : raw.slice(0, at)).replace(/<\/?think>/gi, "").trim();
}

// One sentence on why turn `n` is the result, with the other turns' scores.
function whySelected(n, selection, turns) {
  const scored = turns.filter(t => t.critique && typeof t.critique.overall === "number").sort((a, b) => a.n - b.n);
  const chosen = turns.find(t => t.n === n);
  const others = scored.filter(t => t.n !== n).map(t => "turn " + t.n + " " + fmt(t.critique.overall));
  const rest = others.length ? " (" + others.join(", ") + ")" : "";
  if (selection !== "last" && chosen && chosen.critique && typeof chosen.critique.overall === "number") {
    return "Turn " + n + " is the result: the highest overall score, " + fmt(chosen.critique.overall) + rest + ".";
  }
  if (chosen && chosen.critique && chosen.critique.satisfied) {
    return "Turn " + n + " is the result: the thinker was satisfied with it" + rest + ".";
  }
  return "Turn " + n + " is the result: the last turn" + rest + ".";
}

// Semantic, quality and overall per turn, as an SVG line chart, with the
// job's stop thresholds dashed.
function drawChart(container, turns, stop) {
  turns = turns.filter(t => t.critique).sort((a, b) => a.n - b.n);
  const w = 520, h = 220, pad = 30;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("width", w);
  svg.setAttribute("height", h);
  const x = i => pad + (turns.length <= 1 ? (w - 2 * pad) / 2 : i * (w - 2 * pad) / (turns.length - 1));
  const y = v => h - pad - (v / 10) * (h - 2 * pad);
  for (let v = 0; v <= 10; v += 5) {
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: pad, x2: w - pad, y1: y(v), y2: y(v), stroke: "#dde1ea" }).forEach(([k, val]) => line.setAttribute(k, val));
    svg.append(line);
    const label = document.createElementNS(ns, "text");
    Object.entries({ x: 4, y: y(v) + 4, "font-size": 11, fill: "#6b7385" }).forEach(([k, val]) => label.setAttribute(k, val));
    label.textContent = v;
    svg.append(label);
  }
  const thresholds = stop ? [...new Set([stop.semantic, stop.quality])] : [];
  for (const v of thresholds) {
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: pad, x2: w - pad, y1: y(v), y2: y(v), stroke: "#c92a2a", "stroke-dasharray": "4 4", "data-threshold": v })
      .forEach(([k, val]) => line.setAttribute(k, val));
    svg.append(line);
    const label = document.createElementNS(ns, "text");
    Object.entries({ x: w - pad - 60, y: y(v) - 4, "font-size": 11, fill: "#c92a2a" }).forEach(([k, val]) => label.setAttribute(k, val));
    label.textContent = "stop at " + v;
    svg.append(label);
  }
  const series = [["semantic", "#3b5bdb"], ["quality", "#f08c00"], ["overall", "#2b8a3e"]];
  for (const [name, color] of series) {
    const points = turns.map((t, i) => [x(i), t.critique[name]]).filter(p => typeof p[1] === "number");
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.map(p => p[0] + "," + y(p[1])).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", 2);
    line.setAttribute("data-series", name);
    svg.append(line);
    for (const p of points) {
      const dot = document.createElementNS(ns, "circle");
      Object.entries({ cx: p[0], cy: y(p[1]), r: 3, fill: color }).forEach(([k, val]) => dot.setAttribute(k, val));
      svg.append(dot);
    }
  }
  turns.forEach((t, i) => {
    const label = document.createElementNS(ns, "text");
    Object.entries({ x: x(i) - 8, y: h - 8, "font-size": 11, fill: "#6b7385" }).forEach(([k, val]) => label.setAttribute(k, val));
    label.textContent = "turn " + t.n;
    svg.append(label);
  });
  const legend = el("div", { class: "legend" }, ...series.map(([name, color]) => {
    const item = el("span", {}, "● " + name);
    item.style.color = color;
    return item;
  }));
  container.replaceChildren(svg, legend);
}

// ---- routing -------------------------------------------------------------------------

function route() {
  const forget = document.getElementById("forget-key");
  forget.hidden = !sessionStorage.getItem(KEY_STORAGE);
  forget.onclick = () => { sessionStorage.removeItem(KEY_STORAGE); location.reload(); };
  const path = location.pathname.slice(BASE.length);
  const match = path.match(/^\/ui\/jobs\/([^/]+)$/);
  (match ? jobPage(decodeURIComponent(match[1])) : home()).catch(showError);
}

window.addEventListener("popstate", route);
route();
