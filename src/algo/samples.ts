/**
 * Sample construction shared by the ERL and RLVR steps and evaluation: the batch's attempt slots,
 * training samples from trajectories, GRPO advantages over (batch row, stage) groups, and option
 * validation, and `runAttempts`, the one episode per slot of first attempts and evaluation. Records
 * and metrics are in records.ts.
 */
import { runEpisodes, type EpisodeOutcome, type LoopTiming } from "../agent/loop.ts";
import { getPromptProfile, PROMPT_PROFILES, type PromptProfileName } from "../agent/prompts.ts";
import type { Trajectory } from "../agent/trajectory.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import { TOOL_CALL_OPEN, TOOL_CALL_STOP } from "../envs/tool-protocol.ts";
import { UserError } from "../util/errors.ts";
import { grpoAdvantages, type AdvantageRules } from "./advantages.ts";
import type { AlgoContext, LoopOptions, SamplingOptions, Stage, TrainSample } from "./types.ts";

/**
 * The GRPO group of an attempt slot: its task's position in the batch, the task id and the stage.
 * The position keeps two copies of one task in a batch (the task cursor wraps into a new pass
 * mid-batch when the pool is small) in separate groups, as the reference gives each row its own
 * uid before repeating it n times.
 */
export function groupKey(slot: { taskIndex: number; task: Task }, stage: Stage | "eval"): string {
  return `t${slot.taskIndex}:${slot.task.id}|${stage}`;
}

/** Episode ids are unique within a run: step, task position, attempt index, stage. */
export function episodeId(
  step: number,
  taskIndex: number,
  attempt: number,
  stage: "first" | "second" | "eval",
): string {
  return `s${step}-t${taskIndex}-a${attempt}-${stage}`;
}

/** A training sample from a trajectory; its advantage is filled in by `withAdvantages`. */
export function makeSample(
  stage: Stage,
  slot: Attempt,
  episode: string,
  trajectory: Trajectory,
  reward: number,
): TrainSample {
  return {
    stage,
    taskId: slot.task.id,
    episode,
    group: stage === "distill" ? "" : groupKey(slot, stage),
    ids: trajectory.ids.slice(),
    mask: trajectory.mask.slice(),
    logprobs: trajectory.logprobs.slice(),
    reward,
    advantage: 0,
  };
}

/** A distill sample: the second attempt's replies in the initial-prompt context, weight max(r2, 0). */
export function makeDistillSample(
  slot: Attempt,
  episode: string,
  trajectory: Trajectory,
  r2: number,
): TrainSample {
  const weight = Math.max(r2, 0);
  return {
    ...makeSample("distill", slot, episode, trajectory, r2),
    advantage: weight,
    distillWeight: weight,
  };
}

/**
 * GRPO advantages within each (batch row, stage) group for every non-distill sample; distill samples
 * keep their weight. Samples whose group is dropped by the all-equal rule are removed.
 *
 * `reflectionTwice` reproduces a quirk of the reference's FrozenLake and Sokoban flows, which append
 * each reflection ("updater") trajectory to the batch twice: every reflection sample is emitted twice
 * and counted twice in its group, so a lone reflection forms an all-equal pair (A = 0 under the
 * default rule) and a group of k reflections is normalised by the unbiased std of 2k values.
 */
export function withAdvantages(
  samples: readonly TrainSample[],
  rules: AdvantageRules,
  reflectionTwice = false,
): TrainSample[] {
  if (reflectionTwice) samples = samples.flatMap((s) => (s.stage === "reflection" ? [s, { ...s }] : [s]));
  const rl = samples.filter((s) => s.stage !== "distill");
  const adv = grpoAdvantages(rl, rules);
  const byIndex = new Map<TrainSample, number | null>();
  rl.forEach((s, i) => byIndex.set(s, adv[i]!));
  const out: TrainSample[] = [];
  for (const s of samples) {
    if (s.stage === "distill") {
      out.push(s);
      continue;
    }
    const a = byIndex.get(s);
    if (a === null || a === undefined) continue;
    out.push({ ...s, advantage: a });
  }
  return out;
}

/** Log-probs of `ids` given by a forward pass, placed on the trained positions of a sample. */
export function withRecomputedLogprobs(sample: TrainSample, targetLogprobs: readonly number[]): TrainSample {
  if (targetLogprobs.length !== sample.ids.length - 1)
    throw new Error(`recomputed log-probs: expected ${sample.ids.length - 1}, got ${targetLogprobs.length}`);
  const logprobs = sample.ids.map((_, i) => (i > 0 && sample.mask[i] === 1 ? targetLogprobs[i - 1]! : 0));
  return { ...sample, logprobs };
}

/** Stop strings an environment asks for (e.g. the end of a tool call), when it declares any. */
export function envStopStrings(env: EnvFamily): string[] | undefined {
  const declared = (env as EnvFamily & { stopStrings?: readonly string[] }).stopStrings;
  if (declared) return declared.length > 0 ? [...declared] : undefined;
  // Environments that speak the shared tool-call protocol stop each turn at the end of a call.
  return env.prompt().formatReminder.includes(TOOL_CALL_OPEN) ? [TOOL_CALL_STOP] : undefined;
}

// ---------------------------------------------------------------------------------------------
// Option checks: the step functions reject nonsense before spending any model time.

function fail(key: string, problem: string): never {
  throw new UserError(`option "${key}": ${problem}`);
}

export function checkPositiveInt(key: string, v: unknown): void {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1)
    fail(key, `expected an integer ≥ 1, got ${JSON.stringify(v)}`);
}

export function checkSampling(key: string, s: SamplingOptions): void {
  if (typeof s !== "object" || s === null) fail(key, "expected {temperature, topP?, topK?}");
  if (typeof s.temperature !== "number" || !(s.temperature >= 0))
    fail(`${key}.temperature`, `expected a number ≥ 0, got ${JSON.stringify(s.temperature)}`);
  if (s.topP !== undefined && (typeof s.topP !== "number" || !(s.topP > 0 && s.topP <= 1)))
    fail(`${key}.topP`, `expected a number in (0, 1], got ${JSON.stringify(s.topP)}`);
  if (s.topK !== undefined) checkPositiveInt(`${key}.topK`, s.topK);
}

export function checkLoopOptions(o: LoopOptions): void {
  checkPositiveInt("maxTokensPerTurn", o.maxTokensPerTurn);
  checkPositiveInt("maxContextTokens", o.maxContextTokens);
  if (o.contextOverflow !== "stop" && o.contextOverflow !== "shrink")
    fail("contextOverflow", `expected "stop" or "shrink", got ${JSON.stringify(o.contextOverflow)}`);
  if (o.turnTokenLimit !== "step" && o.turnTokenLimit !== "stop")
    fail("turnTokenLimit", `expected "step" or "stop", got ${JSON.stringify(o.turnTokenLimit)}`);
}

export function checkRules(o: AdvantageRules): void {
  if (o.singleton !== "reward-as-advantage" && o.singleton !== "zero")
    fail("singleton", `expected "reward-as-advantage" or "zero", got ${JSON.stringify(o.singleton)}`);
  if (o.allEqual !== "zero" && o.allEqual !== "drop")
    fail("allEqual", `expected "zero" or "drop", got ${JSON.stringify(o.allEqual)}`);
}

export function checkProfile(p: unknown): void {
  if (!PROMPT_PROFILES.includes(p as PromptProfileName))
    fail("profile", `expected ${PROMPT_PROFILES.map((x) => `"${x}"`).join(", ")}, got ${JSON.stringify(p)}`);
}

/** One attempt slot of a batch: task × attempt index, and its position in the batch. */
export interface Attempt {
  task: Task;
  taskIndex: number;
  attempt: number;
  /** Position in the batch (taskIndex × n + attempt); picks the perWorker memory slot. */
  position: number;
}

/** The batch's attempt slots: `n` per task, task-major. */
export function expandAttempts(tasks: readonly Task[], n: number): Attempt[] {
  return tasks.flatMap((task, taskIndex) =>
    Array.from({ length: n }, (_, attempt) => ({
      task,
      taskIndex,
      attempt,
      position: taskIndex * n + attempt,
    })),
  );
}

/**
 * The first attempts of a batch, or an evaluation's episodes: `n` per task (the attempt slots, task
 * major) under one system prompt, by default the profile's initial prompt. Returns the slots and
 * their outcomes, in the same order.
 */
export async function runAttempts(
  ctx: Pick<AlgoContext, "env" | "model" | "rng" | "step" | "onProgress">,
  tasks: readonly Task[],
  settings: LoopOptions & { n: number; profile: PromptProfileName },
  o: { stage: "first" | "eval"; sampling: SamplingOptions; system?: string; timing?: LoopTiming },
): Promise<{ attempts: Attempt[]; outcomes: EpisodeOutcome[] }> {
  const attempts = expandAttempts(tasks, settings.n);
  const system = o.system ?? getPromptProfile(settings.profile).initialSystemPrompt(ctx.env.prompt());
  const prefix = o.stage === "eval" ? "eval-" : "";
  const outcomes = await runEpisodes(
    attempts.map((a) => ({
      id: prefix + episodeId(ctx.step, a.taskIndex, a.attempt, o.stage),
      task: a.task,
      system,
      sampling: o.sampling,
    })),
    {
      env: ctx.env,
      model: ctx.model,
      rng: ctx.rng,
      settings,
      stopStrings: envStopStrings(ctx.env),
      ...(o.timing ? { timing: o.timing } : {}),
      onEpisodeDone: (done, total) => ctx.onProgress?.({ phase: o.stage, done, total }),
      onTurn: (turn, maxTurns, done, total) =>
        ctx.onProgress?.({ phase: o.stage, done, total, note: `turn ${turn}/${maxTurns}` }),
    },
  );
  return { attempts, outcomes };
}

/** The training samples of first attempts, scored by r1 (their advantages come from `withAdvantages`). */
export function firstSamples(
  attempts: readonly Attempt[],
  outcomes: readonly EpisodeOutcome[],
): TrainSample[] {
  return outcomes.map((o, i) => makeSample("first", attempts[i]!, o.request.id, o.trajectory, o.reward));
}

/** The checks every attempt-running function makes: n, its sampling, the loop settings, the profile. */
export function checkAttemptOptions(
  o: LoopOptions & { n: number; profile: unknown },
  samplingKey: string,
  sampling: SamplingOptions,
): void {
  checkPositiveInt("n", o.n);
  checkSampling(samplingKey, sampling);
  checkLoopOptions(o);
  checkProfile(o.profile);
}
