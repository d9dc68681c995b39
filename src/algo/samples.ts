/**
 * Training samples: from a trajectory (first attempts, reflections, second attempts), distill samples
 * (the second attempt re-rendered under the initial prompt, with recomputed old log-probs), and GRPO
 * advantages over (batch row, stage) groups.
 */
import type { EpisodeOutcome } from "../agent/loop.ts";
import type { Trajectory } from "../agent/trajectory.ts";
import { grpoAdvantages, type AdvantageRules } from "./advantages.ts";
import { groupKey, type Attempt } from "./attempts.ts";
import type { Stage, TrainSample } from "./types.ts";

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

/** The training samples of first attempts, scored by r1 (their advantages come from `withAdvantages`). */
export function firstSamples(
  attempts: readonly Attempt[],
  outcomes: readonly EpisodeOutcome[],
): TrainSample[] {
  return outcomes.map((o, i) => makeSample("first", attempts[i]!, o.request.id, o.trajectory, o.reward));
}
