/**
 * Bounds on every size a user can set, checked before any work starts, each derived from what holds
 * it: the number format or protocol that carries it, the model (its config.json), or this machine
 * (Node's heap, the RAM). An error names the key (or flag), the value and the limit, and says what
 * the limit comes from. `checkRunLimits` is called by the runner before a run's files are written and
 * by `erl eval` and `erl compare` before their engines start; `erl engine serve` checks its flags here.
 *
 * The limits:
 *   seed                ≤ 2^32 − 1: the TypeScript RNG (src/util/rng.ts) takes seeds modulo 2^32, so
 *                       a larger seed would silently repeat a smaller one's run.
 *   steps               ≤ 999,999: checkpoint directories are named step-NNNNNN and sorted as text.
 *   algo.n, eval.n      ≤ 4,096: the engine protocol's `sample` n (engine/erl_engine/protocol.py).
 *   timeouts            ≤ 2,147,483 s: Node's timers (2^31 − 1 ms; a longer one fires at once).
 *   token lengths       maxTokensPerTurn and maxReflectionTokens ≤ maxContextTokens (which rollouts
 *                       clamp to the model's max_position_embeddings); reflector.maxTokens ≤ 2^20.
 *   topK                ≤ the model's vocabulary; lora.rank ≤ its hidden size.
 *   episodes per step   E = tasks × attempts × stages (ERL: first attempt, reflection, retry = 3;
 *                       RLVR 1); an evaluation holds tasks × n episodes. All of a step's episodes are
 *                       held in Node's heap and their records are appended as one string, so
 *                         E × (32 KiB + 64 B × context)  ≤ heap limit / 2     (EPISODE_HEAP)
 *                         E × (4 KiB + 16 B × context)   ≤ 2^29 − 24 chars   (EPISODE_JSON, V8's longest string)
 *                       Measured by bench/limits-memory.ts: an ERL step holds at most 36 KiB + 45 B per
 *                       context token per episode, and writes 3–12 B of JSON per token with a
 *                       one-character-per-token tokenizer (real tokenizers: about 4 characters a token).
 *   engine memory       (model.device "cpu") one `sample` call holds keys and values for every row:
 *                         rows × context × (layers × 2 × kv heads × head dim × 4 B)
 *                           + rows × vocabulary × 12 B (logits, log-probs, probabilities)
 *                         ≤ RAM / 2,  rows = tasks × attempts (or evaluation tasks × n).
 *   other counts        ≤ 1,000,000 (checkpoint and eval cadence, memory slots, micro-batches).
 */
import { readFileSync } from "node:fs";
import { totalmem } from "node:os";
import { join } from "node:path";
import { getHeapStatistics } from "node:v8";
import { inputError, type UserError } from "../util/errors.ts";
import type { RunConfig } from "./config/types.ts";
import { attemptsPerTask, getAlgorithm } from "./algorithms/registry.ts";
import { evalSamplesPerTask } from "./config/options.ts";

export const SEED_MAX = 2 ** 32 - 1;
export const STEPS_MAX = 999_999;
export const SAMPLES_PER_PROMPT_MAX = 4096;
export const TIMEOUT_MAX_S = Math.floor((2 ** 31 - 1) / 1000);
export const API_TOKENS_MAX = 2 ** 20;
export const COUNT_MAX = 1_000_000;
/** V8's longest string on 64-bit builds (String::kMaxLength). */
export const STRING_MAX = 2 ** 29 - 24;
/** Heap and JSON bytes per episode, as fixed + perToken × context tokens (see the header). */
export const EPISODE_HEAP = { fixed: 32 * 1024, perToken: 64 };
export const EPISODE_JSON = { fixed: 4 * 1024, perToken: 16 };
/** KV bytes per element (fp32, the larger of the engine's dtypes) and per logit row element. */
const KV_ELEMENT_BYTES = 4;
const LOGIT_ROW_BYTES = 12;

/** What this machine can hold. */
export interface Machine {
  /** Node's heap limit (v8 heap_size_limit). */
  heapBytes: number;
  /** Physical memory. */
  memoryBytes: number;
}

export function thisMachine(): Machine {
  return { heapBytes: getHeapStatistics().heap_size_limit, memoryBytes: totalmem() };
}

/** What a model's config.json says about its sizes (null where it does not say). */
export interface ModelShape {
  maxPositions: number | null;
  vocabSize: number | null;
  hiddenSize: number | null;
  /** Keys and values per token: layers × 2 × kv heads × head dim (elements). */
  kvPerToken: number | null;
}

/** The sizes in a model directory's config.json; null when it has none or it is unreadable (the
 * engine reports that, naming the file). */
export function readModelShape(dir: string): ModelShape | null {
  let c: Record<string, unknown>;
  try {
    const v: unknown = JSON.parse(readFileSync(join(dir, "config.json"), "utf8").replace(/^\uFEFF/, ""));
    if (v === null || typeof v !== "object" || Array.isArray(v)) return null;
    c = v as Record<string, unknown>;
  } catch {
    return null;
  }
  // Multimodal configs keep the language model's sizes under text_config.
  if (c.text_config && typeof c.text_config === "object") c = { ...c, ...(c.text_config as object) };
  const pos = (k: string): number | null => {
    const v = c[k];
    return typeof v === "number" && Number.isSafeInteger(v) && v > 0 ? v : null;
  };
  const layers = pos("num_hidden_layers") ?? pos("n_layer");
  const heads = pos("num_attention_heads") ?? pos("n_head");
  const kvHeads = pos("num_key_value_heads") ?? heads;
  const hidden = pos("hidden_size") ?? pos("n_embd");
  const headDim = pos("head_dim") ?? (hidden && heads ? Math.floor(hidden / heads) : null);
  return {
    maxPositions: pos("max_position_embeddings") ?? pos("n_positions"),
    vocabSize: pos("vocab_size"),
    hiddenSize: hidden,
    kvPerToken: layers && kvHeads && headDim ? layers * 2 * kvHeads * headDim : null,
  };
}

const fmt = (n: number): string => (Number.isSafeInteger(n) ? n.toLocaleString("en-US") : String(n));
const mib = (b: number): string => `${Math.round(b / 2 ** 20).toLocaleString("en-US")} MiB`;

/** Where a key's value came from, for messages: a file, "--set", or a flag name per key. */
export interface Where {
  file?: string;
  /** Keys set by command-line flags (e.g. "eval.n" → "--n"): named so in errors. */
  flags?: Readonly<Record<string, string>>;
}

function fail(where: Where, key: string, problem: string): UserError {
  const flag = where.flags && Object.hasOwn(where.flags, key) ? where.flags[key] : undefined;
  if (flag !== undefined) return inputError({}, `${flag} ${problem}`);
  return inputError({ ...(where.file ? { file: where.file } : {}), key }, problem);
}

/** An integer in [min, max], or a clear error naming the key, the value and the limit with its reason. */
export function checkInt(
  where: Where,
  key: string,
  value: number,
  min: number,
  max: number,
  why: string,
): void {
  if (!Number.isInteger(value) || value < min)
    throw fail(where, key, `must be an integer >= ${fmt(min)}, got ${value}`);
  if (value > max) throw fail(where, key, `${fmt(value)} is over the limit of ${fmt(max)} (${why})`);
}

/** A seed: an integer in 0..2^32 − 1. */
export function checkSeed(where: Where, key: string, value: number): void {
  checkInt(where, key, value, 0, SEED_MAX, "seeds are taken modulo 2^32 by the run's random generator");
}

/** Each factor of a product of counts: its key, its value and its default (to blame the outlier). */
export interface Factor {
  key: string;
  value: number;
  usual: number;
}

/**
 * The product of `factors` (episodes, rows) must be at most `max`; otherwise the error names the
 * factor furthest above its usual value, with the largest value it could take.
 */
export function checkProduct(
  where: Where,
  factors: readonly Factor[],
  max: number,
  what: string,
  why: string,
): void {
  const total = factors.reduce((a, f) => a * f.value, 1);
  if (total <= max) return;
  const blame = [...factors].sort((a, b) => b.value / b.usual - a.value / a.usual)[0]!;
  const others = total / blame.value;
  const limit = Math.max(0, Math.floor(max / others));
  const product = factors.map((f) => `${f.key} ${fmt(f.value)}`).join(" × ");
  throw fail(
    where,
    blame.key,
    `${fmt(blame.value)} is over the limit of ${fmt(limit)} here: ${product} = ${fmt(total)} ${what}, ` +
      `at most ${fmt(Math.floor(max))} (${why})`,
  );
}

/** Episodes a step or an evaluation may hold, for episodes of `context` tokens. */
export function episodeBudget(context: number, m: Machine): { episodes: number; why: string } {
  const heapEach = EPISODE_HEAP.fixed + EPISODE_HEAP.perToken * context;
  const jsonEach = EPISODE_JSON.fixed + EPISODE_JSON.perToken * context;
  const byHeap = Math.floor(m.heapBytes / 2 / heapEach);
  const byString = Math.floor(STRING_MAX / jsonEach);
  return byHeap <= byString
    ? {
        episodes: byHeap,
        why: `episodes of up to ${fmt(context)} tokens take about ${Math.round(heapEach / 1024)} KiB each of Node's ${mib(m.heapBytes)} heap, half of which one step or evaluation may use`,
      }
    : {
        episodes: byString,
        why: `a step's episode records, up to ${Math.round(jsonEach / 1024)} KiB of JSON each, are written as one string of at most ${fmt(STRING_MAX)} characters`,
      };
}

/** Rows one engine `sample` call may hold on a CPU engine, or null when not known. */
export function sampleRowBudget(
  context: number,
  shape: ModelShape | null,
  m: Machine,
): { rows: number; why: string } | null {
  if (!shape?.kvPerToken) return null;
  const each = context * shape.kvPerToken * KV_ELEMENT_BYTES + (shape.vocabSize ?? 0) * LOGIT_ROW_BYTES;
  return {
    rows: Math.floor(m.memoryBytes / 2 / each),
    why: `each sequence of ${fmt(context)} tokens needs about ${mib(each)} of keys, values and logits in the engine; half of this machine's ${mib(m.memoryBytes)} of RAM`,
  };
}

/** Episodes per attempt in one training step: a first attempt, and for an algorithm that retries
 * (ERL) a reflection and a second attempt. */
export function stagesPerAttempt(cfg: RunConfig): number {
  return getAlgorithm(cfg.algo.name).retries ? 3 : 1;
}

export interface RunLimitsContext {
  where?: Where;
  /** The model's sizes (readModelShape of model.path); null skips the model's limits. */
  shape?: ModelShape | null;
  machine?: Machine;
  /** Tasks in the evaluation split, when known (data.evalTasks null means all of them). */
  evalSplitTasks?: number;
  /** Which parts to check: a training run (default) or an evaluation only. */
  only?: "eval";
}

/**
 * Every size of a run config against its limit (see the header). Throws a `UserError` naming the
 * first key over its limit.
 */
export function checkRunLimits(cfg: RunConfig, ctx: RunLimitsContext = {}): void {
  const where = ctx.where ?? {};
  const m = ctx.machine ?? thisMachine();
  const shape = ctx.shape ?? null;
  const int = (key: string, value: number | null, max: number, why: string, min = 1): void => {
    if (value !== null) checkInt(where, key, value, min, max, why);
  };
  const counted = "a count this large is a mistake";
  const a = cfg.algo;

  checkSeed(where, "seed", cfg.seed);
  int(
    "algo.maxTokensPerTurn",
    a.maxTokensPerTurn,
    a.maxContextTokens,
    "a turn fits in algo.maxContextTokens",
  );
  // An algorithm's own keys (ERL's reflection length, memory slots…) are read where present.
  const own = (k: string): number | null => (typeof a[k] === "number" ? (a[k] as number) : null);
  int(
    "algo.maxReflectionTokens",
    own("maxReflectionTokens"),
    a.maxContextTokens,
    "a reflection fits in algo.maxContextTokens",
  );
  // Rollouts clamp the context to the model's own window (src/algo/types.ts LoopOptions), so a larger
  // algo.maxContextTokens costs nothing more: the estimates below use the clamped length.
  const context = Math.min(a.maxContextTokens, shape?.maxPositions ?? Infinity);
  int(
    "reflector.maxTokens",
    cfg.reflector.maxTokens,
    API_TOKENS_MAX,
    "2^20 tokens, several MB of text per reply",
  );
  for (const s of ["attemptSampling", "reflectionSampling"]) {
    const topK = (a[s] as { topK?: unknown } | undefined)?.topK;
    if (shape?.vocabSize && typeof topK === "number")
      int(`algo.${s}.topK`, topK, shape.vocabSize, "the model's vocabulary size");
  }
  if (shape?.vocabSize)
    int("eval.sampling.topK", cfg.eval.sampling.topK, shape.vocabSize, "the model's vocabulary size");
  if (cfg.model.lora && shape?.hiddenSize)
    int("model.lora.rank", cfg.model.lora.rank, shape.hiddenSize, "the model's hidden size");
  for (const block of ["reflector", "policy"] as const)
    if (cfg[block].timeout > TIMEOUT_MAX_S)
      throw fail(
        where,
        `${block}.timeout`,
        `${cfg[block].timeout} is over the limit of ${fmt(TIMEOUT_MAX_S)} s (Node's timers hold at most 2^31 − 1 ms)`,
      );

  const evalN = evalSamplesPerTask(cfg);
  int("eval.n", cfg.eval.n, SAMPLES_PER_PROMPT_MAX, "the engine samples at most 4,096 sequences per prompt");
  int("data.evalTasks", cfg.data.evalTasks, COUNT_MAX, counted);
  const evalTasks = Math.min(cfg.data.evalTasks ?? Infinity, ctx.evalSplitTasks ?? Infinity);
  const budget = episodeBudget(context, m);
  const rows =
    cfg.model.device === "cpu" && cfg.policy.kind === "engine" ? sampleRowBudget(context, shape, m) : null;
  if (Number.isFinite(evalTasks)) {
    const evalFactors: Factor[] = [
      { key: "data.evalTasks", value: evalTasks, usual: 32 },
      { key: "eval.n", value: evalN, usual: 4 },
    ];
    checkProduct(where, evalFactors, budget.episodes, "evaluation episodes", budget.why);
    if (rows) checkProduct(where, evalFactors, rows.rows, "sequences in one sampling call", rows.why);
  }
  if (ctx.only === "eval") return;

  int("algo.n", a.n, SAMPLES_PER_PROMPT_MAX, "the engine samples at most 4,096 sequences per prompt");
  const n = attemptsPerTask(cfg);
  const stages = stagesPerAttempt(cfg);
  const stepFactors: Factor[] = [
    { key: "batchSize", value: cfg.batchSize, usual: 8 },
    { key: "algo.n", value: n, usual: 4 },
  ];
  checkProduct(
    where,
    [...stepFactors, { key: "episodes per attempt", value: stages, usual: Infinity }],
    budget.episodes,
    "episodes a step",
    budget.why,
  );
  if (rows) checkProduct(where, stepFactors, rows.rows, "sequences in one sampling call", rows.why);
  int("steps", cfg.steps, STEPS_MAX, "checkpoints are named step-NNNNNN");
  int("batchSize", cfg.batchSize, COUNT_MAX, counted);
  int("algo.memoryWorkers", own("memoryWorkers"), COUNT_MAX, counted);
  int("data.trainTasks", cfg.data.trainTasks, COUNT_MAX, counted);
  int("eval.every", cfg.eval.every, STEPS_MAX, "checkpoints are named step-NNNNNN", 0);
  int("checkpoint.every", cfg.checkpoint.every, STEPS_MAX, "checkpoints are named step-NNNNNN");
  int("checkpoint.keep", cfg.checkpoint.keep, STEPS_MAX, "checkpoints are named step-NNNNNN");
  int("loss.microBatchSize", cfg.loss.microBatchSize, COUNT_MAX, counted);
  int("loss.miniBatchTasks", cfg.loss.miniBatchTasks, COUNT_MAX, counted);
}
