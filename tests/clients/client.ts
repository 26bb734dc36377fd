// A small client written against the types openapi-typescript generates
// from openapi/openapi.json (tests/e2e/clients.rs generates them into
// ./generated/api.d.ts of a temporary copy of this folder and runs strict
// tsc). It compiles only while the document types what clients need.
import type { components, paths } from "./generated/api";

type CreateJobRequest = components["schemas"]["CreateJobRequest"];
type Job = components["schemas"]["Job"];
type Problem = components["schemas"]["Problem"];
type ErrorCode = components["schemas"]["ErrorCode"];
type JobStatus = components["schemas"]["JobStatus"];

// `options` is typed: a client sets one option and leaves the rest to the
// server's defaults.
export const request: CreateJobRequest = {
  image: { url: "https://example.com/cat.png" },
  instruction: "make the sky purple",
  options: { max_turns: 3, selection: "last", stop: { semantic: 9 } },
  priority: 2,
};

// The multipart form has a binary image part.
type Form = NonNullable<
  paths["/v1/jobs"]["post"]["requestBody"]
>["content"]["multipart/form-data"];
export const form: Form = {
  image: "<binary>",
  instruction: "make the sky purple",
  options: { max_turns: 2 },
};

// `status` and `stop_reason` are enums: a switch over them is exhaustive.
export function describe(job: Job): string {
  const status: JobStatus = job.status;
  switch (status) {
    case "queued":
    case "running":
      return `in progress (${job.options.max_turns ?? 5} turns at most)`;
    case "succeeded":
      return `done: ${job.stop_reason ?? "?"}, turn ${job.result?.turn ?? 0}`;
    case "failed":
      return `failed: ${job.error?.code ?? "internal"}`;
    case "canceled":
      return "canceled";
    default: {
      const unreachable: never = status;
      return unreachable;
    }
  }
}

// A problem's `code` is one of the documented codes.
export function retryable(problem: Problem): boolean {
  const code: ErrorCode = problem.code;
  return code === "rate_limited" || code === "not_configured";
}

// The 202's `Location` header is declared.
type Created = paths["/v1/jobs"]["post"]["responses"][202];
export const location: Created["headers"]["Location"] = "/v1/jobs/0";
