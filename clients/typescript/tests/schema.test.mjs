// src/schema.ts must be what openapi-typescript makes of the current
// openapi/openapi.json.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

test("the checked-in src/schema.ts matches a fresh generation", () => {
  const script = fileURLToPath(new URL("../scripts/schema.mjs", import.meta.url));
  const result = spawnSync(process.execPath, [script, "--check"], { encoding: "utf8" });
  assert.equal(result.status, 0, result.stderr + result.stdout);
});
