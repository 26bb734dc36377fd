// Compiled (not run) by `npm test` with strict tsc: the published types
// narrow events and errors the way the README shows.
import {
  EditThinker,
  EditThinkerError,
  EditThinkerTimeoutError,
  webhooks,
  type ErrorCode,
  type Job,
  type JobEvent,
  type WebhookEvent,
} from "@editthinker/client";

export async function example(client: EditThinker, bytes: Uint8Array): Promise<Job | string> {
  const { job, idempotencyKey, replayed } = await client.create(bytes, "make it blue", {
    maxTurns: 2,
    options: { selection: "last", stop: { semantic: 9 } },
    webhook: { url: "https://example.com/hooks", events: ["job.succeeded"] },
    waitSeconds: 10,
  });
  const seen: string[] = [idempotencyKey, String(replayed)];
  for await (const event of client.stream(job.id, { after: 0 })) {
    const e: JobEvent = event;
    switch (e.type) {
      case "turn.thinking": {
        const id: null = e.id;
        seen.push(e.data.delta, String(id));
        break;
      }
      case "turn.critiqued":
        seen.push(String(e.id + 1), String(e.data.critique.overall ?? 0));
        break;
      case "job.succeeded":
        seen.push(e.data.stop_reason ?? "", String(e.data.result_turn));
        break;
      case "job.failed": {
        const code: ErrorCode = e.data.code;
        seen.push(code);
        break;
      }
      default:
        seen.push(e.type);
    }
  }
  for await (const summary of client.list({ status: "succeeded", limit: 10 })) seen.push(summary.id);
  const png: Uint8Array = await client.download(job.id, { turn: 1 });
  seen.push(String(png.length));
  try {
    return await client.run(new Blob([new Uint8Array(bytes)]), "x", { timeoutMs: 1000, cancelOnAbort: true });
  } catch (err) {
    if (err instanceof EditThinkerTimeoutError) return err.jobId ?? "";
    if (err instanceof EditThinkerError) return `${err.status} ${err.code} ${err.field ?? ""} ${err.detail}`;
    throw err;
  }
}

export async function hook(request: Request): Promise<WebhookEvent> {
  return webhooks.verify(request.headers, await request.text(), "whsec_AAAA", { toleranceSeconds: 60, now: new Date() });
}
