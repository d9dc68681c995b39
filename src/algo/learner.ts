/**
 * The optimisation of one training step on a batch of samples (spec §2): samples → engine datums →
 * forwardBackward (PPO with asymmetric clip, dual clip, k3 KL, seq-mean-token-sum) → optimStep.
 *
 * - PPO mini-batches (`miniBatchSize`, verl's ppo_mini_batch_size × n): the batch is shuffled (with
 *   the caller's seeded RNG) and split into mini-batches of at most that many sequences, each with
 *   its own normaliser and its own optimiser step, so later mini-batches see a policy that has
 *   already moved and the PPO clip can act. `null`: the whole batch, one optimiser step.
 * - Log-probs at `temperature` (verl: logits / T, T the sampling temperature), with verl's clamps on
 *   the log-ratio and on k3 as options; the engine applies them.
 *
 * - Each sample's scalar advantage is broadcast to its trained tokens; every other token has weight 0.
 * - Distill rows go through the same PPO loss with advantage = distill weight. Their old log-probs
 *   were recomputed under the distill context, so the ratio starts at exactly 1 and the first (and,
 *   with one epoch per batch, only) gradient equals that of cross-entropy weighted by max(r2, 0);
 *   unlike a separate cross-entropy pass, it shares the batch's normaliser and KL term.
 * - Samples with no trained token are left out (they would only change the normaliser).
 * - The batch may be split over several forwardBackward calls; every call carries the whole batch's
 *   normaliser so the summed gradient equals the one-call gradient (the engine micro-batches inside
 *   a call by itself).
 * - The rollout–trainer mismatch (`mismatch/*`) is measured on the first mini-batch, before any
 *   optimiser step of this batch, so it is the samplers' disagreement and not the policy's change.
 */
import type { AdamWConfig, Datum, Engine, LossConfig } from "../engine/api.ts";
import type { Rng } from "../util/rng.ts";
import type { LearnerConfig, TrainSample } from "./types.ts";

/** The engine datum of a sample: position t predicts ids[t+1]; weights and advantages follow the mask. */
export function sampleToDatum(sample: TrainSample): Datum {
  const n = sample.ids.length;
  if (sample.mask.length !== n || sample.logprobs.length !== n)
    throw new Error(`sample ${sample.episode}/${sample.stage}: ids, mask and log-probs differ in length`);
  if (n < 2) throw new Error(`sample ${sample.episode}/${sample.stage}: needs at least two tokens`);
  const weights = sample.mask.slice(1).map((m) => (m === 1 ? 1 : 0));
  return {
    inputIds: sample.ids.slice(0, n - 1),
    targetIds: sample.ids.slice(1),
    weights,
    advantages: weights.map((w) => (w === 1 ? sample.advantage : 0)),
    oldLogprobs: sample.logprobs.slice(1),
    // Rollout rows carry what the sampler reported (the mismatch metric, TIS); distill rows' log-probs
    // are the trainer's own, recomputed under the distill context.
    ...(sample.stage === "distill" ? {} : { samplerLogprobs: sample.logprobs.slice(1) }),
  };
}

/** The datum used to score a sample's tokens (no RL fields). */
export function scoringDatum(sample: TrainSample): Datum {
  const d = sampleToDatum(sample);
  return { inputIds: d.inputIds, targetIds: d.targetIds, weights: d.weights };
}

export function trainedTokens(sample: TrainSample): number {
  let k = 0;
  for (let i = 1; i < sample.mask.length; i++) k += sample.mask[i]!;
  return k;
}

export function lossConfigFor(cfg: LearnerConfig, normalizer?: number): LossConfig {
  const loss: LossConfig = {
    name: "ppo",
    aggregation: cfg.aggregation,
    clipLow: cfg.clipLow,
    clipHigh: cfg.clipHigh,
    klCoef: cfg.klCoef,
  };
  if (cfg.dualClip !== null) loss.dualClip = cfg.dualClip;
  if (cfg.temperature !== 1) loss.temperature = cfg.temperature;
  if (cfg.logRatioClamp !== null) loss.logRatioClamp = cfg.logRatioClamp;
  if (cfg.klClamp !== null) loss.klClamp = cfg.klClamp;
  if (normalizer !== undefined) loss.normalizer = normalizer;
  if (cfg.tisCap !== null && cfg.tisCap !== undefined) loss.tisCap = cfg.tisCap;
  return loss;
}

/** The batch's divisor: sequences (seq-mean-token-sum) or trained tokens (token-mean). */
export function batchNormalizer(datums: readonly Datum[], cfg: LearnerConfig): number {
  if (cfg.aggregation === "seq-mean-token-sum") return datums.length;
  return datums.reduce((a, d) => a + d.weights.filter((w) => w !== 0).length, 0);
}

/** The mini-batches of a step: the whole batch, or a shuffled split into chunks of `miniBatchSize`. */
export function miniBatches<T>(items: readonly T[], cfg: LearnerConfig, rng?: Rng): T[][] {
  const size = cfg.miniBatchSize;
  if (size === null || size >= items.length) return [items.slice()];
  if (!rng) throw new Error("trainOnSamples: PPO mini-batches need an RNG to shuffle the batch");
  const order = rng.shuffle(items);
  const out: T[][] = [];
  for (let i = 0; i < order.length; i += size) out.push(order.slice(i, i + size));
  return out;
}

const TOKEN_METRICS = [
  "kl",
  "entropy",
  "ratio_mean",
  "clip_frac_low",
  "clip_frac_high",
  "dual_clip_frac",
  "logprob_mean",
  "tis_weight_mean",
  "tis_clip_frac",
];

export async function trainOnSamples(
  engine: Pick<Engine, "forwardBackward" | "optimStep"> & Partial<Pick<Engine, "forward">>,
  samples: readonly TrainSample[],
  lossConfig: LearnerConfig,
  optimConfig: AdamWConfig,
  rng?: Rng,
): Promise<Record<string, number>> {
  const t0 = performance.now();
  const trained = samples.filter((s) => trainedTokens(s) > 0);
  const metrics: Record<string, number> = { "samples/trained": trained.length, "tokens/trained": 0 };
  if (trained.length === 0) {
    metrics["time/train"] = (performance.now() - t0) / 1000;
    return metrics;
  }
  const datums = trained.map(sampleToDatum);
  if (lossConfig.tisCap !== null && lossConfig.tisCap !== undefined) {
    // TIS: the PPO anchor is the trainer's own log-prob of the sampling-time weights (one forward
    // pass, before the update); the sampler's log-probs enter only through the truncated weight.
    if (!engine.forward) throw new Error("loss.tisCap needs an engine with forward");
    const rollout = datums.filter((d) => d.samplerLogprobs !== undefined);
    const trainer = rollout.length
      ? await engine.forward(
          rollout.map(({ inputIds, targetIds, weights }) => ({ inputIds, targetIds, weights })),
          lossConfig.temperature !== 1 ? { temperature: lossConfig.temperature } : undefined,
        )
      : [];
    rollout.forEach((d, i) => {
      const lp = trainer[i]!;
      d.oldLogprobs = d.weights.map((w, t) => (w !== 0 ? lp[t]! : 0));
    });
  }
  // Token-weighted sums of the engine's per-token metrics across calls.
  const sums: Record<string, number> = {};
  let tokens = 0;
  let loss = 0;
  let calls = 0;
  let gradNormSum = 0;
  let skipped = 0;
  let ratioMin = Number.POSITIVE_INFINITY;
  let ratioMax = Number.NEGATIVE_INFINITY;
  let mmTokens = 0;
  let mmAbs = 0;
  let mmK3 = 0;
  let mmMax = 0;
  const batches = miniBatches(datums, lossConfig, rng);
  for (const [b, batch] of batches.entries()) {
    const normalizer = batchNormalizer(batch, lossConfig);
    const per = Math.max(1, lossConfig.microBatchSize);
    const parts = Math.ceil(batch.length / per);
    for (let c = 0; c < parts; c++) {
      const chunk = batch.slice(c * per, (c + 1) * per);
      const res = await engine.forwardBackward(
        chunk,
        lossConfigFor(lossConfig, parts > 1 ? normalizer : undefined),
      );
      calls += 1;
      loss += res.loss;
      const m = res.metrics;
      const k = m.tokens ?? chunk.reduce((a, d) => a + d.weights.filter((w) => w !== 0).length, 0);
      tokens += k;
      for (const key of TOKEN_METRICS) if (m[key] !== undefined) sums[key] = (sums[key] ?? 0) + m[key] * k;
      // The rollout–trainer gap is averaged over the tokens that carried sampler log-probs, in the
      // first mini-batch only: later ones run after this step's first optimiser step, so their gap
      // would add the policy's own change to the samplers' disagreement.
      const mk = b === 0 ? (m.mismatch_tokens ?? 0) : 0;
      if (mk > 0) {
        mmTokens += mk;
        mmAbs += (m.mismatch_abs_mean ?? 0) * mk;
        mmK3 += (m.mismatch_k3 ?? 0) * mk;
        mmMax = Math.max(mmMax, m.mismatch_abs_max ?? 0);
      }
      if (m.ratio_min !== undefined) ratioMin = Math.min(ratioMin, m.ratio_min);
      if (m.ratio_max !== undefined) ratioMax = Math.max(ratioMax, m.ratio_max);
    }
    const opt = await engine.optimStep(optimConfig);
    gradNormSum += opt.gradNorm;
    if (opt.metrics.skipped) skipped += opt.metrics.skipped;
  }

  const avg = (key: string) => (sums[key] !== undefined && tokens > 0 ? sums[key] / tokens : undefined);
  // With several mini-batches: the mean of their losses and grad norms.
  metrics.loss = loss / batches.length;
  metrics["tokens/trained"] = tokens;
  metrics.grad_norm = gradNormSum / batches.length;
  metrics["forward_backward/calls"] = calls;
  metrics["optim/steps"] = batches.length;
  const kl = avg("kl");
  if (kl !== undefined) metrics.kl = kl;
  const ent = avg("entropy");
  if (ent !== undefined) metrics.entropy = ent;
  const ratio = avg("ratio_mean");
  if (ratio !== undefined) metrics["ratio/mean"] = ratio;
  if (Number.isFinite(ratioMin)) metrics["ratio/min"] = ratioMin;
  if (Number.isFinite(ratioMax)) metrics["ratio/max"] = ratioMax;
  const lo = avg("clip_frac_low");
  const hi = avg("clip_frac_high");
  if (lo !== undefined || hi !== undefined) metrics.clip_frac = (lo ?? 0) + (hi ?? 0);
  const dual = avg("dual_clip_frac");
  if (dual !== undefined) metrics.dual_clip_frac = dual;
  if (mmTokens > 0) {
    metrics["mismatch/abs_mean"] = mmAbs / mmTokens;
    metrics["mismatch/abs_max"] = mmMax;
    metrics["mismatch/k3"] = mmK3 / mmTokens;
  }
  const tisW = avg("tis_weight_mean");
  if (tisW !== undefined) metrics["tis/weight_mean"] = tisW;
  const tisC = avg("tis_clip_frac");
  if (tisC !== undefined) metrics["tis/clip_frac"] = tisC;
  if (skipped) metrics["optim/skipped"] = skipped;
  metrics["time/train"] = (performance.now() - t0) / 1000;
  return metrics;
}
