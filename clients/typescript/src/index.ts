export { EditThinker } from "./client.js";
export type { ClientOptions, CreateOptions, CreateResult, ImageSource, RunOptions, StreamOptions } from "./client.js";
export { EditThinkerError, EditThinkerTimeoutError } from "./errors.js";
export { webhooks, verify as verifyWebhook, WebhookVerificationError } from "./webhooks.js";
export type { HeaderSource, VerifyOptions } from "./webhooks.js";
export type * from "./types.js";
export { TERMINAL_EVENTS } from "./types.js";
export type { components, paths, webhooks as webhookOperations } from "./schema.js";
