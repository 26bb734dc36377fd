// Parts that need no service: the SSE parser, webhook verification against
// signatures made here, and the retry rules with a fake fetch.
import assert from "node:assert/strict";
import { createHmac, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";

import { EditThinker, EditThinkerError, EditThinkerTimeoutError, WebhookVerificationError, webhooks } from "../dist/index.js";
import { SseParser } from "../dist/sse.js";

describe("SseParser", () => {
  const text =
    "\uFEFF: keep-alive\n" +
    "id: 7\nevent: job.queued\ndata: {\"a\":1}\n\n" +
    "event: turn.thinking\r\ndata: one\r\ndata:two\r\n\r\n" +
    "id: 8\revent: job.succeeded\rdata: {}\r\r" +
    "id: 9\nevent: job.failed\ndata: {\"cut\""; // unterminated: never dispatched
  const expected = [
    { id: "7", event: "job.queued", data: '{"a":1}' },
    { id: null, event: "turn.thinking", data: "one\ntwo" },
    { id: "8", event: "job.succeeded", data: "{}" },
  ];

  test("parses ids, comments, multi-line data and every line ending", () => {
    assert.deepEqual(new SseParser().push(text), expected);
  });

  test("gives the same events however the text is split", () => {
    for (let cut = 0; cut <= text.length; cut++) {
      const parser = new SseParser();
      const events = [...parser.push(text.slice(0, cut)), ...parser.push(text.slice(cut))];
      assert.deepEqual(events, expected, `split at ${cut}`);
    }
    const parser = new SseParser();
    assert.deepEqual([...text].flatMap((c) => parser.push(c)), expected);
  });
});

describe("webhooks.verify", () => {
  const key = randomBytes(32);
  const secret = `whsec_${key.toString("base64")}`;
  const body = JSON.stringify({ type: "job.succeeded", timestamp: "2026-01-01T00:00:00Z", data: { job_id: "j" } });
  const now = 1_767_225_600;
  const sign = (id, ts, payload, k = key) => createHmac("sha256", k).update(`${id}.${ts}.${payload}`).digest("base64");
  const headers = (sig, ts = now) => ({ "webhook-id": "msg_1", "webhook-timestamp": String(ts), "webhook-signature": sig });
  const at = { now: new Date(now * 1000) };

  test("accepts a good signature among several, from a plain object or Headers", async () => {
    const sig = `v1,${sign("msg_1", now, body, randomBytes(32))} v1,${sign("msg_1", now, body)}`;
    assert.equal((await webhooks.verify(headers(sig), body, secret, at)).type, "job.succeeded");
    assert.equal((await webhooks.verify(new Headers(headers(sig)), new TextEncoder().encode(body), secret, at)).data.job_id, "j");
    // A secret without the prefix is the same key.
    await webhooks.verify(headers(sig), body, key.toString("base64"), at);
  });

  test("rejects a tampered body, a wrong secret, stale or future timestamps, missing headers", async () => {
    const sig = `v1,${sign("msg_1", now, body)}`;
    const reject = (promise, message) => assert.rejects(promise, (e) => e instanceof WebhookVerificationError && message.test(e.message));
    await reject(webhooks.verify(headers(sig), body.replace("succeeded", "failed"), secret, at), /no signature/);
    await reject(webhooks.verify(headers(sig), body, `whsec_${randomBytes(32).toString("base64")}`, at), /no signature/);
    await reject(webhooks.verify(headers(`v2,${sign("msg_1", now, body)}`), body, secret, at), /no signature/);
    await reject(webhooks.verify(headers(sig), body, secret, { now: (now + 301) * 1000 }), /too old/);
    await reject(webhooks.verify(headers(sig), body, secret, { now: (now - 301) * 1000 }), /future/);
    await webhooks.verify(headers(sig), body, secret, { now: (now + 20) * 1000, toleranceSeconds: 30 });
    await reject(webhooks.verify({ "webhook-id": "msg_1" }, body, secret, at), /missing/);
  });
});

/** A fetch that answers from a list and records each request. */
function fakeFetch(answers) {
  const calls = [];
  const fn = async (url, init) => {
    calls.push({ url: String(url), method: init?.method ?? "GET", headers: new Headers(init?.headers), body: init?.body });
    const next = answers.shift();
    if (next === undefined) throw new Error("no more answers");
    if (next instanceof Error) throw next;
    return typeof next === "function" ? next(init) : next;
  };
  return { fn, calls };
}
const problem = (status, code, extra = {}) =>
  new Response(JSON.stringify({ type: "t", title: "T", status, detail: `d ${code}`, code, ...extra }), {
    status,
    headers: { "content-type": "application/problem+json", ...(extra.headers ?? {}) },
  });
const job = (status = "queued") => new Response(JSON.stringify({ id: "job-1", status }), { status: 202 });

describe("requests and retries (fake fetch)", () => {
  test("429 with Retry-After is retried, then the error surfaces with its fields", async () => {
    const { fn, calls } = fakeFetch([problem(429, "rate_limited", { headers: { "retry-after": "0" } }), new Response('{"id":"job-1"}')]);
    const client = new EditThinker({ baseUrl: "http://x/", fetch: fn, apiKey: "et_k", headers: { "X-Tenant": "t" } });
    assert.equal((await client.get("job-1")).id, "job-1");
    assert.equal(calls.length, 2);
    assert.equal(calls[0].url, "http://x/v1/jobs/job-1");
    assert.equal(calls[0].headers.get("authorization"), "Bearer et_k");
    assert.equal(calls[0].headers.get("x-tenant"), "t");

    const three = fakeFetch([0, 1, 2].map(() => problem(503, "not_configured", { headers: { "retry-after": "0" } })));
    const err = await new EditThinker({ baseUrl: "http://x", fetch: three.fn }).get("j").catch((e) => e);
    assert.ok(err instanceof EditThinkerError);
    assert.equal(three.calls.length, 3); // bounded
    assert.deepEqual([err.status, err.code, err.retryAfter], [503, "not_configured", 0]);
  });

  test("create is retried with the same Idempotency-Key; the generated key is returned", async () => {
    const { fn, calls } = fakeFetch([new TypeError("fetch failed"), problem(503, "internal"), job()]);
    const result = await new EditThinker({ baseUrl: "http://x", fetch: fn }).create(new Uint8Array([1, 2, 3]), "go", { maxTurns: 2, metadata: { a: 1 } });
    assert.equal(calls.length, 3);
    const keys = calls.map((c) => c.headers.get("idempotency-key"));
    assert.match(result.idempotencyKey, /^[0-9a-f-]{36}$/);
    assert.deepEqual(keys, [result.idempotencyKey, result.idempotencyKey, result.idempotencyKey]);
    const form = calls[0].body;
    assert.ok(form instanceof FormData);
    assert.equal(form.get("instruction"), "go");
    assert.equal(form.get("options"), '{"max_turns":2}');
    assert.equal(form.get("metadata"), '{"a":1}');
    assert.equal(form.get("editor"), null);
    assert.equal((await form.get("image").arrayBuffer()).byteLength, 3);
    assert.equal(result.replayed, false);
  });

  test("URLs and data: URLs go as JSON; waitSeconds sends Prefer", async () => {
    const { fn, calls } = fakeFetch([job(), job()]);
    const client = new EditThinker({ baseUrl: "http://x", fetch: fn });
    await client.create("https://example.com/cat.png", "go", { idempotencyKey: "k1", waitSeconds: 5, priority: 2 });
    await client.create("data:image/png;base64,AAAA", "go");
    assert.equal(calls[0].headers.get("content-type"), "application/json");
    assert.equal(calls[0].headers.get("prefer"), "wait=5");
    assert.equal(calls[0].headers.get("idempotency-key"), "k1");
    assert.deepEqual(JSON.parse(calls[0].body), { image: { url: "https://example.com/cat.png" }, instruction: "go", priority: 2 });
    assert.deepEqual(JSON.parse(calls[1].body).image, { base64: "data:image/png;base64,AAAA" });
  });

  test("retry() is never retried on 503 or a lost connection; cancel() is", async () => {
    const once = fakeFetch([problem(503, "internal")]);
    await assert.rejects(new EditThinker({ baseUrl: "http://x", fetch: once.fn }).retry("j"), EditThinkerError);
    assert.equal(once.calls.length, 1);
    const lost = fakeFetch([new TypeError("fetch failed")]);
    await assert.rejects(new EditThinker({ baseUrl: "http://x", fetch: lost.fn }).retry("j"), TypeError);
    const cancel = fakeFetch([problem(503, "internal", { headers: { "retry-after": "0" } }), job("canceled")]);
    assert.equal((await new EditThinker({ baseUrl: "http://x", fetch: cancel.fn }).cancel("j")).status, "canceled");
    assert.equal(cancel.calls[1].url, "http://x/v1/jobs/j/cancel");
  });

  test("a body that is not a problem still gives an EditThinkerError", async () => {
    const { fn } = fakeFetch([new Response("<html>bad gateway</html>", { status: 502, statusText: "Bad Gateway" })]);
    const err = await new EditThinker({ baseUrl: "http://x", fetch: fn }).get("j").catch((e) => e);
    assert.deepEqual([err.status, err.code, err.field], [502, "http_502", null]);
  });

  test("a request over timeoutMs throws EditThinkerTimeoutError", async () => {
    const hang = (_url, init) => new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason)));
    const err = await new EditThinker({ baseUrl: "http://x", fetch: hang, timeoutMs: 50 }).get("j").catch((e) => e);
    assert.ok(err instanceof EditThinkerTimeoutError, String(err));
  });
});

test("the package has no runtime dependencies", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.peerDependencies, undefined);
});
