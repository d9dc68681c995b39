/**
 * The algorithm registry: every algorithm a run config can name, one descriptor each (types.ts).
 * A new algorithm is one file with its descriptor and one `registerAlgorithm` line below (or in a
 * module loaded with `erl --env-module <file>`); docs/user-guide.md shows one.
 */
import { UserError } from "../../util/errors.ts";
import type { Field } from "../../util/schema.ts";
import type { RunConfig } from "../config/types.ts";
import { ERL, ERL_ICL, ERL_NO_DISTILL, ERL_NO_MEMORY, ERL_NO_REFLECTION } from "./erl.ts";
import { RLVR } from "./rlvr.ts";
import type { Algorithm, StepOptions } from "./types.ts";

const algorithms = new Map<string, Algorithm>();

/**
 * Adds an algorithm. Its name must be new (unless `replace`), and every `algo` key it declares
 * must be new or declared alike by the algorithms that have it.
 */
export function registerAlgorithm<O extends StepOptions>(algo: Algorithm<O>, { replace = false } = {}): void {
  if (!/^[a-z][a-z0-9-]*$/.test(algo.name))
    throw new UserError(`algorithm name "${algo.name}" must be lower-case letters, digits or "-"`);
  if (algorithms.has(algo.name) && !replace)
    throw new UserError(`algorithm "${algo.name}" is already registered`);
  const [fields, defaults] = [algorithmFields(), algorithmDefaults()];
  for (const [k, f] of Object.entries(algo.schema)) {
    const same =
      JSON.stringify(fields[k]) === JSON.stringify(f) &&
      JSON.stringify(defaults[k]) === JSON.stringify(algo.defaults[k]);
    if (Object.hasOwn(fields, k) && !same)
      throw new UserError(
        `algorithm "${algo.name}": key algo.${k} is declared differently by another algorithm`,
      );
    if (!Object.hasOwn(algo.defaults, k))
      throw new UserError(`algorithm "${algo.name}": key algo.${k} has no default`);
  }
  algorithms.set(algo.name, algo as unknown as Algorithm);
}

/** Names of every registered algorithm, in registration order. */
export function knownAlgorithms(): string[] {
  return [...algorithms.keys()];
}

/** The algorithm registered as `name`; an unknown name is a UserError listing the known ones. */
export function getAlgorithm(name: string): Algorithm {
  const a = algorithms.get(name);
  if (!a) throw new UserError(`unknown algorithm "${name}" (known: ${knownAlgorithms().join(", ")})`);
  return a;
}

/** The `algo` keys declared by the registered algorithms, each once. */
export function algorithmFields(): Record<string, Field> {
  const out: Record<string, Field> = {};
  for (const a of algorithms.values()) Object.assign(out, a.schema);
  return out;
}

/** The defaults of those keys. */
export function algorithmDefaults(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const a of algorithms.values()) Object.assign(out, structuredClone(a.defaults));
  return out;
}

/** Attempts per task of a run: `algo.n`, else its algorithm's default. */
export function attemptsPerTask(cfg: RunConfig): number {
  return cfg.algo.n ?? getAlgorithm(cfg.algo.name).attemptsPerTask;
}

registerAlgorithm(ERL);
registerAlgorithm(RLVR);
registerAlgorithm(ERL_NO_MEMORY);
registerAlgorithm(ERL_NO_REFLECTION);
registerAlgorithm(ERL_NO_DISTILL);
registerAlgorithm(ERL_ICL);
