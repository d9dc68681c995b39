/**
 * The attempts of a batch: its slots (n per task, task-major), their GRPO group and episode ids, and
 * `runAttempts`, one episode per slot under one system prompt (first attempts and evaluation).
 */
import { runEpisodes, type EpisodeOutcome, type LoopTiming } from "../agent/loop.ts";
import { getPromptProfile, type PromptProfileName } from "../agent/prompts.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import { TOOL_CALL_OPEN, TOOL_CALL_STOP } from "../envs/tool-protocol.ts";
import type { AlgoContext, LoopOptions, SamplingOptions, Stage } from "./types.ts";

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

/** Stop strings an environment asks for (e.g. the end of a tool call), when it declares any. */
export function envStopStrings(env: EnvFamily): string[] | undefined {
  const declared = (env as EnvFamily & { stopStrings?: readonly string[] }).stopStrings;
  if (declared) return declared.length > 0 ? [...declared] : undefined;
  // Environments that speak the shared tool-call protocol stop each turn at the end of a call.
  return env.prompt().formatReminder.includes(TOOL_CALL_OPEN) ? [TOOL_CALL_STOP] : undefined;
}
