// Friendly names for the generated OpenAPI types (src/schema.ts), plus the
// event union the SSE stream yields.
import type { components } from "./schema.js";

type Schemas = components["schemas"];

export type Job = Schemas["Job"];
export type JobSummary = Schemas["JobSummary"];
export type JobStatus = Schemas["JobStatus"];
export type JobOptions = Schemas["JobOptions"];
export type Turn = Schemas["Turn"];
export type WebhookInput = Schemas["WebhookInput"];
export type WebhookEvent = Schemas["WebhookEvent"];
export type Problem = Schemas["Problem"];
export type ErrorCode = Schemas["ErrorCode"];
export type EventType = Schemas["EventType"];

/** The `data` of each event type, as on the SSE stream. */
export interface EventDataMap {
  "job.queued": Schemas["JobQueuedData"];
  "job.started": Schemas["JobStartedData"];
  "job.retrying": Schemas["JobRetryingData"];
  "turn.edited": Schemas["TurnEditedData"];
  "turn.critiqued": Schemas["TurnCritiquedData"];
  "job.succeeded": Schemas["JobSucceededData"];
  "job.failed": Schemas["JobFailedData"];
  "job.canceled": Schemas["JobCanceledData"];
  "turn.thinking": Schemas["TurnThinkingData"];
  "turn.chosen": Schemas["TurnChosenData"];
}

/** A stored event: it has an id, and is replayed on reconnect. */
export type StoredEvent = {
  [K in EventType]: { id: number; type: K; data: EventDataMap[K] };
}[EventType];

/** Live thinker text: no id, never stored or replayed. */
export interface ThinkingEvent {
  id: null;
  type: "turn.thinking";
  data: EventDataMap["turn.thinking"];
}

/** What `stream()` yields; switch on `type` to narrow `data`. */
export type JobEvent = StoredEvent | ThinkingEvent;

export const TERMINAL_EVENTS: readonly EventType[] = ["job.succeeded", "job.failed", "job.canceled"];
