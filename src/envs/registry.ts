/**
 * Environment registry: `getEnv(name, opts)` builds an environment family by name, and
 * `registerEnv` lets a user add their own (see docs/environments.md). Shipped families load their
 * modules eagerly (they are small); HotpotQA builds its search index only on first use.
 */
import { UserError } from "../util/errors.ts";
import type { EnvFamily, Task } from "./types.ts";
import { FrozenLakeFamily, type FrozenLakeOptions } from "./frozenlake.ts";
import { SokobanFamily, type SokobanOptions } from "./sokoban.ts";
import { HotpotFamily, type HotpotOptions } from "./hotpotqa.ts";

/** Options passed through to a family's constructor; each family documents its own keys. */
export type EnvOptions = Record<string, unknown>;

export type EnvFactory = (opts: EnvOptions) => EnvFamily<Task>;

const factories = new Map<string, EnvFactory>();

/** Adds an environment under `name`. Re-registering a name is an error unless `replace` is set. */
export function registerEnv(name: string, factory: EnvFactory, { replace = false } = {}): void {
  // Names every JavaScript object answers ("__proto__", "constructor", "toString"…) would be mistaken
  // for environments by plain lookups, in configs and on the command line.
  if (name in Object.prototype)
    throw new UserError(
      `environment name "${name}" is reserved (a built-in member name of JavaScript objects); pick another`,
    );
  if (!/^[a-z][a-z0-9_-]*$/.test(name))
    throw new UserError(`environment name "${name}" must be lower-case letters, digits, "-" or "_"`);
  if (factories.has(name) && !replace) throw new UserError(`environment "${name}" is already registered`);
  factories.set(name, factory);
}

/** Names of every registered environment, sorted. */
export function knownEnvs(): string[] {
  return [...factories.keys()].sort();
}

/** Builds the family registered as `name`; an unknown name is a `UserError` listing the known ones. */
export function getEnv(name: string, opts: EnvOptions = {}): EnvFamily<Task> {
  const factory = factories.get(name);
  if (!factory) throw new UserError(`unknown environment "${name}" (known: ${knownEnvs().join(", ")})`);
  return factory(opts);
}

registerEnv("frozenlake", (opts) => new FrozenLakeFamily(opts as FrozenLakeOptions));
registerEnv("sokoban", (opts) => new SokobanFamily(opts as SokobanOptions));
registerEnv("hotpotqa", (opts) => new HotpotFamily(opts as HotpotOptions));
