// create (bytes, URL, file path), idempotency, Prefer: wait, errors, list,
// download: against the real service in sandbox mode.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { EditThinker, EditThinkerError } from "../dist/index.js";
import { httpServer, png, startService } from "./harness.mjs";

let service;
let client;
const image = png(24, 24, [200, 60, 60]);

before(async () => {
  service = await startService();
  client = new EditThinker({ baseUrl: service.url });
});
after(() => service?.stop());

const raw = async (path) => new Uint8Array(await (await fetch(service.url + path)).arrayBuffer());

test("create from bytes (multipart) with waitSeconds answers the finished job; download matches /result", async () => {
  const { job, replayed, idempotencyKey } = await client.create(image, "make it blue", { maxTurns: 2, waitSeconds: 30 });
  assert.equal(job.status, "succeeded");
  assert.equal(replayed, false);
  assert.match(idempotencyKey, /^[0-9a-f-]{36}$/);
  assert.ok(job.turns.length >= 1 && job.result);
  assert.deepEqual(await raw(`/v1/jobs/${job.id}/source`), image);
  const result = await client.download(job.id);
  assert.deepEqual(result, await raw(`/v1/jobs/${job.id}/result`));
  assert.deepEqual(result.subarray(0, 4), new Uint8Array([0x89, 0x50, 0x4e, 0x47]));
  assert.deepEqual(await client.download(job.id, { turn: 1 }), await raw(`/v1/jobs/${job.id}/turns/1/image`));
});

test("create from a URL the service fetches", async () => {
  let fetched = 0;
  const server = await httpServer((_req, res) => {
    fetched += 1;
    res.writeHead(200, { "content-type": "image/png" }).end(image);
  });
  try {
    const { job } = await client.create(`${server.url}/cat.png`, "make it green", { maxTurns: 1 });
    assert.equal(fetched, 1);
    assert.equal(job.status, "queued");
    assert.deepEqual(await raw(`/v1/jobs/${job.id}/source`), image);
  } finally {
    await server.close();
  }
});

test("create from a file path sends every field", async () => {
  const dir = mkdtempSync(join(tmpdir(), "editthinker-ts-file-"));
  try {
    const path = join(dir, "photo.png");
    const bytes = png(16, 16, [10, 200, 10]);
    writeFileSync(path, bytes);
    const { job } = await client.create(path, "make it purple", {
      editor: "sandbox",
      options: { selection: "last", stop: { semantic: 9 } },
      maxTurns: 1,
      metadata: { order: "1234" },
      priority: 3,
    });
    assert.deepEqual(await raw(`/v1/jobs/${job.id}/source`), bytes);
    assert.equal(job.editor, "sandbox");
    assert.equal(job.priority, 3);
    assert.deepEqual(job.metadata, { order: "1234" });
    assert.deepEqual([job.options.max_turns, job.options.selection, job.options.stop?.semantic], [1, "last", 9]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the same Idempotency-Key returns the same job, replayed", async () => {
  const key = `test-${Date.now()}`;
  const first = await client.create(image, "make it round", { maxTurns: 1, idempotencyKey: key });
  const second = await client.create(image, "make it round", { maxTurns: 1, idempotencyKey: key });
  assert.equal(second.job.id, first.job.id);
  assert.deepEqual([first.replayed, second.replayed, second.idempotencyKey], [false, true, key]);
  // The same key with another request is refused.
  const err = await client.create(image, "make it square", { maxTurns: 1, idempotencyKey: key }).catch((e) => e);
  assert.equal(err.code, "idempotency_key_reused");
});

test("a 422 surfaces code and field", async () => {
  const err = await client.create(image, "x", { maxTurns: 0 }).catch((e) => e);
  assert.ok(err instanceof EditThinkerError);
  assert.deepEqual([err.status, err.code, err.field], [422, "validation_failed", "options.max_turns"]);
  assert.match(err.detail, /max_turns/);
  const unknown = await client.create(image, "x", { editor: "nope" }).catch((e) => e);
  assert.deepEqual([unknown.status, unknown.code], [422, "unknown_editor"]);
  const missing = await client.get("00000000-0000-0000-0000-000000000000").catch((e) => e);
  assert.deepEqual([missing.status, missing.code], [404, "not_found"]);
});

test("list() follows next_cursor through every page", async () => {
  const pages = [];
  const counting = new EditThinker({
    baseUrl: service.url,
    fetch: (url, init) => {
      pages.push(String(url));
      return fetch(url, init);
    },
  });
  const all = [];
  for await (const job of client.list({ limit: 100 })) all.push(job.id);
  assert.ok(all.length >= 3, `${all.length} jobs`);
  const paged = [];
  for await (const job of counting.list({ limit: 1 })) paged.push(job.id);
  assert.deepEqual(paged, all);
  assert.ok(pages.length >= all.length && pages.slice(1).every((u) => u.includes("cursor=")));
  const succeeded = [];
  for await (const job of client.list({ status: "succeeded", limit: 1 })) succeeded.push(job.status);
  assert.ok(succeeded.length >= 1 && succeeded.every((s) => s === "succeeded"));
});
