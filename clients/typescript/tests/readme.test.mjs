// The README's examples, run as written: the create-and-stream example
// against the real service (only the base URL substituted), and the webhook
// route handler with a signed and a tampered request.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { after, before, test } from "node:test";

import { png, startService } from "./harness.mjs";

const root = fileURLToPath(new URL("..", import.meta.url));
const readme = readFileSync(join(root, "README.md"), "utf8");

/** The first ```js block after `heading`. */
function block(heading) {
  const from = readme.indexOf(heading);
  assert.ok(from >= 0, `README has ${heading}`);
  const match = /```js\n([\s\S]*?)```/.exec(readme.slice(from));
  assert.ok(match, `a js block after ${heading}`);
  return match[1];
}

let service;
let dir;

before(async () => {
  service = await startService();
  // A folder where `import "@editthinker/client"` resolves to this package.
  dir = mkdtempSync(join(tmpdir(), "editthinker-ts-readme-"));
  mkdirSync(join(dir, "node_modules", "@editthinker"), { recursive: true });
  symlinkSync(root, join(dir, "node_modules", "@editthinker", "client"), "dir");
});
after(async () => {
  await service?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test("the quick start runs as written", async () => {
  const code = block("## Quick start");
  assert.ok(code.includes('"http://127.0.0.1:8080"'));
  writeFileSync(join(dir, "quickstart.mjs"), code.replace('"http://127.0.0.1:8080"', JSON.stringify(service.url)));
  writeFileSync(join(dir, "photo.png"), png(32, 32));
  const { stdout } = await promisify(execFile)(process.execPath, ["quickstart.mjs"], { cwd: dir, timeout: 30_000 });
  assert.match(stdout, /^turn 1: overall [\d.]+$/m);
  assert.match(stdout, /^saved turn [123] as result\.png$/m);
  assert.deepEqual(readFileSync(join(dir, "result.png")).subarray(1, 4).toString(), "PNG");
});

test("the webhook route handler accepts a signed delivery and refuses a tampered one", async () => {
  writeFileSync(join(dir, "route.mjs"), block("## Webhook handler"));
  const { POST } = await import(join(dir, "route.mjs"));
  process.env.EDITTHINKER_WEBHOOK_SECRET = service.secret;
  const body = JSON.stringify({ type: "job.succeeded", timestamp: new Date().toISOString(), data: { job_id: "j1" } });
  const timestamp = String(Math.floor(Date.now() / 1000));
  const key = Buffer.from(service.secret.slice("whsec_".length), "base64");
  const signature = createHmac("sha256", key).update(`msg_1.${timestamp}.${body}`).digest("base64");
  const request = (payload) =>
    new Request("http://localhost/api/editthinker", {
      method: "POST",
      headers: { "webhook-id": "msg_1", "webhook-timestamp": timestamp, "webhook-signature": `v1,${signature}` },
      body: payload,
    });
  assert.equal((await POST(request(body))).status, 204);
  assert.equal((await POST(request(body.replace("j1", "j2")))).status, 400);
});
