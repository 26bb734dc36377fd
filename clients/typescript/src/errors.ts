import type { ErrorCode } from "./types.js";

/** An error answer of the API, from its RFC 9457 problem body. */
export class EditThinkerError extends Error {
  override readonly name = "EditThinkerError";
  /** HTTP status. */
  readonly status: number;
  /** The problem's stable code; `http_<status>` when the body was not a problem (e.g. a proxy's page). */
  readonly code: ErrorCode | (string & {});
  readonly title: string;
  readonly detail: string;
  /** The request field at fault as a dotted path (`options.max_turns`), else null. */
  readonly field: string | null;
  /** Seconds from `Retry-After`, when the answer had one (429, 503). */
  readonly retryAfter: number | null;

  constructor(init: {
    status: number;
    code: string;
    title: string;
    detail: string;
    field?: string | null;
    retryAfter?: number | null;
  }) {
    super(`${init.status} ${init.code}: ${init.detail}`);
    this.status = init.status;
    this.code = init.code;
    this.title = init.title;
    this.detail = init.detail;
    this.field = init.field ?? null;
    this.retryAfter = init.retryAfter ?? null;
  }

  /** Reads the response body; a body that is not a problem still gives an error. */
  static async fromResponse(response: Response): Promise<EditThinkerError> {
    const text = await response.text().catch(() => "");
    const retryAfter = parseRetryAfter(response.headers.get("retry-after"));
    try {
      const p = JSON.parse(text) as Record<string, unknown>;
      if (typeof p.code === "string") {
        return new EditThinkerError({
          status: response.status,
          code: p.code,
          title: String(p.title ?? response.statusText),
          detail: String(p.detail ?? ""),
          field: typeof p.field === "string" ? p.field : null,
          retryAfter,
        });
      }
    } catch {
      // not JSON: fall through
    }
    return new EditThinkerError({
      status: response.status,
      code: `http_${response.status}`,
      title: response.statusText,
      detail: text.slice(0, 500),
      retryAfter,
    });
  }
}

/**
 * A client-side time limit passed. The job is not canceled: `jobId` (when the
 * job had been created) lets you look at it later.
 */
export class EditThinkerTimeoutError extends Error {
  override readonly name = "EditThinkerTimeoutError";
  readonly jobId: string | undefined;
  readonly idempotencyKey: string | undefined;
  readonly timeoutMs: number;

  constructor(message: string, init: { timeoutMs: number; jobId?: string | undefined; idempotencyKey?: string | undefined }) {
    super(message);
    this.timeoutMs = init.timeoutMs;
    this.jobId = init.jobId;
    this.idempotencyKey = init.idempotencyKey;
  }
}

/** `Retry-After` as seconds (delta-seconds or an HTTP date), or null. */
export function parseRetryAfter(value: string | null): number | null {
  if (value === null || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
}
