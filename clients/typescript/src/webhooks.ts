// Standard Webhooks verification with WebCrypto, so it runs in browsers,
// edge runtimes and Node 18+ alike.
import { webCrypto } from "./crypto.js";
import type { WebhookEvent } from "./types.js";

export class WebhookVerificationError extends Error {
  override readonly name = "WebhookVerificationError";
}

export interface VerifyOptions {
  /** Largest accepted distance between `webhook-timestamp` and now (default 300). */
  toleranceSeconds?: number;
  /** The current time (for tests). */
  now?: Date | number;
}

/** `Headers`, or a plain object such as Node's `IncomingHttpHeaders`. */
export type HeaderSource = Headers | Record<string, string | string[] | undefined>;

function header(headers: HeaderSource, name: string): string | null {
  if (typeof (headers as Headers).get === "function") return (headers as Headers).get(name);
  for (const [key, value] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
    if (key.toLowerCase() === name) return Array.isArray(value) ? value.join(" ") : (value ?? null);
  }
  return null;
}

function fromBase64(text: string): Uint8Array {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

/**
 * Checks a delivery's signature and timestamp, then returns its parsed body.
 * Pass the body exactly as received (not re-serialized JSON).
 * Throws WebhookVerificationError when anything does not match.
 */
export async function verify(
  headers: HeaderSource,
  rawBody: string | Uint8Array | ArrayBuffer,
  secret: string,
  options: VerifyOptions = {},
): Promise<WebhookEvent> {
  const id = header(headers, "webhook-id");
  const timestamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!id || !timestamp || !signatures) throw new WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature");
  if (!/^\d+$/.test(timestamp)) throw new WebhookVerificationError("webhook-timestamp is not Unix seconds");

  const tolerance = options.toleranceSeconds ?? 300;
  const nowMs = options.now === undefined ? Date.now() : typeof options.now === "number" ? options.now : options.now.getTime();
  const age = Math.floor(nowMs / 1000) - Number(timestamp);
  if (age > tolerance) throw new WebhookVerificationError("webhook-timestamp is too old");
  if (age < -tolerance) throw new WebhookVerificationError("webhook-timestamp is in the future");

  let key: Uint8Array;
  try {
    key = fromBase64(secret.startsWith("whsec_") ? secret.slice(6) : secret);
  } catch {
    throw new WebhookVerificationError("the secret is not whsec_<base64>");
  }
  const body = typeof rawBody === "string" ? new TextEncoder().encode(rawBody) : new Uint8Array(rawBody);
  const prefix = new TextEncoder().encode(`${id}.${timestamp}.`);
  const signed = new Uint8Array(prefix.length + body.length);
  signed.set(prefix);
  signed.set(body, prefix.length);

  const crypto = (await webCrypto()).subtle;
  const hmac = await crypto.importKey("raw", key as BufferSource, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
  // The header may list several signatures (key rotation); any v1 match passes.
  // subtle.verify compares in constant time.
  for (const entry of signatures.split(" ")) {
    const comma = entry.indexOf(",");
    if (comma === -1 || entry.slice(0, comma) !== "v1") continue;
    let signature: Uint8Array;
    try {
      signature = fromBase64(entry.slice(comma + 1));
    } catch {
      continue;
    }
    if (await crypto.verify("HMAC", hmac, signature as BufferSource, signed as BufferSource)) {
      try {
        return JSON.parse(new TextDecoder().decode(body)) as WebhookEvent;
      } catch {
        throw new WebhookVerificationError("the signed body is not JSON");
      }
    }
  }
  throw new WebhookVerificationError("no signature matches");
}

export const webhooks = { verify };
