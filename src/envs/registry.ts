/**
 * Environment registry: `getEnv(name, opts)` builds an environment family by name, and
 * `registerEnv` lets a user add their own (see docs/environments.md). A family may declare the
 * options a run config can set for it (a config block named after it, e.g. `hotpotqa.search`) and
 * its evaluation samples per task; the run config takes both from here and names no environment.
 * Shipped families load their modules eagerly (they are small); HotpotQA builds its search index
 * only on first use.
 */
import { UserError } from "../util/errors.ts";
import type { EnvConfig, EnvFamily, EnvOptions, Task } from "./types.ts";
import { FrozenLakeFamily, type FrozenLakeOptions } from "./frozenlake.ts";
import { SokobanFamily, type SokobanOptions } from "./sokoban.ts";
import { HOTPOT_CONFIG, HotpotFamily, type HotpotOptions } from "./hotpotqa.ts";

export type EnvFactory = (opts: EnvOptions) => EnvFamily<Task>;

const factories = new Map<string, { factory: EnvFactory; config: EnvConfig }>();

/** Adds an environment under `name`. Re-registering a name is an error unless `replace` is set. */
export function registerEnv(
  name: string,
  factory: EnvFactory,
  { replace = false, ...config }: EnvConfig & { replace?: boolean } = {},
): void {
  // Names every JavaScript object answers ("__proto__", "constructor", "toString"…) would be mistaken
  // for environments by plain lookups, in configs and on the command line.
  if (name in Object.prototype)
    throw new UserError(
      `environment name "${name}" is reserved (a built-in member name of JavaScript objects); pick another`,
    );
  if (!/^[a-z][a-z0-9_-]*$/.test(name))
    throw new UserError(`environment name "${name}" must be lower-case letters, digits, "-" or "_"`);
  if (factories.has(name) && !replace) throw new UserError(`environment "${name}" is already registered`);
  factories.set(name, { factory, config });
}

/** Names of every registered environment, sorted. */
export function knownEnvs(): string[] {
  return [...factories.keys()].sort();
}

/** What the family registered as `name` declares to the run config (nothing for an unknown name). */
export function envConfig(name: string): EnvConfig {
  return factories.get(name)?.config ?? {};
}

/** Builds the family registered as `name`; an unknown name is a `UserError` listing the known ones. */
export function getEnv(name: string, opts: EnvOptions = {}): EnvFamily<Task> {
  const entry = factories.get(name);
  if (!entry) throw new UserError(`unknown environment "${name}" (known: ${knownEnvs().join(", ")})`);
  return entry.factory(opts);
}

registerEnv("frozenlake", (opts) => new FrozenLakeFamily(opts as FrozenLakeOptions));
registerEnv("sokoban", (opts) => new SokobanFamily(opts as SokobanOptions));
registerEnv("hotpotqa", (opts) => new HotpotFamily(opts as HotpotOptions), HOTPOT_CONFIG);
