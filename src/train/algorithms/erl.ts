/**
 * ERL and its variants as run-config algorithms: `erl` (the paper's), the ablations
 * `erl-no-memory`, `erl-no-reflection` and `erl-no-distill`, and `erl-icl` (in-context ERL: the loop
 * without weight updates; its memory is the artifact, docs/reflectors.md). All run `erlStep`
 * (src/algo/erl.ts) with flags, and share the `algo` keys declared here: the memory scope, the
 * reflection's sampling and token limit, and the reflection-advantage rule.
 */
import { erlStep } from "../../algo/erl.ts";
import type { ErlOptions } from "../../algo/types.ts";
import { inputError } from "../../util/errors.ts";
import { int, oneOf, type Field } from "../../util/schema.ts";
import { loopOptions, samplingField, samplingOptions } from "../config/attempts.ts";
import type { RunConfig, SamplingConfig } from "../config/types.ts";
import type { Algorithm } from "./types.ts";

/** The `algo` keys of the ERL family. */
export interface ErlAlgoConfig {
  memory: "global" | "perWorker";
  /** Number of memory slots in perWorker mode. */
  memoryWorkers: number;
  /** Reflection advantages: "grpo", or the reference's "reference-twice" quirk (docs/algorithms.md). */
  reflectionAdvantage: "grpo" | "reference-twice";
  reflectionSampling: SamplingConfig;
  maxReflectionTokens: number;
}

const SCHEMA: Record<string, Field> = {
  memory: oneOf(["global", "perWorker"]),
  memoryWorkers: int(1),
  reflectionAdvantage: oneOf(["grpo", "reference-twice"]),
  reflectionSampling: samplingField(),
  maxReflectionTokens: int(1),
};

const DEFAULTS: ErlAlgoConfig & Record<string, unknown> = {
  memory: "global",
  memoryWorkers: 8,
  reflectionAdvantage: "grpo",
  reflectionSampling: { temperature: 0.5, topP: 0.9, topK: null },
  maxReflectionTokens: 384,
};

/** The ERL keys of a validated config (the schema above checked them). */
export function erlAlgoConfig(cfg: RunConfig): ErlAlgoConfig {
  return cfg.algo as unknown as ErlAlgoConfig;
}

type Variant = Pick<ErlOptions, "noMemory" | "noReflection" | "noDistill">;
const PAPER: Variant = { noMemory: false, noReflection: false, noDistill: false };

/** `erlStep`'s options from the run config, for the variant `flags` (default: the paper's ERL). */
export function erlOptionsFrom(cfg: RunConfig, flags: Partial<Variant> = {}): ErlOptions {
  const a = cfg.algo;
  const e = erlAlgoConfig(cfg);
  return {
    ...loopOptions(cfg),
    n: a.n ?? ERL.attemptsPerTask,
    memory: e.memory === "global" ? { kind: "global" } : { kind: "perWorker", k: e.memoryWorkers },
    ...PAPER,
    ...flags,
    singleton: a.singleton,
    allEqual: a.allEqual,
    reflectionAdvantage: e.reflectionAdvantage,
    attemptSampling: samplingOptions(a.attemptSampling),
    reflectionSampling: samplingOptions(e.reflectionSampling),
    maxReflectionTokens: e.maxReflectionTokens,
    profile: a.profile,
  };
}

function variant(name: string, summary: string, flags: Partial<Variant>): Algorithm<ErlOptions> {
  return {
    name,
    summary,
    attemptsPerTask: 4,
    trains: true,
    usesMemory: true,
    deploysMemory: false,
    retries: true,
    schema: SCHEMA,
    defaults: DEFAULTS,
    options: (cfg) => erlOptionsFrom(cfg, flags),
    step: erlStep,
  };
}

export const ERL = variant(
  "erl",
  "the paper's ERL: reflect on failures, retry under the reflection, remember what worked, distill",
  {},
);
export const ERL_NO_MEMORY = variant("erl-no-memory", "ERL without cross-episode memory", { noMemory: true });
export const ERL_NO_REFLECTION = variant(
  "erl-no-reflection",
  "ERL without reflection: the retry sees its past attempt instead",
  { noReflection: true },
);
export const ERL_NO_DISTILL = variant("erl-no-distill", "ERL without the distillation samples", {
  noDistill: true,
});
/** In-context ERL: no weight update, so no distill samples (nor their scoring pass); one deployed rulebook. */
export const ERL_ICL: Algorithm<ErlOptions> = {
  ...variant("erl-icl", "in-context ERL: the loop without weight updates; the memory is the artifact", {
    noDistill: true,
  }),
  trains: false,
  deploysMemory: true,
  check(cfg, where) {
    if (erlAlgoConfig(cfg).memory !== "global")
      throw inputError(
        { ...where, key: "algo.memory" },
        'erl-icl deploys one rulebook, so it needs "global" memory',
      );
  },
};
