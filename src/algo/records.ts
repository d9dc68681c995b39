/**
 * Bookkeeping of the steps and evaluation, apart from the algorithm: rollout records for the run
 * files (docs/run-format.md), the records of a batch of attempts, the timing metrics every step
 * reports, and small metric helpers. Pure functions (no model calls).
 */
import type { EpisodeOutcome, LoopTiming } from "../agent/loop.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import { groupKey, type Attempt } from "./attempts.ts";
import type { RolloutRecord, RolloutTraceStep } from "./types.ts";

export function rolloutRecord(args: {
  step: number;
  env: EnvFamily;
  task: Task;
  outcome: EpisodeOutcome;
  stage: RolloutRecord["stage"];
  attempt: number;
  group: string;
  worker?: number;
  reflection?: RolloutRecord["reflection"];
}): RolloutRecord {
  const { outcome } = args;
  const [system, ...messages] = outcome.messages;
  const rec: RolloutRecord = {
    step: args.step,
    task: args.task.id,
    episode: outcome.request.id,
    group: args.group,
    stage: args.stage,
    attempt: args.attempt,
    reward: outcome.reward,
    success: outcome.success,
    stopReason: outcome.stopReason,
    system: system?.content ?? "",
    messages,
    trace: outcome.trace.map((t) => {
      const step: RolloutTraceStep = {
        observation: t.observation,
        action: t.action,
        effective: t.result.effective,
        valid: t.result.valid,
        comment: t.result.comment,
        reward: t.result.reward,
      };
      const info = t.result.info ? compactInfo(t.result.info) : undefined;
      if (info && Object.keys(info).length > 0) step.info = info;
      return step;
    }),
    feedback: outcome.feedback,
    env: args.env.name,
    taskData: { ...args.task } as Record<string, unknown>,
    sampledTokens: outcome.sampledTokens,
  };
  // Each step's observation is the one seen *before* acting, so the state after the last action
  // (the final board, the answer's verdict) is only in the last result.
  const finalObservation = outcome.trace[outcome.trace.length - 1]?.result.observation;
  if (finalObservation) rec.finalObservation = finalObservation;
  if (args.reflection) rec.reflection = args.reflection;
  if (args.worker !== undefined) rec.worker = args.worker;
  return rec;
}

// Limits for step info in rollout records: the shipped environments' info is already small
// (positions, search hit ids/titles/scores); these bound what a user's environment might put there
// so that one step cannot blow up rollouts.jsonl (long texts belong in the observation, once).
const INFO_MAX_DEPTH = 6;
const INFO_MAX_ITEMS = 16;
const INFO_MAX_KEYS = 24;
const INFO_MAX_STRING = 200;

/**
 * A JSON-safe, bounded copy of an environment's step `info`: strings cut to 200 characters (with
 * "…"), arrays to 16 items, objects to 24 keys, nesting to 6 levels (arrays count); non-finite numbers, functions
 * and undefined values are dropped.
 */
export function compactInfo(info: Record<string, unknown>): Record<string, unknown> {
  const walk = (v: unknown, depth: number): unknown => {
    if (v === null || typeof v === "boolean") return v;
    if (typeof v === "number") return Number.isFinite(v) ? v : undefined;
    if (typeof v === "string") return v.length > INFO_MAX_STRING ? v.slice(0, INFO_MAX_STRING - 1) + "…" : v;
    if (typeof v !== "object" || depth >= INFO_MAX_DEPTH) return undefined;
    if (Array.isArray(v))
      return v.slice(0, INFO_MAX_ITEMS).map((x) => {
        const y = walk(x, depth + 1);
        return y === undefined ? null : y;
      });
    const out: Record<string, unknown> = {};
    let keys = 0;
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) {
      if (keys >= INFO_MAX_KEYS) break;
      const y = walk(x, depth + 1);
      if (y === undefined) continue;
      out[k] = y;
      keys++;
    }
    return out;
  };
  return walk(info, 0) as Record<string, unknown>;
}

export function mean(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/**
 * One record per attempt slot and outcome, in order: the first attempts of ERL and RLVR and the
 * evaluation episodes. `worker` gives the memory slot of a slot in perWorker mode.
 */
export function attemptRecords(args: {
  step: number;
  env: EnvFamily;
  stage: "first" | "eval";
  slots: readonly Attempt[];
  outcomes: readonly EpisodeOutcome[];
  worker?: (slot: Attempt) => number;
}): RolloutRecord[] {
  return args.outcomes.map((outcome, i) => {
    const slot = args.slots[i]!;
    return rolloutRecord({
      step: args.step,
      env: args.env,
      task: slot.task,
      outcome,
      stage: args.stage,
      attempt: slot.attempt,
      group: groupKey(slot, args.stage),
      ...(args.worker ? { worker: args.worker(slot) } : {}),
    });
  });
}

/** Where a step's rollout time went: sampling, environments, rendering, and the rest. */
export function timingMetrics(timing: LoopTiming, startedMs: number): Record<string, number> {
  const elapsed = (performance.now() - startedMs) / 1000;
  return {
    "time/sample": timing.sample,
    "time/env": timing.env,
    "time/render": timing.render,
    "sample/calls": timing.sampleCalls,
    "time/rollout": elapsed,
    "time/other": Math.max(0, elapsed - timing.sample - timing.env),
  };
}
