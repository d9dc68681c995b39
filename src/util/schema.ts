/**
 * A small schema for JSON settings (the run config, an environment's or an algorithm's options):
 * fields of five kinds, a checker that merges a partial value over a base, and the text parser of
 * `--set key.path=value`. Every error is a `UserError` naming the source (file or flag), the dotted
 * key and the value, and an unknown key gets the nearest known one ("did you mean"). Why this is
 * written here rather than taken from a validation library: docs/decisions/0007.
 */
import { inputError } from "./errors.ts";

export type Field =
  | { kind: "number"; int?: boolean; min?: number; max?: number; exclusiveMin?: boolean; nullable?: boolean }
  | { kind: "string"; nullable?: boolean; nonEmpty?: boolean }
  | { kind: "enum"; values: readonly string[] }
  | { kind: "boolean" }
  | { kind: "object"; fields: Record<string, Field>; nullable?: boolean };

/** Where a value came from, for error messages: a file path or a flag such as "--set". */
export interface Source {
  file?: string;
}

export const num = (o: Omit<Extract<Field, { kind: "number" }>, "kind"> = {}): Field => ({
  kind: "number",
  ...o,
});
export const int = (min: number, o: { nullable?: boolean; max?: number } = {}): Field => ({
  kind: "number",
  int: true,
  min,
  ...o,
});
export const str = (o: { nullable?: boolean; nonEmpty?: boolean } = {}): Field => ({ kind: "string", ...o });
export const oneOf = (values: readonly string[]): Field => ({ kind: "enum", values });
export const bool: Field = { kind: "boolean" };
export const obj = (fields: Record<string, Field>, nullable = false): Field => ({
  kind: "object",
  fields,
  nullable,
});

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "object") return "an object";
  return String(value);
}

/** What a field accepts, in words ("an integer >= 1 or null"). */
export function expectation(f: Field): string {
  switch (f.kind) {
    case "number": {
      let s = f.int ? "an integer" : "a number";
      if (f.min !== undefined) s += ` ${f.exclusiveMin ? ">" : ">="} ${f.min}`;
      if (f.max !== undefined) s += `${f.min !== undefined ? " and" : ""} <= ${f.max}`;
      return f.nullable ? `${s} or null` : s;
    }
    case "string":
      return `${f.nonEmpty ? "a non-empty string" : "a string"}${f.nullable ? " or null" : ""}`;
    case "enum":
      return `one of ${f.values.map((v) => `"${v}"`).join(", ")}`;
    case "boolean":
      return "true or false";
    case "object":
      return `an object${f.nullable ? " or null" : ""}`;
  }
}

/**
 * Checks `value` against field `f` and returns it merged over `base` (for objects: keys absent from
 * `value` keep the base's value; a key in neither is an error). `key` is the dotted path so far.
 */
export function check(f: Field, value: unknown, base: unknown, key: string, where: Source): unknown {
  const fail = (): never => {
    throw inputError({ ...where, key }, `expected ${expectation(f)}, got ${describe(value)}`);
  };
  if (value === null) {
    if ((f.kind === "number" || f.kind === "string" || f.kind === "object") && f.nullable) return null;
    fail();
  }
  switch (f.kind) {
    case "number": {
      if (typeof value !== "number" || !Number.isFinite(value)) return fail();
      if (f.int && !Number.isInteger(value)) fail();
      if (f.min !== undefined && (f.exclusiveMin ? value <= f.min : value < f.min)) fail();
      if (f.max !== undefined && value > f.max) fail();
      return value;
    }
    case "string":
      if (typeof value !== "string" || (f.nonEmpty && value.trim() === "")) fail();
      return value;
    case "enum":
      if (typeof value !== "string" || !f.values.includes(value)) fail();
      return value;
    case "boolean":
      if (typeof value !== "boolean") fail();
      return value;
    case "object": {
      if (typeof value !== "object" || Array.isArray(value)) return fail();
      const known = Object.keys(f.fields);
      const baseObj = base !== null && typeof base === "object" ? (base as Record<string, unknown>) : null;
      const out: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        // Own keys only: "constructor", "toString" or "__proto__" are not keys of a schema.
        const sub = Object.hasOwn(f.fields, k) ? f.fields[k] : undefined;
        const subKey = key ? `${key}.${k}` : k;
        if (!sub) {
          const hint = suggest(k, known);
          throw inputError(
            { ...where, key: subKey },
            `unknown key${hint ? ` (did you mean "${key ? `${key}.` : ""}${hint}"?)` : ""}; known keys here: ${known.join(", ")}`,
          );
        }
        out[k] = check(sub, v, baseObj?.[k], subKey, where);
      }
      for (const k of known) {
        if (Object.hasOwn(out, k)) continue;
        if (baseObj && Object.hasOwn(baseObj, k)) out[k] = baseObj[k];
        else
          throw inputError(
            { ...where, key: key ? `${key}.${k}` : k },
            `missing (expected ${expectation(f.fields[k]!)})`,
          );
      }
      return out;
    }
  }
}

/** The closest known key within edit distance 2, for "did you mean". */
export function suggest(key: string, known: readonly string[]): string | null {
  let best: string | null = null;
  let bestD = 3;
  for (const k of known) {
    const d = editDistance(key.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      best = k;
      bestD = d;
    }
  }
  return best;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The field at a dotted key path below `root`, or null. */
export function fieldAt(root: Field, path: readonly string[]): Field | null {
  let f: Field = root;
  for (const p of path) {
    if (f.kind !== "object") return null;
    const next: Field | undefined = Object.hasOwn(f.fields, p) ? f.fields[p] : undefined;
    if (!next) return null;
    f = next;
  }
  return f;
}

/** Parses the text of a `--set` value into the JSON value field `f` expects. */
export function parseFlagValue(f: Field, text: string, key: string, where: Source): unknown {
  if (text === "null") return null;
  switch (f.kind) {
    case "number": {
      const v = Number(text);
      if (text.trim() === "" || !Number.isFinite(v))
        throw inputError({ ...where, key }, `expected ${expectation(f)}, got ${JSON.stringify(text)}`);
      return v;
    }
    case "boolean":
      if (text === "true") return true;
      if (text === "false") return false;
      throw inputError({ ...where, key }, `expected true or false, got ${JSON.stringify(text)}`);
    case "string":
    case "enum":
      return text;
    case "object":
      try {
        return JSON.parse(text);
      } catch {
        throw inputError({ ...where, key }, `expected a JSON object, got ${JSON.stringify(text)}`);
      }
  }
}
