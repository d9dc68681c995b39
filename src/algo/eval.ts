/**
 * Evaluation (spec §3): first attempts only, under the initial system prompt, with no memory and
 * no reflection — the context type has no memory at all. n samples per task (default 4 at
 * temperature 0.7, top-p 0.8, top-k 20; HotpotQA 1). Reports mean reward over all episodes and
 * pass@1 (per task, the fraction of successful samples; averaged over tasks) and pass@n (per task,
 * 1 if any of its n samples succeeded; averaged over tasks), as the reference reports both.
 */
import type { Task } from "../envs/types.ts";
import { runAttempts } from "./attempts.ts";
import { validateEvalOptions } from "./option-checks.ts";
import { attemptRecords, mean } from "./records.ts";
import type { EvalContext, EvalOptions, EvalResult } from "./types.ts";

export async function evaluate(
  ctx: EvalContext,
  tasks: readonly Task[],
  options: EvalOptions,
): Promise<EvalResult> {
  validateEvalOptions(options);
  const { attempts, outcomes } = await runAttempts(ctx, tasks, options, {
    stage: "eval",
    sampling: options.sampling,
    system: options.system,
  });

  const perTask = tasks.map((_, t) =>
    mean(outcomes.filter((_, i) => attempts[i]!.taskIndex === t).map((o) => (o.success ? 1 : 0))),
  );
  const rollouts = attemptRecords({ step: ctx.step, env: ctx.env, stage: "eval", slots: attempts, outcomes });
  return {
    reward: mean(outcomes.map((o) => o.reward)),
    passAt1: mean(perTask),
    passAtN: mean(perTask.map((p) => (p > 0 ? 1 : 0))),
    n: outcomes.length,
    rollouts,
  };
}
