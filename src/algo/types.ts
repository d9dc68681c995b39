/**
 * The contract between the algorithms (`src/algo/`) and whoever runs them (`src/train/`, the CLI):
 * the options, the training sample, the run-file records, the step result and the signatures of the
 * step functions. The options have no defaults here: their one table of defaults is the run config's
 * (src/train/config/defaults.ts, mapped onto these types by the algorithms' descriptors in
 * src/train/algorithms/ and by src/train/config/options.ts), and the paper's values live in the
 * paper presets (configs/*-paper.json). Implementations: `erl.ts` (erlStep), `rlvr.ts` (rlvrStep),
 * `learner.ts` (trainOnSamples), `eval.ts` (evaluate), `memory.ts` (MemoryStore).
 * docs/algorithms.md describes every option in prose.
 */
import type { AdamWConfig, Aggregation, ChatMessage, Engine } from "../engine/api.ts";
import type { EnvFamily, StopReason, Task } from "../envs/types.ts";
import type { Rng } from "../util/rng.ts";
import type { ModelBackend } from "../agent/backend.ts";
import type { PromptProfileName } from "../agent/prompts.ts";

export type { ModelBackend } from "../agent/backend.ts";

// ---------------------------------------------------------------------------------------------
// Options

export type { PromptProfileName } from "../agent/prompts.ts";

/** Sampling settings of one kind of model call. */
export interface SamplingOptions {
  temperature: number;
  topP?: number;
  topK?: number;
}

/** How the multi-turn loop treats long conversations and long replies. */
export interface LoopOptions {
  /** Temperature of the log-probs recorded with sampled tokens; the learner's `temperature`. */
  logprobTemperature: number;
  /** Token limit of one assistant turn (the engine's `maxTokens`). */
  maxTokensPerTurn: number;
  /** Context window used for rollouts (prompt + all turns). Clamped to the model's own window. */
  maxContextTokens: number;
  /**
   * Before a turn, if the conversation plus `maxTokensPerTurn` would not fit:
   * "stop" ends the episode (stop reason "context", reward so far);
   * "shrink" lowers this turn's token limit to what fits, stopping only when fewer than 8 tokens fit.
   */
  contextOverflow: "stop" | "shrink";
  /**
   * When a reply hits `maxTokensPerTurn` without ending: "step" passes the cut text to the
   * environment as the action (usually invalid, costing a step); "stop" ends the episode with stop
   * reason "context".
   */
  turnTokenLimit: "step" | "stop";
}

/** Memory scope (spec §1.5): one rulebook for the run, or one slot per worker position. */
export type MemoryMode = { kind: "global" } | { kind: "perWorker"; k: number };

/** GRPO rule for a group with a single member (common for reflections and second attempts). */
export type SingletonRule = "reward-as-advantage" | "zero";
/** GRPO rule for a group whose rewards are all equal: keep with A = 0, or drop its samples. */
export type AllEqualRule = "zero" | "drop";

export interface ErlOptions extends LoopOptions {
  /** Attempts per task (first attempts; each failure gets one reflection and one second attempt). */
  n: number;
  memory: MemoryMode;
  /** Reflection always starts from the initial prompt; memory is never written. */
  noMemory: boolean;
  /** No Δ: the second attempt sees the initial prompt + its past attempt; memory is never written. */
  noReflection: boolean;
  /** Emit no distill samples. */
  noDistill: boolean;
  singleton: SingletonRule;
  allEqual: AllEqualRule;
  /**
   * "grpo": each reflection counted once. "reference-twice": the reference's quirk, each reflection
   * emitted and counted twice (a lone reflection then gets A = 0); see `withAdvantages`.
   */
  reflectionAdvantage: "grpo" | "reference-twice";
  attemptSampling: SamplingOptions;
  reflectionSampling: SamplingOptions;
  /** Token limit of a reflection (Δ is a whole rulebook, longer than one action). */
  maxReflectionTokens: number;
  profile: PromptProfileName;
}

export interface RlvrOptions extends LoopOptions {
  /** First attempts per task. */
  n: number;
  singleton: SingletonRule;
  allEqual: AllEqualRule;
  attemptSampling: SamplingOptions;
  profile: PromptProfileName;
}

export interface EvalOptions extends LoopOptions {
  /** Samples per task. */
  n: number;
  sampling: SamplingOptions;
  profile: PromptProfileName;
  /** Label for the rollout records (`eval/split`), e.g. "test". */
  split: string;
  /**
   * The system prompt of the evaluated attempts; absent = the profile's initial prompt (the paper's
   * evaluation). erl-icl passes its memory's rulebook, its deployed artifact.
   */
  system?: string;
}

// ---------------------------------------------------------------------------------------------
// Samples

export type Stage = "first" | "reflection" | "second" | "distill";

/**
 * One training sequence. `ids`, `mask` and `logprobs` are aligned per token: `mask[i]` = 1 when
 * ids[i] was sampled by the policy in this sequence's context and is trained, `logprobs[i]` is the
 * log-prob of ids[i] given ids[0..i) at rollout time (0 where mask is 0). For distill samples the
 * log-probs are recomputed under the distill context (the initial prompt), so the PPO ratio starts at 1.
 */
export interface TrainSample {
  stage: Stage;
  taskId: string;
  /** The episode this sample comes from (for first/second/distill) or reflects on (reflection). */
  episode: string;
  /** GRPO group key `${taskId}|${stage}`; distill samples have no group and carry "". */
  group: string;
  ids: number[];
  mask: (0 | 1)[];
  logprobs: number[];
  /** The episode reward that scores this sample (r1 for first; r2 for reflection, second, distill). */
  reward: number;
  /** Scalar advantage broadcast to every trained token. For distill: the distill weight. */
  advantage: number;
  /** Distill samples only: max(r2, 0). */
  distillWeight?: number;
}

// ---------------------------------------------------------------------------------------------
// Run-file records (docs/run-format.md)

export interface RolloutTraceStep {
  observation: string;
  action: string;
  effective: boolean;
  valid: boolean;
  comment: string;
  reward: number;
  /** Extension: the environment's structured step details, compacted (positions, search hits). */
  info?: Record<string, unknown>;
}

export interface RolloutRecord {
  step: number;
  task: string;
  episode: string;
  group: string;
  stage: "first" | "second" | "eval";
  attempt: number;
  reward: number;
  success: boolean;
  stopReason: StopReason;
  system: string;
  messages: ChatMessage[];
  trace: RolloutTraceStep[];
  feedback: string;
  reflection?: { prompt: string; text: string; rulebook: string; memoryBefore: string | null };
  env: string;
  taskData?: Record<string, unknown>;
  /** Extension: the memory slot the attempt belongs to in perWorker mode. */
  worker?: number;
  /** Extension: tokens sampled in this episode (all turns). */
  sampledTokens?: number;
  /** Extension: what the environment showed after the last action (e.g. the final board). */
  finalObservation?: string;
}

export interface MemoryWrite {
  step: number;
  episode: string;
  task: string;
  worker?: number;
  rulebook: string;
  previous: string | null;
}

// ---------------------------------------------------------------------------------------------
// Memory

/** JSON form of a memory store, for checkpoints. */
export interface MemoryJSON {
  mode: MemoryMode;
  slots: (string | null)[];
}

/** Rulebook memory (implemented in memory.ts). Read only by reflection; never by attempts or eval. */
export interface MemoryStore {
  readonly mode: MemoryMode;
  /** The memory slot of the attempt at this position in the batch (always 0 in global mode). */
  slotFor(position: number): number;
  read(slot: number): string | null;
  /** Applies writes in order (later writes to the same slot win). */
  apply(writes: readonly MemoryWrite[]): void;
  toJSON(): MemoryJSON;
}

// ---------------------------------------------------------------------------------------------
// Step functions

/** What a step may do with memory: read it. The runner, the only writer, applies a step's writes. */
export type MemoryView = Pick<MemoryStore, "mode" | "slotFor" | "read">;

/** Everything a step needs. The engine's sample calls get seeds drawn from `rng`. */
export interface AlgoContext {
  env: EnvFamily;
  model: ModelBackend;
  memory: MemoryView;
  rng: Rng;
  /** The step number being run (1-based), written into records and episode ids. */
  step: number;
  /** Called with coarse progress events (e.g. for a progress bar). */
  onProgress?: (event: ProgressEvent) => void;
  /**
   * Writes the reflections instead of the policy (an OpenAI-compatible endpoint, docs/reflectors.md).
   * Its replies are not the policy's tokens, so they are used but never trained.
   */
  reflector?: ModelBackend;
}

/** Evaluation never sees memory: its context has none. */
export type EvalContext = Omit<AlgoContext, "memory" | "reflector">;

export interface ProgressEvent {
  phase: "first" | "reflection" | "second" | "eval" | "distill";
  /** Episodes finished in this phase so far, and the phase's total. */
  done: number;
  total: number;
  /** Where the unfinished episodes are, e.g. "turn 3/8" (multi-turn episodes often end together). */
  note?: string;
}

export interface StepResult {
  samples: TrainSample[];
  rollouts: RolloutRecord[];
  memoryWrites: MemoryWrite[];
  /** Keys as in docs/run-format.md (reward/first, gate_rate, time/sample, ...). */
  metrics: Record<string, number>;
}

export interface EvalResult {
  /** Mean reward over all episodes. */
  reward: number;
  /** Mean over tasks of the fraction of successful samples. */
  passAt1: number;
  /** Fraction of tasks with at least one successful sample among their n (pass@n). */
  passAtN: number;
  /** Episodes run. */
  n: number;
  rollouts: RolloutRecord[];
}

/** Loss settings of a training step (defaults: the run config's `loss` section, `learnerConfigFrom`). */
export interface LearnerConfig {
  clipLow: number;
  clipHigh: number;
  /** Dual-clip constant for negative advantages; null disables. */
  dualClip: number | null;
  klCoef: number;
  aggregation: Aggregation;
  /** Sequences per forwardBackward call (memory only: the gradient does not depend on it). */
  microBatchSize: number;
  /**
   * Truncated importance sampling: the trainer recomputes the old log-probs (one forward pass) and
   * each token's policy term is weighted by min(π_trainer / π_sampler, tisCap); null disables.
   */
  tisCap: number | null;
  /**
   * Sequences per PPO mini-batch, each with its own optimiser step (the batch is shuffled first);
   * null = the whole batch, one step. verl: ppo_mini_batch_size × n.
   */
  miniBatchSize: number | null;
  /** Log-probs (rollout, old, new, reference) from logits / temperature; verl: the sampling T. */
  temperature: number;
  /** Clamp of log(π/π_old) and log(π_ref/π) before exp; null = none (verl: 20). */
  logRatioClamp: number | null;
  /** Cap of the per-token k3 KL; null = none (verl: 10). */
  klClamp: number | null;
}

/**
 * `erlStep` only reads `ctx.memory` (every read of a batch sees the memory as it was when the batch
 * started, since nothing writes during a step) and returns its writes (`StepResult.memoryWrites`), in
 * batch order; the caller — the runner — applies them, and is memory's only writer.
 */
export type ErlStepFn = (
  ctx: AlgoContext,
  tasks: readonly Task[],
  options: ErlOptions,
) => Promise<StepResult>;
export type RlvrStepFn = (
  ctx: AlgoContext,
  tasks: readonly Task[],
  options: RlvrOptions,
) => Promise<StepResult>;
export type TrainOnSamplesFn = (
  engine: Pick<Engine, "forwardBackward" | "optimStep"> & Partial<Pick<Engine, "forward">>,
  samples: readonly TrainSample[],
  lossConfig: LearnerConfig,
  optimConfig: AdamWConfig,
  /** Shuffles the batch into PPO mini-batches (needed when `miniBatchSize` splits it). */
  rng?: Rng,
) => Promise<Record<string, number>>;
export type EvaluateFn = (
  ctx: EvalContext,
  tasks: readonly Task[],
  options: EvalOptions,
) => Promise<EvalResult>;
