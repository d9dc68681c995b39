/**
 * The RLVR baseline step (spec §4): GRPO on first attempts only. n attempts per task (default 10)
 * under the initial system prompt at temperature 0.7; advantages within (task, first) groups with
 * the same singleton and all-equal rules as ERL. No reflection, no memory, no distillation.
 */
import { emptyTiming } from "../agent/loop.ts";
import type { Task } from "../envs/types.ts";
import { runAttempts } from "./attempts.ts";
import { validateRlvrOptions } from "./option-checks.ts";
import { firstSamples, withAdvantages } from "./samples.ts";
import { attemptRecords, mean, timingMetrics } from "./records.ts";
import type { AlgoContext, RlvrOptions, StepResult } from "./types.ts";

export async function rlvrStep(
  ctx: AlgoContext,
  tasks: readonly Task[],
  options: RlvrOptions,
): Promise<StepResult> {
  validateRlvrOptions(options);
  const started = performance.now();
  const timing = emptyTiming();
  const { attempts, outcomes } = await runAttempts(ctx, tasks, options, {
    stage: "first",
    sampling: options.attemptSampling,
    timing,
  });
  const samples = withAdvantages(firstSamples(attempts, outcomes), options);
  const rollouts = attemptRecords({
    step: ctx.step,
    env: ctx.env,
    stage: "first",
    slots: attempts,
    outcomes,
  });
  const metrics: Record<string, number> = {
    "reward/first": mean(outcomes.map((o) => o.reward)),
    "success/first": mean(outcomes.map((o) => (o.success ? 1 : 0))),
    "samples/first": samples.length,
    "episodes/first": outcomes.length,
    "tokens/sampled": outcomes.reduce((a, o) => a + o.sampledTokens, 0),
    ...timingMetrics(timing, started),
  };
  return { samples, rollouts, memoryWrites: [], metrics };
}
