/**
 * The RLVR baseline step (spec §4): GRPO on first attempts only. n attempts per task (default 10)
 * under the initial system prompt at temperature 0.7; advantages within (task, first) groups with
 * the same singleton and all-equal rules as ERL. No reflection, no memory, no distillation.
 */
import { emptyTiming, runEpisodes } from "../agent/loop.ts";
import { getPromptProfile } from "../agent/prompts.ts";
import type { Task } from "../envs/types.ts";
import {
  checkLoopOptions,
  checkPositiveInt,
  checkProfile,
  checkRules,
  checkSampling,
  envStopStrings,
  episodeId,
  expandAttempts,
  groupKey,
  makeSample,
  mean,
  rolloutRecord,
  withAdvantages,
} from "./samples.ts";
import type { AlgoContext, RlvrOptions, StepResult } from "./types.ts";

export function validateRlvrOptions(o: RlvrOptions): void {
  checkPositiveInt("n", o.n);
  checkRules(o);
  checkSampling("attemptSampling", o.attemptSampling);
  checkLoopOptions(o);
  checkProfile(o.profile);
}

export async function rlvrStep(
  ctx: AlgoContext,
  tasks: readonly Task[],
  options: RlvrOptions,
): Promise<StepResult> {
  validateRlvrOptions(options);
  const started = performance.now();
  const timing = emptyTiming();
  const { env, model, step } = ctx;
  const system = getPromptProfile(options.profile).initialSystemPrompt(env.prompt());

  const attempts = expandAttempts(tasks, options.n);
  const outcomes = await runEpisodes(
    attempts.map((a) => ({
      id: episodeId(step, a.taskIndex, a.attempt, "first"),
      task: a.task,
      system,
      sampling: options.attemptSampling,
    })),
    {
      env,
      model,
      rng: ctx.rng,
      settings: options,
      stopStrings: envStopStrings(env),
      timing,
      onEpisodeDone: (done, total) => ctx.onProgress?.({ phase: "first", done, total }),
    },
  );

  const samples = withAdvantages(
    outcomes.map((o, i) => makeSample("first", attempts[i]!, o.request.id, o.trajectory, o.reward)),
    options,
  );
  const rollouts = outcomes.map((o, i) => {
    const a = attempts[i]!;
    return rolloutRecord({
      step,
      env,
      task: a.task,
      outcome: o,
      stage: "first",
      attempt: a.attempt,
      group: groupKey(a, "first"),
    });
  });
  const elapsed = (performance.now() - started) / 1000;
  const metrics: Record<string, number> = {
    "reward/first": mean(outcomes.map((o) => o.reward)),
    "success/first": mean(outcomes.map((o) => (o.success ? 1 : 0))),
    "samples/first": samples.length,
    "episodes/first": outcomes.length,
    "tokens/sampled": outcomes.reduce((a, o) => a + o.sampledTokens, 0),
    "time/sample": timing.sample,
    "time/env": timing.env,
    "time/render": timing.render,
    "sample/calls": timing.sampleCalls,
    "time/rollout": elapsed,
    "time/other": Math.max(0, elapsed - timing.sample - timing.env),
  };
  return { samples, rollouts, memoryWrites: [], metrics };
}
