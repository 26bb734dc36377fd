// Starts the real service binary for a test file, and small helpers.
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateSync } from "node:zlib";

// EDITTHINKER_BIN, else the repository's debug build.
export const BIN =
  process.env.EDITTHINKER_BIN ||
  new URL("../../../target/debug/editthinker", import.meta.url).pathname;

/**
 * Runs `serve --sandbox` (or plain `serve` with `config` providers) in a
 * fresh temp dir on a free port. Returns { url, secret, stop() }.
 */
export async function startService({ sandbox = true, config = "" } = {}) {
  if (!existsSync(BIN)) throw new Error(`no EditThinker binary at ${BIN}: build it or set EDITTHINKER_BIN`);
  const dir = mkdtempSync(join(tmpdir(), "editthinker-ts-"));
  const secret = `whsec_${randomBytes(32).toString("base64")}`;
  // Top-level keys first: in TOML they must precede every table.
  writeFileSync(
    join(dir, "editthinker.toml"),
    `allow_private_image_urls = true\nallow_private_webhook_urls = true\n\n[webhooks]\nsecret_env = "ET_WEBHOOK_SECRET"\n\n${config}\n`,
  );
  const child = spawn(BIN, sandbox ? ["serve", "--sandbox"] : ["serve"], {
    cwd: dir,
    env: {
      // The service reads every EDITTHINKER_* variable as configuration and
      // refuses unknown ones, EDITTHINKER_BIN included: pass none through.
      ...Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith("EDITTHINKER_"))),
      EDITTHINKER_LISTEN: "127.0.0.1:0",
      EDITTHINKER_METRICS__LISTEN: "127.0.0.1:0",
      RUST_LOG: "info",
      NO_COLOR: "1",
      ET_WEBHOOK_SECRET: secret,
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`service did not start in 20 s:\n${log.slice(-4000)}`)), 20_000);
    // Keep reading stderr for the whole run, or the child blocks on a full pipe.
    child.stderr.setEncoding("utf8").on("data", (text) => {
      log = (log + text).slice(-64_000);
      const match = /listening addr=(127\.0\.0\.1:\d+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolve(`http://${match[1]}`);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`service exited (${code}) before listening:\n${log.slice(-4000)}`));
    });
  });
  let url;
  try {
    url = await listening;
  } catch (err) {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    url,
    secret,
    log: () => log,
    async stop() {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(timer);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** An HTTP server on loopback; `handler(req, res, body)` gets the whole body. */
export async function httpServer(handler) {
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => handler(req, res, Buffer.concat(chunks)));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => server.close(resolve)).finally(() => server.closeAllConnections?.()),
  };
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, "latin1");
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** A small solid-colour RGB PNG. */
export function png(width = 32, height = 32, rgb = [40, 120, 200]) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8);
  const row = Buffer.from([0, ...Array.from({ length: width }, () => rgb).flat()]);
  const raw = Buffer.concat(Array.from({ length: height }, () => row));
  return new Uint8Array(
    Buffer.concat([Buffer.from("\x89PNG\r\n\x1a\n", "latin1"), chunk("IHDR", header), chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]),
  );
}

/** Polls `get` until the job has finished. */
export async function waitFinished(client, id, timeoutMs = 30_000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const job = await client.get(id);
    if (["succeeded", "failed", "canceled"].includes(job.status)) return job;
    if (Date.now() > until) throw new Error(`job ${id} still ${job.status} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
