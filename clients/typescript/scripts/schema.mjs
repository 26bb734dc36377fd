// Generates src/schema.ts from the service's OpenAPI document with the pinned
// openapi-typescript, or with --check fails when the checked-in file differs
// from a fresh generation (the document changed and nobody regenerated).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const spec = join(root, "..", "..", "openapi", "openapi.json");
const checkedIn = join(root, "src", "schema.ts");
const cli = join(root, "node_modules", "openapi-typescript", "bin", "cli.js");

function generate(output) {
  execFileSync(process.execPath, [cli, spec, "--output", output], { cwd: root, stdio: ["ignore", "ignore", "inherit"] });
}

if (process.argv.includes("--check")) {
  const dir = mkdtempSync(join(tmpdir(), "editthinker-schema-"));
  try {
    const fresh = join(dir, "schema.ts");
    generate(fresh);
    if (readFileSync(fresh, "utf8") !== readFileSync(checkedIn, "utf8")) {
      console.error("src/schema.ts is out of date with openapi/openapi.json: run `npm run generate`");
      process.exit(1);
    }
    console.log("src/schema.ts matches openapi/openapi.json");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
} else {
  generate(checkedIn);
}
