// Webhook deliveries of the real service, checked with webhooks.verify.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { EditThinker, WebhookVerificationError, webhooks } from "../dist/index.js";
import { httpServer, png, startService } from "./harness.mjs";

let service;
let receiver;
const deliveries = [];
let delivered;
const done = new Promise((resolve) => (delivered = resolve));

before(async () => {
  service = await startService();
  receiver = await httpServer((req, res, body) => {
    deliveries.push({ headers: req.headers, body });
    res.writeHead(204).end();
    if (body.toString().includes('"job.succeeded"')) delivered();
  });
});
after(async () => {
  await receiver?.close();
  await service?.stop();
});

test("deliveries verify with the service's secret; tampering and stale timestamps do not", async () => {
  const client = new EditThinker({ baseUrl: service.url });
  const { job } = await client.create(png(16, 16), "make it gold", {
    maxTurns: 1,
    webhook: { url: `${receiver.url}/hooks`, events: ["job.queued", "job.succeeded"] },
  });
  assert.equal(job.webhook?.url, `${receiver.url}/hooks`);
  let timer;
  const late = new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("no job.succeeded delivery in 20 s")), 20_000)));
  await Promise.race([done, late]).finally(() => clearTimeout(timer));

  const types = [];
  for (const { headers, body } of deliveries) {
    // Node's IncomingHttpHeaders and the raw bytes, as a node:http handler has them.
    const event = await webhooks.verify(headers, body, service.secret);
    assert.equal(event.data.job_id, job.id);
    types.push(event.type);
  }
  assert.ok(types.includes("job.queued") && types.includes("job.succeeded"), types.join());

  const { headers, body } = deliveries.find((d) => d.body.toString().includes('"job.succeeded"'));
  const reject = (promise, message) => assert.rejects(promise, (e) => e instanceof WebhookVerificationError && message.test(e.message));
  await reject(webhooks.verify(headers, body.toString().replace("job.succeeded", "job.failed"), service.secret), /no signature/);
  const sent = Number(headers["webhook-timestamp"]) * 1000;
  await reject(webhooks.verify(headers, body, service.secret, { now: sent + 301_000 }), /too old/);
  await reject(webhooks.verify(headers, body, service.secret, { now: sent - 301_000 }), /future/);
  await webhooks.verify(headers, body, service.secret, { now: sent + 299_000 });
  // The same check is on the client, and takes web Headers and a string body.
  await client.webhooks.verify(new Headers(headers), body.toString(), service.secret);
});
