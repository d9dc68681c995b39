/**
 * `--set key.path=value`: overrides of single keys, each parsed by its field's kind and checked
 * against the schema; the constraints between keys are checked once all overrides are in.
 */
import { inputError, UserError } from "../../util/errors.ts";
import { fieldAt, parseFlagValue, suggest, type Field, type Source } from "../../util/schema.ts";
import { crossCheck, runSchema, validateConfig } from "./schema.ts";
import type { RunConfig } from "./types.ts";

/** Applies `key.path=value` overrides, type-checked against the schema; errors name the key. */
export function applyOverrides(cfg: RunConfig, sets: readonly string[]): RunConfig {
  return applySets(runSchema(), cfg, sets, validateConfig, (c) => crossCheck(c, { file: "--set" }));
}

/**
 * `key.path=value` overrides for any config described by a schema (the run config, the SFT config):
 * each value is parsed as its field expects and validated over the config so far (`validate`, without
 * the constraints between keys), then `crossCheck` runs once all overrides are in.
 */
export function applySets<T>(
  schema: Field,
  cfg: T,
  sets: readonly string[],
  validate: (partial: unknown, where: Source, base: T, cross: boolean) => T,
  crossCheck: (cfg: T) => void,
): T {
  let out = cfg;
  for (const s of sets) {
    const eq = s.indexOf("=");
    if (eq <= 0) throw new UserError(`--set ${s}: expected key.path=value`);
    const key = s.slice(0, eq).trim();
    const text = s.slice(eq + 1);
    const path = key.split(".");
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
    out = validate(partial, { file: "--set" }, out, false);
  }
  if (sets.length > 0) crossCheck(out);
  return out;
}
