// retry() of a failed job: a plain `serve` whose only editor refuses every
// instruction, so each job fails with editor_refused.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { EditThinker, EditThinkerError } from "../dist/index.js";
import { png, startService } from "./harness.mjs";

let service;
let client;

before(async () => {
  service = await startService({
    sandbox: false,
    config: '[thinker]\nkind = "sandbox"\n\n[editors.strict]\nkind = "sandbox"\nrefusal_rate = 1.0\nlatency_ms = 0\n',
  });
  client = new EditThinker({ baseUrl: service.url });
});
after(() => service?.stop());

test("a failed job is requeued by retry(); its stream goes on after the old job.failed", async () => {
  const image = png(16, 16);
  const failed = await client.run(image, "make it red", { maxTurns: 1 });
  assert.equal(failed.status, "failed");
  assert.equal(failed.error?.code, "editor_refused");
  assert.equal(failed.attempt, 1);

  const first = [];
  for await (const event of client.stream(failed.id)) first.push(event);
  assert.equal(first.at(-1).type, "job.failed");

  const requeued = await client.retry(failed.id);
  assert.equal(requeued.status, "queued");

  // The first stream ended at the old terminal event; resume after it.
  const second = [];
  for await (const event of client.stream(failed.id, { after: first.at(-1).id })) second.push(event.type);
  assert.deepEqual(second, ["job.queued", "job.started", "job.failed"]);
  const job = await client.get(failed.id);
  assert.deepEqual([job.status, job.attempt], ["failed", 2]);
});
