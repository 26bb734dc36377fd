import { webCrypto } from "./crypto.js";
import { EditThinkerError, EditThinkerTimeoutError } from "./errors.js";
import { SseParser, type SseMessage } from "./sse.js";
import type { components } from "./schema.js";
import {
  TERMINAL_EVENTS,
  type Job,
  type JobEvent,
  type JobOptions,
  type JobStatus,
  type JobSummary,
  type WebhookInput,
} from "./types.js";
import { webhooks } from "./webhooks.js";

export interface ClientOptions {
  /** The service's address, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** Sent as `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Extra headers for every request (e.g. a gateway's tenant header). */
  headers?: Record<string, string>;
  /** Time limit of one HTTP attempt, body included (default 30000). */
  timeoutMs?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** Attempts per call when a retry is allowed (default 3). */
  maxAttempts?: number;
}

/** Bytes, a Blob/File, an http(s) URL the server fetches, a `data:` URL, or a file path (Node only). */
export type ImageSource = Uint8Array | ArrayBuffer | Blob | URL | string;

export interface CreateOptions {
  /** A configured editor name; the default editor when absent. */
  editor?: string;
  /**
   * The API's loop options (`max_turns`, `stop`, `selection`, `deadline_seconds`).
   * Partial: the generated type requires `max_turns` (it has a default), the server does not.
   */
  options?: Partial<JobOptions>;
  /** Shorthand for `options.max_turns`. */
  maxTurns?: number;
  metadata?: Record<string, unknown>;
  /** −10 to 10, higher runs first. */
  priority?: number;
  webhook?: WebhookInput;
  /** Makes the create safe to repeat; a random UUID when absent. */
  idempotencyKey?: string;
  /** Sends `Prefer: wait=N` (1–60): the answer waits up to N s for the job to finish. */
  waitSeconds?: number;
  signal?: AbortSignal;
}

export interface CreateResult {
  /** The job as the create answered it (finished when `waitSeconds` sufficed). */
  job: Job;
  /** The key sent: reuse it to repeat the create safely. */
  idempotencyKey: string;
  /** True when the key returned a job created earlier (`Idempotent-Replayed`). */
  replayed: boolean;
}

export interface StreamOptions {
  /** Start after this event id (resume). */
  after?: number;
  signal?: AbortSignal;
}

export interface RunOptions extends CreateOptions {
  /** Give up waiting after this long (EditThinkerTimeoutError); the job keeps running. */
  timeoutMs?: number;
  /** Cancel the job when the timeout passes or `signal` aborts (default false). */
  cancelOnAbort?: boolean;
}

interface CallOptions {
  body?: BodyInit;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  timeoutMs?: number;
  /** "safe": 429, 503 and network failures are retried; "unsafe": only 429 (refused before any work). */
  retry: "safe" | "unsafe";
}

type JobList = components["schemas"]["JobList"];

const MAX_RETRY_DELAY_MS = 30_000;
const MAX_RECONNECTS = 5;
// The server sends a keep-alive at least every 20 s; three missed means a dead connection.
const STREAM_IDLE_MS = 60_000;
const FINISHED: readonly JobStatus[] = ["succeeded", "failed", "canceled"];

export class EditThinker {
  /** Webhook signature checks (`EditThinker.webhooks.verify` also works without a client). */
  static readonly webhooks = webhooks;
  readonly webhooks = webhooks;

  private readonly baseUrl: string;
  private readonly defaultHeaders: Record<string, string>;
  private readonly timeoutMs: number;
  private readonly maxAttempts: number;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, "");
    this.defaultHeaders = { ...options.headers };
    if (options.apiKey) this.defaultHeaders["Authorization"] = `Bearer ${options.apiKey}`;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 3);
    // Bound so that a plain `fetch` is not called with the client as `this`.
    this.fetchImpl = options.fetch ?? ((input, init) => fetch(input, init));
  }

  /** `POST /v1/jobs`. Bytes, Blobs and paths go as multipart; URLs as JSON. */
  async create(image: ImageSource, instruction: string, options: CreateOptions = {}): Promise<CreateResult> {
    const idempotencyKey = options.idempotencyKey ?? (await webCrypto()).randomUUID();
    const jobOptions = options.maxTurns === undefined ? options.options : { ...options.options, max_turns: options.maxTurns };
    const fields: Record<string, unknown> = {
      instruction,
      editor: options.editor,
      options: jobOptions,
      metadata: options.metadata,
      priority: options.priority,
      webhook: options.webhook,
    };
    const headers: Record<string, string> = { "Idempotency-Key": idempotencyKey };
    let body: BodyInit;
    const asUrl = image instanceof URL ? image.href : typeof image === "string" && /^https?:\/\//i.test(image) ? image : null;
    if (asUrl !== null || (typeof image === "string" && image.startsWith("data:"))) {
      const source = asUrl !== null ? { url: asUrl } : { base64: image as string };
      body = JSON.stringify({ image: source, ...fields });
      headers["Content-Type"] = "application/json";
    } else {
      const { blob, filename } = await toBlob(image as Exclude<ImageSource, URL>);
      const form = new FormData();
      form.append("image", blob, filename);
      for (const [name, value] of Object.entries(fields)) {
        if (value === undefined) continue;
        form.append(name, typeof value === "string" ? value : JSON.stringify(value));
      }
      body = form;
    }
    let timeoutMs = this.timeoutMs;
    if (options.waitSeconds !== undefined) {
      headers["Prefer"] = `wait=${options.waitSeconds}`;
      timeoutMs += options.waitSeconds * 1000; // the server holds the answer that long
    }
    // Safe to retry: the same key makes a repeat return the same job.
    return this.call("POST", "/v1/jobs", { body, headers, signal: options.signal, timeoutMs, retry: "safe" }, async (r) => ({
      job: (await r.json()) as Job,
      idempotencyKey,
      replayed: r.headers.get("idempotent-replayed") === "true",
    }));
  }

  /** `GET /v1/jobs/{id}`: the job with its turns. */
  get(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    return this.call("GET", jobPath(id), { signal: options.signal, retry: "safe" }, json<Job>);
  }

  /** `GET /v1/jobs`, newest first, following `next_cursor` through every page. */
  async *list(options: { status?: JobStatus; limit?: number; signal?: AbortSignal } = {}): AsyncGenerator<JobSummary, void, undefined> {
    let cursor: string | null | undefined;
    do {
      const query = new URLSearchParams();
      if (options.status) query.set("status", options.status);
      if (options.limit !== undefined) query.set("limit", String(options.limit));
      if (cursor) query.set("cursor", cursor);
      const qs = query.toString();
      const page = await this.call("GET", `/v1/jobs${qs ? `?${qs}` : ""}`, { signal: options.signal, retry: "safe" }, json<JobList>);
      yield* page.jobs;
      cursor = page.next_cursor;
    } while (cursor);
  }

  /** `POST /v1/jobs/{id}/cancel`. A running job stops within one heartbeat; 409 `job_finished` once finished. */
  cancel(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    // Cancelling twice does no harm, so this is retried like a GET.
    return this.call("POST", `${jobPath(id)}/cancel`, { signal: options.signal, retry: "safe" }, json<Job>);
  }

  /** `POST /v1/jobs/{id}/retry`: requeues a failed job; 409 `job_not_failed` otherwise. */
  retry(id: string, options: { signal?: AbortSignal } = {}): Promise<Job> {
    // Not retried on 503 or a lost connection: the first try may have requeued the job.
    return this.call("POST", `${jobPath(id)}/retry`, { signal: options.signal, retry: "unsafe" }, json<Job>);
  }

  /** The result image (PNG), or turn `turn`'s image. */
  download(id: string, options: { turn?: number; signal?: AbortSignal } = {}): Promise<Uint8Array> {
    const path = options.turn === undefined ? `${jobPath(id)}/result` : `${jobPath(id)}/turns/${options.turn}/image`;
    return this.call("GET", path, { signal: options.signal, retry: "safe" }, async (r) => new Uint8Array(await r.arrayBuffer()));
  }

  /**
   * The job's events (SSE), ending after `job.succeeded`, `job.failed` or
   * `job.canceled`, or when the server answers 204 (finished, nothing after
   * `after`). A dropped connection is resumed with `Last-Event-ID`, so each
   * stored event is yielded once; `turn.thinking` events (no id) are live only.
   */
  async *stream(id: string, options: StreamOptions = {}): AsyncGenerator<JobEvent, void, undefined> {
    const { signal } = options;
    let lastId = options.after;
    let failures = 0;
    let lastError: unknown = null;
    for (;;) {
      const { controller, unlink } = linked(signal);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const arm = (ms: number) => {
        clearTimeout(timer);
        timer = setTimeout(() => controller.abort(), ms);
      };
      let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
      let retryAfter: number | null = null;
      try {
        const headers: Record<string, string> = { Accept: "text/event-stream" };
        if (lastId !== undefined) headers["Last-Event-ID"] = String(lastId);
        arm(this.timeoutMs);
        const response = await this.fetchImpl(this.baseUrl + `${jobPath(id)}/events`, {
          headers: this.headers(headers),
          signal: controller.signal,
        });
        if (response.status === 204) return;
        if (!response.ok) {
          const error = await EditThinkerError.fromResponse(response);
          if (error.status !== 429 && error.status !== 503) throw error;
          lastError = error;
          retryAfter = error.retryAfter;
        } else if (response.body) {
          reader = response.body.getReader();
          const parser = new SseParser();
          const decoder = new TextDecoder();
          lastError = new Error("the event stream ended before the job finished");
          for (;;) {
            arm(STREAM_IDLE_MS);
            const { done, value } = await reader.read();
            clearTimeout(timer);
            if (done) break;
            for (const message of parser.push(decoder.decode(value, { stream: true }))) {
              const event = toEvent(message);
              failures = 0;
              if (event.id !== null) lastId = event.id;
              yield event;
              if ((TERMINAL_EVENTS as readonly string[]).includes(event.type)) return;
            }
          }
        }
      } catch (err) {
        if (signal?.aborted) throw signal.reason;
        // Errors of the API and unparsable data are final; connection trouble is not.
        if (err instanceof EditThinkerError || err instanceof SyntaxError) throw err;
        lastError = err;
      } finally {
        clearTimeout(timer);
        unlink();
        // Closes the connection, also when the caller stops iterating early.
        reader?.cancel().catch(() => {});
      }
      failures += 1;
      if (failures > MAX_RECONNECTS) throw lastError;
      await sleep(Math.min(retryAfter !== null ? retryAfter * 1000 : backoff(failures), MAX_RETRY_DELAY_MS), signal);
    }
  }

  /**
   * Creates a job and follows its events to the end; returns the finished job
   * (whatever its status). `timeoutMs` throws EditThinkerTimeoutError and,
   * like aborting `signal`, leaves the job running unless `cancelOnAbort`.
   */
  async run(image: ImageSource, instruction: string, options: RunOptions = {}): Promise<Job> {
    const { timeoutMs, cancelOnAbort = false, signal, ...createOptions } = options;
    const idempotencyKey = createOptions.idempotencyKey ?? (await webCrypto()).randomUUID();
    const { controller, unlink } = linked(signal);
    let timedOut = false;
    const timer =
      timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            controller.abort();
          }, timeoutMs);
    let jobId: string | undefined;
    try {
      const { job } = await this.create(image, instruction, { ...createOptions, idempotencyKey, signal: controller.signal });
      jobId = job.id;
      if (FINISHED.includes(job.status)) return job;
      for await (const _event of this.stream(job.id, { signal: controller.signal })) {
        // Nothing to do per event: the stream ends after the terminal one.
      }
      return await this.get(job.id, { signal: controller.signal });
    } catch (err) {
      if (!controller.signal.aborted) throw err;
      if (cancelOnAbort && jobId !== undefined) await this.cancel(jobId).catch(() => undefined);
      if (timedOut) {
        throw new EditThinkerTimeoutError(
          jobId === undefined ? `the job was not created within ${timeoutMs} ms` : `job ${jobId} did not finish within ${timeoutMs} ms`,
          { timeoutMs: timeoutMs ?? 0, jobId, idempotencyKey },
        );
      }
      throw err;
    } finally {
      clearTimeout(timer);
      unlink();
    }
  }

  private headers(extra?: Record<string, string>): Record<string, string> {
    return { ...this.defaultHeaders, ...extra };
  }

  /** One API call with a per-attempt time limit and bounded retries. */
  private async call<T>(method: string, path: string, options: CallOptions, read: (response: Response) => Promise<T>): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      const { controller, unlink } = linked(options.signal);
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        controller.abort();
      }, timeoutMs);
      let delay = 0;
      try {
        const init: RequestInit = { method, headers: this.headers(options.headers), signal: controller.signal };
        if (options.body !== undefined) init.body = options.body;
        const response = await this.fetchImpl(this.baseUrl + path, init);
        if (response.ok) return await read(response);
        const error = await EditThinkerError.fromResponse(response);
        const retryable = error.status === 429 || (error.status === 503 && options.retry === "safe");
        if (!retryable || attempt >= this.maxAttempts) throw error;
        delay = error.retryAfter !== null ? error.retryAfter * 1000 : backoff(attempt);
      } catch (err) {
        if (timedOut) throw new EditThinkerTimeoutError(`${method} ${path} timed out after ${timeoutMs} ms`, { timeoutMs });
        if (options.signal?.aborted) throw options.signal.reason;
        if (err instanceof EditThinkerError || options.retry !== "safe" || attempt >= this.maxAttempts) throw err;
        delay = backoff(attempt); // a network failure
      } finally {
        clearTimeout(timer);
        unlink();
      }
      await sleep(Math.min(delay, MAX_RETRY_DELAY_MS), options.signal);
    }
  }
}

function jobPath(id: string): string {
  return `/v1/jobs/${encodeURIComponent(id)}`;
}

async function json<T>(response: Response): Promise<T> {
  return (await response.json()) as T;
}

function toEvent(message: SseMessage): JobEvent {
  const data: unknown = JSON.parse(message.data);
  return { id: message.id === null ? null : Number(message.id), type: message.event, data } as JobEvent;
}

async function toBlob(image: Exclude<ImageSource, URL>): Promise<{ blob: Blob; filename: string }> {
  if (typeof image === "string") {
    // A file path: node:fs is loaded only here, so browsers never import it.
    const name = "node:fs/promises";
    let fs: { readFile(path: string): Promise<Uint8Array> };
    try {
      fs = (await import(name)) as typeof fs;
    } catch {
      throw new TypeError(`"${image}" is not an http(s) URL, and file paths can be read only in Node`);
    }
    const bytes = await fs.readFile(image);
    return { blob: new Blob([bytes as BlobPart]), filename: image.split(/[\\/]/).pop() || "image" };
  }
  if (image instanceof Blob) {
    const name = (image as Blob & { name?: unknown }).name;
    return { blob: image, filename: typeof name === "string" && name ? name : "image" };
  }
  return { blob: new Blob([image as BlobPart]), filename: "image" };
}

/** A controller that aborts with `signal`, so one attempt can also be aborted on its own. */
function linked(signal: AbortSignal | undefined): { controller: AbortController; unlink: () => void } {
  const controller = new AbortController();
  if (!signal) return { controller, unlink: () => undefined };
  if (signal.aborted) controller.abort(signal.reason);
  const onAbort = () => controller.abort(signal.reason);
  signal.addEventListener("abort", onAbort, { once: true });
  return { controller, unlink: () => signal.removeEventListener("abort", onAbort) };
}

function backoff(attempt: number): number {
  return Math.min(250 * 2 ** (attempt - 1), 5_000);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
