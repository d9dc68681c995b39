/**
 * The run config: one typed object describing a training run (environment and data, model and
 * engine, algorithm and its options, optimiser and loss, evaluation, checkpoints, seed, run
 * directory). Config files are JSON; a preset is a file in `configs/` named without its extension.
 *
 * Validation is driven by one schema (`SCHEMA`) so that file loading, `--set key.path=value`
 * overrides and the docs agree: an unknown key or a value of the wrong type is a `UserError` naming
 * the key and the file (or the `--set` flag) it came from. A file gives only the keys it changes;
 * everything else takes the defaults below (the CPU-scale values, see docs/training.md).
 */
import { PROMPT_PROFILES, type PromptProfileName } from "../agent/prompts.ts";
import type { ErlOptions, EvalOptions, LearnerConfig, RlvrOptions, SamplingOptions } from "../algo/types.ts";
import type { AdamWConfig } from "../engine/api.ts";
import { knownEnvs, type EnvOptions } from "../envs/registry.ts";
import { HOTPOT_SEARCHES } from "../envs/hotpotqa.ts";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { inputError, UserError } from "../util/errors.ts";
import { KNOWN_MODELS } from "../models/registry.ts";

export const ALGOS = [
  "erl",
  "rlvr",
  "erl-no-memory",
  "erl-no-reflection",
  "erl-no-distill",
  "erl-icl",
] as const;
export type AlgoName = (typeof ALGOS)[number];
/** The shipped environments; `knownEnvs()` adds any registered with `--env-module`. */
export const ENVS = ["frozenlake", "sokoban", "hotpotqa"] as const;
export type EnvName = string;

export interface SamplingConfig {
  temperature: number;
  topP: number;
  topK: number | null;
}

/** An OpenAI-compatible chat endpoint (docs/reflectors.md). */
export interface ApiEndpointConfig {
  /** e.g. https://api.openai.com/v1, http://127.0.0.1:8000/v1 (`erl engine serve --openai`). */
  baseUrl: string | null;
  model: string | null;
  /** Name of the environment variable that holds the API key (the key itself is never in a config). */
  apiKeyEnv: string;
  /** Seconds per call. */
  timeout: number;
  /** Retries of a failed call (connection errors, 408, 409, 429, 5xx), with exponential back-off. */
  maxRetries: number;
  /** Calls in flight at once (1 suits a single local engine, which answers one call at a time). */
  concurrency: number;
  /** Prices per token (any currency), for the `…/cost` metric; null = not recorded. */
  pricePerInputToken: number | null;
  pricePerOutputToken: number | null;
}

export interface RunConfig {
  /** Free text shown in `erl train --help` listings and kept in config.json. */
  description: string;
  /** Run name = directory name under `runsDir`; null derives `<env>-<algo>-seed<seed>-<time>`. */
  name: string | null;
  runsDir: string;
  seed: number;
  env: EnvName;
  /** HotpotQA's options (ignored by the other environments). */
  hotpotqa: {
    /** The search tool's retriever: "bm25" (tuned BM25+, the default) or "dense" (E5 embeddings). */
    search: "bm25" | "dense";
  };
  data: {
    /** Use only the first N tasks of the (seed-shuffled) train split; null = all. */
    trainTasks: number | null;
    /** Evaluate on the first N tasks of the eval split (in file order); null = all. */
    evalTasks: number | null;
    evalSplit: "test" | "train";
    /** Shuffle the train split with the run seed (reshuffled each pass). */
    shuffle: boolean;
  };
  model: {
    /** A local HF causal-LM directory (e.g. models/erl-tiny or test/fixtures/tiny-model). */
    path: string;
    /** "auto": the engine measures (bf16 on CUDA with bf16; on CPU only where a probe shows it faster). */
    dtype: "auto" | "float32" | "bfloat16";
    device: "cpu" | "cuda" | "auto";
    /** LoRA adapters; null = full fine-tuning. */
    lora: { rank: number; alpha: number; dropout: number; targetModules: string } | null;
    /** Frozen reference for the KL term: "auto" = "base" with LoRA, "copy" without; "none" disables. */
    reference: "auto" | "copy" | "base" | "none";
    gradientCheckpointing: boolean;
  };
  engine: {
    /** A running engine server (`erl engine serve`); null starts a local child process. */
    url: string | null;
    /** Python interpreter for a local engine; null = $ERL_PYTHON or .venv/bin/python. */
    python: string | null;
    /** Who samples rollouts: the engine itself, or vLLM in its own process (src/engine/vllm.ts). */
    sampler: "engine" | "vllm";
    /** Python of the vLLM virtualenv; null = $ERL_VLLM_PYTHON or .venv-vllm/bin/python. */
    vllmPython: string | null;
  };
  /**
   * Who writes reflections: "policy" (the model being trained, as in the paper) or "openai" (any
   * OpenAI-compatible endpoint; its reflections are used but not trained).
   */
  reflector: ApiEndpointConfig & {
    kind: "policy" | "openai";
    /** null = algo.reflectionSampling's. */
    temperature: number | null;
    topP: number | null;
    /** The API's max_tokens for a reflection; null = algo.maxReflectionTokens. */
    maxTokens: number | null;
  };
  /**
   * The policy: "engine" (the model at model.path in the engine) or "openai" (an endpoint; only for
   * algo.name "erl-icl", which trains nothing).
   */
  policy: ApiEndpointConfig & { kind: "engine" | "openai" };
  algo: {
    name: AlgoName;
    /** Attempts per task; null = the algorithm's default (ERL 4, RLVR 10). */
    n: number | null;
    memory: "global" | "perWorker";
    /** Number of memory slots in perWorker mode. */
    memoryWorkers: number;
    singleton: "reward-as-advantage" | "zero";
    allEqual: "zero" | "drop";
    /** Reflection advantages: "grpo", or the reference's "reference-twice" quirk (docs/algorithms.md). */
    reflectionAdvantage: "grpo" | "reference-twice";
    profile: PromptProfileName;
    attemptSampling: SamplingConfig;
    reflectionSampling: SamplingConfig;
    maxReflectionTokens: number;
    maxTokensPerTurn: number;
    maxContextTokens: number;
    contextOverflow: "stop" | "shrink";
    turnTokenLimit: "step" | "stop";
  };
  steps: number;
  /**
   * Wall-clock budget in seconds of run time: training stops after the step during which it ran
   * out (then the final evaluation and checkpoint happen). null = no limit; `steps` still caps.
   */
  timeBudget: number | null;
  /** Tasks per training step. */
  batchSize: number;
  optim: {
    lr: number;
    weightDecay: number;
    beta1: number;
    beta2: number;
    eps: number;
    /** Global grad-norm clip; null disables. */
    gradClip: number | null;
  };
  loss: {
    clipLow: number;
    clipHigh: number;
    dualClip: number | null;
    klCoef: number;
    aggregation: "seq-mean-token-sum" | "token-mean";
    microBatchSize: number;
    /** Truncated importance sampling cap (π_trainer / π_sampler weight); null disables. */
    tisCap: number | null;
    /**
     * Tasks per PPO mini-batch (× attempts per task = sequences; verl's ppo_mini_batch_size), each
     * mini-batch its own optimiser step after a seeded shuffle; null = one step on the whole batch.
     */
    miniBatchTasks: number | null;
    /** Log-probs from logits / temperature in rollouts and training (verl: the sampling T). */
    temperature: number;
    /** Clamp on log-ratios before exp (verl: 20); null = none. */
    logRatioClamp: number | null;
    /** Cap on the per-token k3 KL (verl: 10); null = none. */
    klClamp: number | null;
  };
  eval: {
    /** Evaluate every K steps; 0 = only the final evaluation (if `final`). */
    every: number;
    final: boolean;
    /** Evaluate before the first step too (step 0), to have a starting point on the curves. */
    initial: boolean;
    /** Samples per task; null = spec default (4; HotpotQA 1). */
    n: number | null;
    sampling: SamplingConfig;
  };
  checkpoint: {
    /** Checkpoint every K steps (and always at the end). */
    every: number;
    /** Keep the newest K checkpoints (older ones are deleted once a newer one is complete). */
    keep: number;
  };
}

// ---------------------------------------------------------------------------------------------
// Schema

type Field =
  | { kind: "number"; int?: boolean; min?: number; max?: number; exclusiveMin?: boolean; nullable?: boolean }
  | { kind: "string"; nullable?: boolean; nonEmpty?: boolean }
  | { kind: "enum"; values: readonly string[] }
  | { kind: "boolean" }
  | { kind: "object"; fields: Record<string, Field>; nullable?: boolean };

const num = (o: Omit<Extract<Field, { kind: "number" }>, "kind"> = {}): Field => ({ kind: "number", ...o });
const int = (min: number, o: { nullable?: boolean; max?: number } = {}): Field => ({
  kind: "number",
  int: true,
  min,
  ...o,
});
const str = (o: { nullable?: boolean; nonEmpty?: boolean } = {}): Field => ({ kind: "string", ...o });
const oneOf = (values: readonly string[]): Field => ({ kind: "enum", values });
const bool: Field = { kind: "boolean" };
const obj = (fields: Record<string, Field>, nullable = false): Field => ({
  kind: "object",
  fields,
  nullable,
});

const samplingSchema = (): Field =>
  obj({
    temperature: num({ min: 0 }),
    topP: num({ min: 0, max: 1, exclusiveMin: true }),
    topK: int(1, { nullable: true }),
  });

const endpointFields = (): Record<string, Field> => ({
  baseUrl: str({ nullable: true, nonEmpty: true }),
  model: str({ nullable: true, nonEmpty: true }),
  apiKeyEnv: str({ nonEmpty: true }),
  timeout: num({ min: 0, exclusiveMin: true }),
  maxRetries: int(0, { max: 20 }),
  concurrency: int(1, { max: 256 }),
  pricePerInputToken: num({ min: 0, nullable: true }),
  pricePerOutputToken: num({ min: 0, nullable: true }),
});

export const SCHEMA: Field = obj({
  description: str(),
  name: str({ nullable: true, nonEmpty: true }),
  runsDir: str({ nonEmpty: true }),
  seed: int(0),
  // A getter: environments registered by --env-module modules are known only at run time.
  env: {
    kind: "enum",
    get values() {
      return knownEnvs();
    },
  },
  hotpotqa: obj({ search: oneOf(HOTPOT_SEARCHES) }),
  data: obj({
    trainTasks: int(1, { nullable: true }),
    evalTasks: int(1, { nullable: true }),
    evalSplit: oneOf(["test", "train"]),
    shuffle: bool,
  }),
  model: obj({
    path: str({ nonEmpty: true }),
    dtype: oneOf(["auto", "float32", "bfloat16"]),
    device: oneOf(["cpu", "cuda", "auto"]),
    lora: obj(
      {
        rank: int(1),
        alpha: num({ min: 0, exclusiveMin: true }),
        dropout: num({ min: 0, max: 1 }),
        targetModules: str({ nonEmpty: true }),
      },
      true,
    ),
    reference: oneOf(["auto", "copy", "base", "none"]),
    gradientCheckpointing: bool,
  }),
  engine: obj({
    url: str({ nullable: true, nonEmpty: true }),
    python: str({ nullable: true, nonEmpty: true }),
    sampler: oneOf(["engine", "vllm"]),
    vllmPython: str({ nullable: true, nonEmpty: true }),
  }),
  reflector: obj({
    kind: oneOf(["policy", "openai"]),
    ...endpointFields(),
    temperature: num({ min: 0, max: 2, nullable: true }),
    topP: num({ min: 0, max: 1, exclusiveMin: true, nullable: true }),
    maxTokens: int(1, { nullable: true }),
  }),
  policy: obj({ kind: oneOf(["engine", "openai"]), ...endpointFields() }),
  algo: obj({
    name: oneOf(ALGOS),
    n: int(1, { nullable: true }),
    memory: oneOf(["global", "perWorker"]),
    memoryWorkers: int(1),
    singleton: oneOf(["reward-as-advantage", "zero"]),
    allEqual: oneOf(["zero", "drop"]),
    reflectionAdvantage: oneOf(["grpo", "reference-twice"]),
    profile: oneOf(PROMPT_PROFILES),
    attemptSampling: samplingSchema(),
    reflectionSampling: samplingSchema(),
    maxReflectionTokens: int(1),
    maxTokensPerTurn: int(1),
    maxContextTokens: int(16),
    contextOverflow: oneOf(["stop", "shrink"]),
    turnTokenLimit: oneOf(["step", "stop"]),
  }),
  steps: int(1),
  timeBudget: num({ min: 0, exclusiveMin: true, nullable: true }),
  batchSize: int(1),
  optim: obj({
    lr: num({ min: 0 }),
    weightDecay: num({ min: 0 }),
    beta1: num({ min: 0, max: 1 }),
    beta2: num({ min: 0, max: 1 }),
    eps: num({ min: 0, exclusiveMin: true }),
    gradClip: num({ min: 0, exclusiveMin: true, nullable: true }),
  }),
  loss: obj({
    clipLow: num({ min: 0, max: 1 }),
    clipHigh: num({ min: 0 }),
    dualClip: num({ min: 1, exclusiveMin: true, nullable: true }),
    klCoef: num({ min: 0 }),
    aggregation: oneOf(["seq-mean-token-sum", "token-mean"]),
    microBatchSize: int(1),
    tisCap: num({ min: 0, exclusiveMin: true, nullable: true }),
    miniBatchTasks: int(1, { nullable: true }),
    temperature: num({ min: 0, exclusiveMin: true }),
    logRatioClamp: num({ min: 0, exclusiveMin: true, nullable: true }),
    klClamp: num({ min: 0, exclusiveMin: true, nullable: true }),
  }),
  eval: obj({
    every: int(0),
    final: bool,
    initial: bool,
    n: int(1, { nullable: true }),
    sampling: samplingSchema(),
  }),
  checkpoint: obj({ every: int(1), keep: int(1) }),
});

function defaultEndpoint(): ApiEndpointConfig {
  return {
    baseUrl: null,
    model: null,
    apiKeyEnv: "OPENAI_API_KEY",
    timeout: 60,
    maxRetries: 2,
    concurrency: 4,
    pricePerInputToken: null,
    pricePerOutputToken: null,
  };
}

/**
 * The defaults: CPU scale for erl-tiny on FrozenLake; presets and files override them. This is the
 * project's one table of defaults — the algorithm options, the learner's loss settings and the
 * optimiser all take theirs from here (through `erlOptionsFrom` and its siblings below); the paper's
 * values live only in the paper presets (configs/*-paper.json).
 */
export function defaultConfig(): RunConfig {
  return {
    description: "",
    name: null,
    runsDir: "runs",
    seed: 0,
    env: "frozenlake",
    hotpotqa: { search: "bm25" },
    data: { trainTasks: null, evalTasks: 32, evalSplit: "test", shuffle: true },
    model: {
      path: "models/erl-tiny",
      dtype: "auto",
      device: "cpu",
      lora: null,
      reference: "auto",
      gradientCheckpointing: false,
    },
    engine: { url: null, python: null, sampler: "engine", vllmPython: null },
    reflector: {
      kind: "policy",
      ...defaultEndpoint(),
      temperature: null,
      topP: null,
      maxTokens: null,
    },
    policy: { kind: "engine", ...defaultEndpoint() },
    algo: {
      name: "erl",
      n: null,
      memory: "global",
      memoryWorkers: 8,
      singleton: "reward-as-advantage",
      allEqual: "zero",
      reflectionAdvantage: "grpo",
      profile: "compact",
      attemptSampling: { temperature: 0.7, topP: 1, topK: null },
      reflectionSampling: { temperature: 0.5, topP: 0.9, topK: null },
      maxReflectionTokens: 384,
      maxTokensPerTurn: 48,
      maxContextTokens: 2048,
      contextOverflow: "stop",
      turnTokenLimit: "step",
    },
    steps: 20,
    timeBudget: null,
    batchSize: 8,
    optim: { lr: 1e-5, weightDecay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, gradClip: 1 },
    loss: {
      clipLow: 0.2,
      clipHigh: 0.28,
      dualClip: 3,
      klCoef: 0.001,
      aggregation: "seq-mean-token-sum",
      microBatchSize: 8,
      tisCap: null,
      temperature: 1,
      logRatioClamp: null,
      klClamp: null,
      miniBatchTasks: null,
    },
    eval: {
      every: 5,
      final: true,
      initial: true,
      n: null,
      sampling: { temperature: 0.7, topP: 0.8, topK: 20 },
    },
    checkpoint: { every: 5, keep: 2 },
  };
}

// ---------------------------------------------------------------------------------------------
// Validation

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "object") return "an object";
  return String(value);
}

function expectation(f: Field): string {
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
 * `value` keep the base's value). `where` names the source for error messages.
 */
function check(f: Field, value: unknown, base: unknown, key: string, where: { file?: string }): unknown {
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
        // Own keys only: "constructor", "toString" or "__proto__" are not config keys.
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
function suggest(key: string, known: readonly string[]): string | null {
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

/** The options a run passes to its environment family's constructor. */
export function envOptions(cfg: RunConfig): EnvOptions {
  return cfg.env === "hotpotqa" ? { search: cfg.hotpotqa.search } : {};
}

/** Validates a partial config object and merges it over `base` (default: `defaultConfig()`). */
export function validateConfig(
  value: unknown,
  where: { file?: string } = {},
  base: RunConfig = defaultConfig(),
  cross = true,
): RunConfig {
  const cfg = check(SCHEMA, value, base, "", where) as RunConfig;
  if (cross) crossCheck(cfg, where);
  return cfg;
}

/** Constraints between keys. */
function crossCheck(cfg: RunConfig, where: { file?: string }): void {
  if (cfg.model.reference === "base" && !cfg.model.lora)
    throw inputError(
      { ...where, key: "model.reference" },
      '"base" needs LoRA (model.lora); use "copy" for full fine-tuning',
    );
  if (cfg.loss.clipHigh <= 0) throw inputError({ ...where, key: "loss.clipHigh" }, "must be > 0");
  for (const [block, api] of [
    ["reflector", cfg.reflector.kind === "openai"],
    ["policy", cfg.policy.kind === "openai"],
  ] as const) {
    if (!api) continue;
    for (const k of ["baseUrl", "model"] as const)
      if (cfg[block][k] === null)
        throw inputError({ ...where, key: `${block}.${k}` }, `required when ${block}.kind is "openai"`);
    if (!/^https?:\/\//.test(cfg[block].baseUrl!))
      throw inputError({ ...where, key: `${block}.baseUrl` }, "must start with http:// or https://");
  }
  if (cfg.policy.kind === "openai" && cfg.algo.name !== "erl-icl")
    throw inputError(
      { ...where, key: "policy.kind" },
      `an API policy cannot be trained: "openai" needs algo.name "erl-icl" (got "${cfg.algo.name}")`,
    );
  if (cfg.algo.name === "erl-icl" && cfg.algo.memory !== "global")
    throw inputError(
      { ...where, key: "algo.memory" },
      'erl-icl deploys one rulebook, so it needs "global" memory',
    );
}

// ---------------------------------------------------------------------------------------------
// Files, presets and --set

/** The folder holding the shipped presets. */
export function presetsDir(): string {
  return fileURLToPath(new URL("../../configs/", import.meta.url));
}

/** Names of the shipped presets (file names without `.json`). */
export function listPresets(): string[] {
  const dir = presetsDir();
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -5))
    .sort();
}

/** Resolves `--config` (a path to a JSON file, or a preset name) to a file path. */
export function resolveConfigPath(spec: string): string {
  if (existsSync(spec) && statSync(spec).isFile()) return spec;
  if (existsSync(spec) && statSync(spec).isDirectory())
    throw new UserError(
      `--config ${spec}: is a folder, not a config file (give a JSON file or a preset name)`,
    );
  const preset = join(presetsDir(), spec.endsWith(".json") ? spec : `${spec}.json`);
  if (!isAbsolute(spec) && !spec.includes("/") && existsSync(preset)) return preset;
  const presets = listPresets();
  throw new UserError(
    `--config ${spec}: no such file and no preset of that name${presets.length ? ` (presets: ${presets.join(", ")})` : ""}`,
  );
}

/** Reads and validates a config file (over the defaults). */
export function loadConfigFile(file: string): RunConfig {
  let raw: unknown;
  try {
    // A byte-order mark (some editors save UTF-8 with one) is not part of the JSON.
    raw = JSON.parse(readFileSync(file, "utf8").replace(/^\uFEFF/, ""));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw inputError({ file }, "file not found");
    throw inputError({ file }, `not valid JSON (${(e as Error).message})`);
  }
  return validateConfig(raw, { file });
}

/** Looks up the schema field for a dotted key path, or null. */
function fieldAt(path: string[]): Field | null {
  let f: Field = SCHEMA;
  for (const p of path) {
    if (f.kind !== "object") return null;
    const next: Field | undefined = Object.hasOwn(f.fields, p) ? f.fields[p] : undefined;
    if (!next) return null;
    f = next;
  }
  return f;
}

/** Parses the text of a `--set` value into the JSON value the field expects. */
function parseSetValue(f: Field, text: string, key: string): unknown {
  const where = { file: "--set" };
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

/** Applies `key.path=value` overrides, type-checked against the schema; errors name the key. */
export function applyOverrides(cfg: RunConfig, sets: readonly string[]): RunConfig {
  let out = cfg;
  for (const s of sets) {
    const eq = s.indexOf("=");
    if (eq <= 0) throw new UserError(`--set ${s}: expected key.path=value`);
    const key = s.slice(0, eq).trim();
    const text = s.slice(eq + 1);
    const path = key.split(".");
    const f = fieldAt(path);
    if (!f) {
      const parent = fieldAt(path.slice(0, -1));
      const known = parent && parent.kind === "object" ? Object.keys(parent.fields) : [];
      const hint = suggest(path[path.length - 1]!, known);
      throw inputError(
        { file: "--set", key },
        `unknown key${hint ? ` (did you mean "${[...path.slice(0, -1), hint].join(".")}"?)` : ""}`,
      );
    }
    const value = parseSetValue(f, text, key);
    // Build the one-key partial object and validate it over the current config.
    let partial: unknown = value;
    for (let i = path.length - 1; i >= 0; i--) partial = { [path[i]!]: partial };
    // Constraints between keys are checked once all overrides are in (one --set may need another).
    out = validateConfig(partial, { file: "--set" }, out, false);
  }
  if (sets.length > 0) crossCheck(out, { file: "--set" });
  return out;
}

/** Config from `--config` (file or preset; omitted = defaults) plus `--set` overrides. */
export function buildConfig(
  spec: string | undefined,
  sets: readonly string[],
): { config: RunConfig; source: string } {
  const source = spec ? resolveConfigPath(spec) : "(defaults)";
  const base = spec ? loadConfigFile(source) : defaultConfig();
  return { config: applyOverrides(base, sets), source };
}

/** How to get a missing model directory that the project knows how to build. */
function missingModelHint(path: string): string {
  const installable = KNOWN_MODELS.find(
    (m) => m.source.kind !== "shipped" && resolve(m.dir) === resolve(path),
  );
  if (installable) return ` (install it with \`npx erl models install ${installable.name}\`)`;
  if (path.includes("erl-tiny")) return " (erl-tiny is built with `npx erl pretrain`; see docs/erl-tiny.md)";
  return "";
}

/** Resolves `model.path` against the working directory and checks it is a model directory. */
export function checkModelPath(cfg: RunConfig): string {
  const path = resolve(cfg.model.path);
  if (!existsSync(path))
    throw inputError(
      { key: "model.path" },
      `model directory ${cfg.model.path} does not exist${missingModelHint(cfg.model.path)}`,
    );
  if (!statSync(path).isDirectory() || !existsSync(join(path, "config.json")))
    throw inputError(
      { key: "model.path" },
      `${cfg.model.path} is not an HF model directory (no config.json)`,
    );
  return path;
}

/** Default attempts per task for an algorithm (spec §1, §4). */
export function attemptsPerTask(cfg: RunConfig): number {
  return cfg.algo.n ?? (cfg.algo.name === "rlvr" ? 10 : 4);
}

// ---------------------------------------------------------------------------------------------
// Config → algorithm options: what the run config (and so its defaults) means for the step
// functions, the learner and the optimiser (src/algo/types.ts).

function sampling(s: SamplingConfig): SamplingOptions {
  return { temperature: s.temperature, topP: s.topP, ...(s.topK !== null ? { topK: s.topK } : {}) };
}

function loopOptions(cfg: RunConfig) {
  return {
    logprobTemperature: cfg.loss.temperature,
    maxTokensPerTurn: cfg.algo.maxTokensPerTurn,
    maxContextTokens: cfg.algo.maxContextTokens,
    contextOverflow: cfg.algo.contextOverflow,
    turnTokenLimit: cfg.algo.turnTokenLimit,
  };
}

export function erlOptionsFrom(cfg: RunConfig): ErlOptions {
  const a = cfg.algo;
  return {
    ...loopOptions(cfg),
    n: attemptsPerTask(cfg),
    memory: a.memory === "global" ? { kind: "global" } : { kind: "perWorker", k: a.memoryWorkers },
    noMemory: a.name === "erl-no-memory",
    noReflection: a.name === "erl-no-reflection",
    // erl-icl updates no weights, so it needs no distill samples (nor their scoring pass).
    noDistill: a.name === "erl-no-distill" || a.name === "erl-icl",
    singleton: a.singleton,
    allEqual: a.allEqual,
    reflectionAdvantage: a.reflectionAdvantage,
    attemptSampling: sampling(a.attemptSampling),
    reflectionSampling: sampling(a.reflectionSampling),
    maxReflectionTokens: a.maxReflectionTokens,
    profile: a.profile,
  };
}

export function rlvrOptionsFrom(cfg: RunConfig): RlvrOptions {
  return {
    ...loopOptions(cfg),
    n: attemptsPerTask(cfg),
    singleton: cfg.algo.singleton,
    allEqual: cfg.algo.allEqual,
    attemptSampling: sampling(cfg.algo.attemptSampling),
    profile: cfg.algo.profile,
  };
}

export function evalOptionsFrom(cfg: RunConfig): EvalOptions {
  return {
    ...loopOptions(cfg),
    n: cfg.eval.n ?? (cfg.env === "hotpotqa" ? 1 : 4),
    sampling: sampling(cfg.eval.sampling),
    profile: cfg.algo.profile,
    split: cfg.data.evalSplit,
  };
}

export function learnerConfigFrom(cfg: RunConfig): LearnerConfig {
  const { miniBatchTasks, ...loss } = cfg.loss;
  // verl counts ppo_mini_batch_size in tasks and multiplies it by n.
  return { ...loss, miniBatchSize: miniBatchTasks === null ? null : miniBatchTasks * attemptsPerTask(cfg) };
}

export function optimConfigFrom(cfg: RunConfig): AdamWConfig {
  const o = cfg.optim;
  return {
    lr: o.lr,
    betas: [o.beta1, o.beta2],
    eps: o.eps,
    weightDecay: o.weightDecay,
    ...(o.gradClip !== null ? { gradClip: o.gradClip } : {}),
  };
}
