/**
 * The ERL training step (Experiential Reinforcement Learning, arXiv 2602.13949), top to bottom:
 * it runs the rollouts of one batch and returns the training samples, rollout records, memory
 * writes and metrics. The optimiser step is `trainOnSamples` (learner.ts).
 *
 * Choices (reference = the paper's public code; see docs/algorithms.md):
 * 1. First attempts: n per task (default 4) under the initial system prompt (task description +
 *    action format, no symbol meanings), sampled at temperature 0.7.
 * 2. Gate: an attempt is retried only if it failed (`success` false; for the games r1 < 1, for
 *    HotpotQA not an exact match). Successes stay on-policy: no reflection, no second attempt.
 * 3. Reflection: the same model, temperature 0.5, top-p 0.9, shown the memory rulebook of the
 *    attempt's slot (or the initial prompt when that slot is empty), the attempt's trace, reward and
 *    feedback. The rulebook is labelled as one from memory that the attempt did not see (first
 *    attempts always run under the initial prompt; until issue 16 the `paper` profile called it the
 *    prompt the attempt was made under). Δ is the last non-empty <prompt>…</prompt>; without one,
 *    the shown prompt is kept.
 *    The action-format reminder is appended to Δ unless Δ already ends with it.
 * 4. Second attempt: the same task from the same start, Δ replacing the system prompt. It does not
 *    see the first attempt.
 * 5. Memory: slot ← Δ when the second attempt succeeds (the code's `r2 ≥ 1`; the paper's `r2 > 1`
 *    can never hold for 0/1 rewards). The step only reads memory and returns its writes in batch
 *    order; the runner applies them after the step (in global mode the last success of the batch
 *    wins). Memory is read only here, by reflections.
 * 6. Samples: every first attempt (r1); for each retried attempt a reflection sample (Δ's raw
 *    sampled tokens, scored by r2), a second-attempt sample (r2) and a distill sample: the second
 *    attempt's sampled tokens re-rendered under the initial prompt, weight max(r2, 0), old log-probs
 *    recomputed in that context (ratio starts at 1).
 * 7. Advantages: GRPO within (batch row, stage) groups, so two copies of a task in one batch are
 *    two groups, as in the reference (until issue 16 they shared one); singleton groups A = r by
 *    default (the reference's mean 0 / std 1), all-equal groups A = 0 and kept; both are named
 *    options.
 * Ablations (options): noMemory (reflection always shown the initial prompt, memory never
 * written), noReflection (no Δ; the second attempt's system prompt is the initial prompt + the past
 * attempt + the format reminder; memory never written; distill kept), noDistill.
 * Extensions: an external reflector (`ctx.reflector`, an OpenAI-compatible endpoint) writes Δ in
 * step 3 instead of the policy; Δ is used as above but not trained (no reflection sample). erl-icl
 * runs this step with noDistill and the runner trains nothing (docs/reflectors.md).
 * Against the reference (verl), as options: log-probs at the sampling temperature, PPO mini-batches
 * with several shuffled optimiser steps per step, and the log-ratio / k3 clamps (learner.ts; the
 * paper presets set them, the CPU presets keep one step at T = 1); its doubled reflection rows
 * (`reflectionAdvantage: "reference-twice"`, off by default); its solver prompt's reasoning scaffold
 * (profile `reference`); pass@n next to pass@1 (eval.ts).
 * Deviations: perWorker memory slots are assigned by batch position (position mod k) rather than by
 * rollout worker; a reflection whose prompt does not fit the context gets an empty reply (Δ = the
 * shown prompt) and trains nothing; a distill replay longer than the context window is dropped.
 * Against verl, still different (learner.ts; docs/algorithms.md): the PPO anchor (old log-probs) of
 * rollout rows is the sampler's log-probs, not a trainer forward pass before the update (only
 * `loss.tisCap` adds that pass); mini-batches are cut after a seeded shuffle, where verl keeps the
 * batch order (rebalanced by sequence length across ranks); a partial last mini-batch is normalised
 * by its own size, where verl scales it as a fraction of a full one; the Sokoban push reminder is a
 * line of the `reference` profile's system prompt (so a second attempt under Δ keeps it only if Δ
 * does), where the reference's solver prompt has none and its user turn after a move that changed
 * nothing says the move likely hit a wall or a blocked box.
 *
 * Layout: the algorithm (`erlStep`, steps 1–7 as numbered above) first; below the BOOKKEEPING banner
 * the rollout records and metrics it reports.
 */
import {
  replayWithSystem,
  runEpisodes,
  sampleReplies,
  emptyTiming,
  type EpisodeOutcome,
} from "../agent/loop.ts";
import {
  getPromptProfile,
  rulebookFromReflection,
  findRulebook,
  type AttemptState,
} from "../agent/prompts.ts";
import type { Task } from "../envs/types.ts";
import { UserError } from "../util/errors.ts";
import { scoringDatum } from "./learner.ts";
import { describeMemoryMode, sameMemoryMode } from "./memory.ts";
import { envStopStrings, episodeId, groupKey, runAttempts, type Attempt } from "./attempts.ts";
import { validateErlOptions } from "./option-checks.ts";
import {
  firstSamples,
  makeDistillSample,
  makeSample,
  withAdvantages,
  withRecomputedLogprobs,
} from "./samples.ts";
import { attemptRecords, mean, rolloutRecord, timingMetrics } from "./records.ts";
import type {
  AlgoContext,
  ErlOptions,
  MemoryWrite,
  RolloutRecord,
  StepResult,
  TrainSample,
} from "./types.ts";

// =============================================================================================
// ALGORITHM
// =============================================================================================

/** What a retried attempt carries from reflection to the second attempt. */
interface Retry {
  attempt: Attempt;
  first: EpisodeOutcome;
  slot: number;
  memoryBefore: string | null;
  system: string;
  /** `sample` is absent when an external reflector wrote Δ (its tokens are not the policy's). */
  reflection?: { prompt: string; text: string; rulebook: string; sample?: TrainSample; tagFound: boolean };
}

export async function erlStep(
  ctx: AlgoContext,
  tasks: readonly Task[],
  options: ErlOptions,
): Promise<StepResult> {
  validateErlOptions(options);
  if (!sameMemoryMode(ctx.memory.mode, options.memory))
    throw new UserError(
      `memory: the store is ${describeMemoryMode(ctx.memory.mode)} but the options ask for ${describeMemoryMode(options.memory)}`,
    );
  const started = performance.now();
  const timing = emptyTiming();
  const { env, model, step } = ctx;
  const profile = getPromptProfile(options.profile);
  const parts = env.prompt();
  const initialPrompt = profile.initialSystemPrompt(parts);
  const memory = ctx.memory; // read only: the runner applies the returned writes after the step
  const loopDeps = { env, model, rng: ctx.rng, settings: options, stopStrings: envStopStrings(env), timing };
  const perWorker = options.memory.kind === "perWorker";

  // 1. First attempts.
  const { attempts, outcomes: firsts } = await runAttempts(ctx, tasks, options, {
    stage: "first",
    sampling: options.attemptSampling,
    system: initialPrompt,
    timing,
  });

  // 2. Gate: only failures go on.
  const retries: Retry[] = [];
  attempts.forEach((attempt, i) => {
    const first = firsts[i]!;
    if (first.success) return;
    const slot = memory.slotFor(attempt.position);
    const memoryBefore = options.noMemory ? null : memory.read(slot);
    retries.push({ attempt, first, slot, memoryBefore, system: initialPrompt });
  });
  const stateOf = (o: EpisodeOutcome): AttemptState => ({
    trace: o.trace,
    reward: o.reward,
    feedback: o.feedback,
  });

  // 3. Reflection: Δ becomes the second attempt's system prompt.
  if (options.noReflection) {
    for (const r of retries) r.system = profile.noReflectionSystemPrompt(parts, stateOf(r.first));
  } else if (retries.length > 0) {
    const shown = retries.map((r) => r.memoryBefore ?? initialPrompt);
    const chats = retries.map((r) => profile.reflectionMessages(parts, r.memoryBefore, stateOf(r.first)));
    ctx.onProgress?.({ phase: "reflection", done: 0, total: retries.length });
    // An external reflector (ctx.reflector) writes Δ in place of the policy; its limits are its own.
    const external = ctx.reflector !== undefined;
    const replies = await sampleReplies(
      chats.map((messages) => ({
        messages,
        sampling: options.reflectionSampling,
        maxTokens: options.maxReflectionTokens,
      })),
      external
        ? { model: ctx.reflector!, rng: ctx.rng, maxContextTokens: Number.MAX_SAFE_INTEGER }
        : {
            model,
            rng: ctx.rng,
            timing,
            maxContextTokens: options.maxContextTokens,
            logprobTemperature: options.logprobTemperature,
          },
    );
    ctx.onProgress?.({ phase: "reflection", done: retries.length, total: retries.length });
    retries.forEach((r, i) => {
      const reply = replies[i]!;
      const rulebook = rulebookFromReflection(reply.text, shown[i]!, parts);
      r.system = rulebook;
      r.reflection = {
        prompt: chats[i]!.map((m) => `[${m.role}]\n${m.content}`).join("\n\n"),
        text: reply.text,
        rulebook,
        tagFound: findRulebook(reply.text) !== null,
        // Scored by r2 once the second attempt is done; none for an external reflector.
        ...(external
          ? {}
          : { sample: makeSample("reflection", r.attempt, r.first.request.id, reply.trajectory, 0) }),
      };
    });
  }

  // 4. Second attempts under Δ.
  const seconds = await runEpisodes(
    retries.map((r) => ({
      id: episodeId(step, r.attempt.taskIndex, r.attempt.attempt, "second"),
      task: r.attempt.task,
      system: r.system,
      sampling: options.attemptSampling,
    })),
    { ...loopDeps, onEpisodeDone: (done, total) => ctx.onProgress?.({ phase: "second", done, total }) },
  );

  // 5. Memory writes for successful second attempts, in batch order; the caller applies them.
  const memoryWrites: MemoryWrite[] = [];
  if (!options.noMemory && !options.noReflection) {
    const latest = new Map<number, string>(); // each slot's value after the writes so far
    retries.forEach((r, i) => {
      const second = seconds[i]!;
      if (!second.success || !r.reflection) return;
      const w: MemoryWrite = {
        step,
        episode: second.request.id,
        task: r.attempt.task.id,
        rulebook: r.reflection.rulebook,
        previous: latest.get(r.slot) ?? memory.read(r.slot),
      };
      if (perWorker) w.worker = r.slot;
      latest.set(r.slot, w.rulebook);
      memoryWrites.push(w);
    });
  }

  // 6. Samples: first attempts for all; reflection, second and distill for retried ones.
  const samples = firstSamples(attempts, firsts);
  const distillPending: TrainSample[] = [];
  const contextLimit = Math.min(options.maxContextTokens, model.maxPositions ?? Number.POSITIVE_INFINITY);
  let distillTooLong = 0;
  for (let i = 0; i < retries.length; i++) {
    const r = retries[i]!;
    const second = seconds[i]!;
    if (r.reflection?.sample) samples.push({ ...r.reflection.sample, reward: second.reward });
    samples.push(makeSample("second", r.attempt, second.request.id, second.trajectory, second.reward));
  }
  if (!options.noDistill) {
    const replays = await Promise.all(
      seconds.map((second) => replayWithSystem(model, second, initialPrompt)),
    );
    replays.forEach((trajectory, i) => {
      const second = seconds[i]!;
      // The initial prompt can be longer than Δ: a replay that no longer fits the window is dropped.
      if (trajectory.ids.length - 1 > contextLimit) distillTooLong += 1;
      else
        distillPending.push(
          makeDistillSample(retries[i]!.attempt, second.request.id, trajectory, second.reward),
        );
    });
  }
  // Distill old log-probs: the current policy's, in the distill context (one forward call).
  if (distillPending.length > 0) {
    ctx.onProgress?.({ phase: "distill", done: 0, total: distillPending.length });
    const scored = await model.forward(distillPending.map(scoringDatum), {
      temperature: options.logprobTemperature,
    });
    distillPending.forEach((s, i) => samples.push(withRecomputedLogprobs(s, scored[i]!)));
    ctx.onProgress?.({ phase: "distill", done: distillPending.length, total: distillPending.length });
  }

  // 7. Advantages within (batch row, stage) groups.
  const trainSamples = withAdvantages(samples, options, options.reflectionAdvantage === "reference-twice");

  const { rollouts, metrics } = report({
    ctx,
    options,
    attempts,
    firsts,
    retries,
    seconds,
    trainSamples,
    memoryWrites,
    distillTooLong,
  });
  Object.assign(metrics, timingMetrics(timing, started));
  return { samples: trainSamples, rollouts, memoryWrites, metrics };
}

// =============================================================================================
// BOOKKEEPING: what the step reports (rollout records, metrics); no decision of the algorithm is
// made below this line. (Its option checks: option-checks.ts.)
// =============================================================================================

/** The step's rollout records (first attempts, then second attempts with their reflection) and metrics. */
function report(a: {
  ctx: AlgoContext;
  options: ErlOptions;
  attempts: readonly Attempt[];
  firsts: readonly EpisodeOutcome[];
  retries: readonly Retry[];
  seconds: readonly EpisodeOutcome[];
  trainSamples: readonly TrainSample[];
  memoryWrites: readonly MemoryWrite[];
  distillTooLong: number;
}): { rollouts: RolloutRecord[]; metrics: Record<string, number> } {
  const { ctx, attempts, firsts, retries, seconds, trainSamples, memoryWrites, distillTooLong } = a;
  const { env, step, memory } = ctx;
  const perWorker = a.options.memory.kind === "perWorker";
  const rollouts: RolloutRecord[] = attemptRecords({
    step,
    env,
    stage: "first",
    slots: attempts,
    outcomes: firsts,
    ...(perWorker ? { worker: (a: Attempt) => memory.slotFor(a.position) } : {}),
  });
  retries.forEach((r, i) => {
    const rec = rolloutRecord({
      step,
      env,
      task: r.attempt.task,
      outcome: seconds[i]!,
      stage: "second",
      attempt: r.attempt.attempt,
      group: groupKey(r.attempt, "second"),
      ...(perWorker ? { worker: r.slot } : {}),
    });
    if (r.reflection)
      rec.reflection = {
        prompt: r.reflection.prompt,
        text: r.reflection.text,
        rulebook: r.reflection.rulebook,
        memoryBefore: r.memoryBefore,
      };
    rollouts.push(rec);
  });

  const r1 = firsts.map((o) => o.reward);
  const r2 = seconds.map((o) => o.reward);
  const post = firsts.map((o) => o.reward);
  retries.forEach((r, i) => (post[attempts.indexOf(r.attempt)] = seconds[i]!.reward));
  const count = (stage: string) => trainSamples.filter((s) => s.stage === stage).length;
  const sampledTokens =
    [...firsts, ...seconds].reduce((a, o) => a + o.sampledTokens, 0) +
    retries.reduce(
      (a, r) => a + (r.reflection?.sample ? r.reflection.sample.mask.reduce<number>((x, m) => x + m, 0) : 0),
      0,
    );
  const metrics: Record<string, number> = {
    "reward/first": mean(r1),
    "reward/post_reflection": mean(post),
    "success/first": mean(firsts.map((o) => (o.success ? 1 : 0))),
    gate_rate: attempts.length === 0 ? 0 : retries.length / attempts.length,
    "memory/updates": memoryWrites.length,
    "samples/first": count("first"),
    "samples/reflection": count("reflection"),
    "samples/second": count("second"),
    "samples/distill": count("distill"),
    "distill/too_long": distillTooLong,
    "episodes/first": firsts.length,
    "episodes/second": seconds.length,
    "tokens/sampled": sampledTokens,
  };
  if (seconds.length > 0) {
    metrics["reward/second"] = mean(r2);
    metrics["success/second"] = mean(seconds.map((o) => (o.success ? 1 : 0)));
  }
  const reflections = retries.filter((r) => r.reflection);
  if (reflections.length > 0) {
    metrics["reward/reflection"] = mean(
      retries.flatMap((r, i) => (r.reflection ? [seconds[i]!.reward] : [])),
    );
    metrics["reflection/tag_rate"] = mean(reflections.map((r) => (r.reflection!.tagFound ? 1 : 0)));
  }
  return { rollouts, metrics };
}
