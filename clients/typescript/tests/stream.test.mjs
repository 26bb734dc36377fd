// stream() (with a connection cut mid-job), run(), cancel(): against the
// real service in sandbox mode.
import assert from "node:assert/strict";
import { createServer, connect } from "node:net";
import { after, before, describe, test } from "node:test";

import { EditThinker, EditThinkerError, EditThinkerTimeoutError } from "../dist/index.js";
import { png, startService, waitFinished } from "./harness.mjs";

let service;
let client;
const image = png(24, 24, [60, 60, 200]);

before(async () => {
  service = await startService();
  client = new EditThinker({ baseUrl: service.url });
});
after(() => service?.stop());

/**
 * A TCP proxy to the service that ends the first event-stream response after
 * `cutAfter` bytes (mid-event), like a dropped connection. Records the head
 * of every events request.
 */
async function cuttingProxy(target, cutAfter) {
  const state = { cut: false, eventRequests: [] };
  const { hostname, port } = new URL(target);
  const server = createServer((downstream) => {
    const upstream = connect(Number(port), hostname);
    let watching = false;
    let sent = 0;
    downstream.on("data", (data) => {
      const head = data.toString("latin1");
      if (/^GET [^ ]*\/events/.test(head)) {
        state.eventRequests.push(head);
        watching = !state.cut;
      }
      upstream.write(data);
    });
    upstream.on("data", (data) => {
      if (watching && !state.cut && sent + data.length >= cutAfter) {
        state.cut = true;
        downstream.end(data.subarray(0, cutAfter - sent));
        upstream.destroy();
        return;
      }
      if (watching) sent += data.length;
      downstream.write(data);
    });
    const close = () => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on("error", close).on("close", close);
    upstream.on("error", close).on("close", () => downstream.end());
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, state, close: () => new Promise((r) => server.close(r)) };
}

describe("events", { concurrency: true }, () => {
  test("a stream cut mid-job resumes with Last-Event-ID: every stored event once, in order", async () => {
    const proxy = await cuttingProxy(service.url, 1500);
    try {
      const viaProxy = new EditThinker({ baseUrl: proxy.url });
      const { job } = await viaProxy.create(image, "make it orange", { maxTurns: 3 });
      const seen = [];
      let thinking = 0;
      for await (const event of viaProxy.stream(job.id)) {
        if (event.type === "turn.thinking") {
          assert.equal(event.id, null);
          assert.equal(typeof event.data.delta, "string");
          thinking += 1;
        } else {
          assert.equal(typeof event.id, "number");
          assert.equal(event.data.job_id, job.id);
          seen.push({ id: event.id, type: event.type });
        }
      }
      assert.ok(proxy.state.cut, "the proxy cut the stream");
      assert.ok(proxy.state.eventRequests.length >= 2, "the client reconnected");
      const resumedFrom = /last-event-id: (\d+)/i.exec(proxy.state.eventRequests[1])?.[1];
      assert.ok(resumedFrom !== undefined && seen.some((e) => e.id === Number(resumedFrom)), `resumed from ${resumedFrom}`);
      assert.ok(thinking > 0, "turn.thinking events are yielded");

      // The stored events, replayed from the start on a clean connection.
      const stored = [];
      for await (const event of client.stream(job.id)) if (event.id !== null) stored.push({ id: event.id, type: event.type });
      assert.deepEqual(seen, stored);
      assert.equal(seen.at(-1).type, "job.succeeded");
      assert.ok(seen.every((e, i) => i === 0 || e.id > seen[i - 1].id), "increasing ids");

      // Nothing after the terminal event: 204, the iterator just ends.
      const rest = [];
      for await (const event of client.stream(job.id, { after: seen.at(-1).id })) rest.push(event);
      assert.deepEqual(rest, []);
    } finally {
      await proxy.close();
    }
  });

  test("run() returns the finished job", async () => {
    const job = await client.run(image, "make it yellow", { maxTurns: 1 });
    assert.equal(job.status, "succeeded");
    assert.equal(job.turns.length, 1);
    // The usage ledger: one paid edit and one critique, typed from the schema.
    assert.deepEqual([job.usage.editor_calls, job.usage.thinker_calls], [1, 1]);
    assert.deepEqual(job.turns[0].usage, job.usage);
    const err = await client.retry(job.id).catch((e) => e);
    assert.deepEqual([err.status, err.code], [409, "job_not_failed"]);
  });

  test("run() timeout throws with the job id and leaves the job running", async () => {
    const err = await client.run(image, "make it teal", { maxTurns: 2, timeoutMs: 800 }).catch((e) => e);
    assert.ok(err instanceof EditThinkerTimeoutError, String(err));
    assert.match(err.jobId, /^[0-9a-f-]{36}$/);
    assert.equal((await waitFinished(client, err.jobId)).status, "succeeded");
  });

  test("run() with cancelOnAbort cancels the job when the signal aborts", async () => {
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error("stop")), 800);
    const request = { maxTurns: 10, options: { stop: { semantic: 10, quality: 10 } }, idempotencyKey: `grey-${Date.now()}` };
    const err = await client.run(image, "make it grey", { ...request, signal: controller.signal, cancelOnAbort: true }).catch((e) => e);
    assert.equal(err.message, "stop"); // the caller's abort reason
    // The same key and request find the job again.
    const { job, replayed } = await client.create(image, "make it grey", request);
    assert.equal(replayed, true);
    assert.equal((await waitFinished(client, job.id)).status, "canceled");
  });

  test("cancel() stops a running job; a second cancel is 409 job_finished", async () => {
    const { job } = await client.create(image, "make it pink", { maxTurns: 10, options: { stop: { semantic: 10, quality: 10 } } });
    const types = [];
    for await (const event of client.stream(job.id)) {
      if (event.id === null) continue;
      types.push(event.type);
      if (event.type === "job.started") {
        const answer = await client.cancel(job.id);
        assert.ok(["running", "canceled"].includes(answer.status));
      }
    }
    assert.equal(types.at(-1), "job.canceled");
    assert.equal((await client.get(job.id)).status, "canceled");
    const again = await client.cancel(job.id).catch((e) => e);
    assert.ok(again instanceof EditThinkerError);
    assert.deepEqual([again.status, again.code], [409, "job_finished"]);
  });
});
