/**
 * `--set key.path=value`: overrides of single keys, each parsed by its field's kind and checked
 * against the schema; the constraints between keys are checked once all overrides are in.
 */
import { inputError, UserError } from "../../util/errors.ts";
import { fieldAt, parseFlagValue, suggest } from "../../util/schema.ts";
import { crossCheck, runSchema, validateConfig } from "./schema.ts";
import type { RunConfig } from "./types.ts";

/** Applies `key.path=value` overrides, type-checked against the schema; errors name the key. */
export function applyOverrides(cfg: RunConfig, sets: readonly string[]): RunConfig {
  let out = cfg;
  for (const s of sets) {
    const eq = s.indexOf("=");
    if (eq <= 0) throw new UserError(`--set ${s}: expected key.path=value`);
    const key = s.slice(0, eq).trim();
    const text = s.slice(eq + 1);
    const path = key.split(".");
    const schema = runSchema();
    const f = fieldAt(schema, path);
    if (!f) {
      const parent = fieldAt(schema, path.slice(0, -1));
      const known = parent && parent.kind === "object" ? Object.keys(parent.fields) : [];
      const hint = suggest(path[path.length - 1]!, known);
      throw inputError(
        { file: "--set", key },
        `unknown key${hint ? ` (did you mean "${[...path.slice(0, -1), hint].join(".")}"?)` : ""}`,
      );
    }
    const value = parseFlagValue(f, text, key, { file: "--set" });
    // Build the one-key partial object and validate it over the current config.
    let partial: unknown = value;
    for (let i = path.length - 1; i >= 0; i--) partial = { [path[i]!]: partial };
    // Constraints between keys are checked once all overrides are in (one --set may need another).
    out = validateConfig(partial, { file: "--set" }, out, false);
  }
  if (sets.length > 0) crossCheck(out, { file: "--set" });
  return out;
}
