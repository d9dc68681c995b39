import { test } from "node:test";
import assert from "node:assert/strict";
import type { AdamWConfig, Datum, ForwardBackwardResult, LossConfig } from "../engine/api.ts";
import { Rng } from "../util/rng.ts";
import { batchNormalizer, lossConfigFor, miniBatches, sampleToDatum, trainOnSamples } from "./learner.ts";
import type { TrainSample } from "./types.ts";
import { defaultConfig, learnerConfigFrom } from "../train/config.ts";

/** The learner's defaults: the run config's (the project's one table of defaults). */
const DEFAULTS = learnerConfigFrom(defaultConfig());

const OPTIM = { lr: 1e-5, weightDecay: 0.01, gradClip: 1 };

function sample(over: Partial<TrainSample> = {}): TrainSample {
  return {
    stage: "first",
    taskId: "t",
    episode: "e",
    group: "t|first",
    ids: [10, 11, 12, 13, 14, 15],
    mask: [0, 0, 1, 1, 0, 1],
    logprobs: [0, 0, -0.5, -0.25, 0, -2],
    reward: 1,
    advantage: 0.75,
    ...over,
  };
}

test("a sample becomes a shifted datum: the advantage lands on trained targets only", () => {
  const d = sampleToDatum(sample());
  assert.deepEqual(d.inputIds, [10, 11, 12, 13, 14]);
  assert.deepEqual(d.targetIds, [11, 12, 13, 14, 15]);
  assert.deepEqual(d.weights, [0, 1, 1, 0, 1]);
  assert.deepEqual(d.advantages, [0, 0.75, 0.75, 0, 0.75]);
  assert.deepEqual(d.oldLogprobs, [0, -0.5, -0.25, 0, -2]);
  assert.throws(() => sampleToDatum(sample({ mask: [0, 1] })), /differ in length/);
});

test("the spec's loss settings reach the engine", () => {
  const loss = lossConfigFor(DEFAULTS);
  const spec = {
    name: "ppo",
    aggregation: "seq-mean-token-sum",
    clipLow: 0.2,
    clipHigh: 0.28,
    dualClip: 3,
    klCoef: 0.001,
  };
  assert.deepEqual(loss, spec);
  assert.equal(lossConfigFor({ ...DEFAULTS, dualClip: null }).dualClip, undefined);
  // The reference's temperature and clamps, when set, reach the engine too.
  assert.deepEqual(lossConfigFor({ ...DEFAULTS, temperature: 0.7, logRatioClamp: 20, klClamp: 10 }, 5), {
    ...spec,
    temperature: 0.7,
    logRatioClamp: 20,
    klClamp: 10,
    normalizer: 5,
  });
});

class FakeEngine {
  calls: { datums: Datum[]; loss: LossConfig & { normalizer?: number } }[] = [];
  optim: AdamWConfig[] = [];
  async forwardBackward(datums: Datum[], loss: LossConfig): Promise<ForwardBackwardResult> {
    this.calls.push({ datums, loss });
    const tokens = datums.reduce((a, d) => a + d.weights.filter((w) => w !== 0).length, 0);
    // Loss of each call = its share of the batch: sequences / normalizer.
    const norm = (loss as { normalizer?: number }).normalizer ?? datums.length;
    return {
      loss: datums.length / norm,
      metrics: {
        tokens,
        kl: 0.01 * this.calls.length,
        ratio_mean: 1,
        ratio_min: 0.9,
        ratio_max: 1.1,
        clip_frac_low: 0,
        clip_frac_high: 0.5,
        entropy: 2,
      },
    };
  }
  async optimStep(cfg: AdamWConfig) {
    this.optim.push(cfg);
    return { gradNorm: 0.5, metrics: { lr: cfg.lr } };
  }
}

test("trainOnSamples: micro-batched calls share one normaliser, then one optimiser step", async () => {
  const engine = new FakeEngine();
  const samples = [
    sample(),
    sample({ episode: "e2", advantage: -1 }),
    sample({ episode: "e3", mask: [0, 0, 0, 0, 0, 0] }), // nothing to train: left out
    sample({ stage: "distill", group: "", advantage: 1, distillWeight: 1, mask: [0, 1, 1, 1, 1, 1] }),
  ];
  const m = await trainOnSamples(engine, samples, { ...DEFAULTS, microBatchSize: 2 }, OPTIM);
  assert.deepEqual(
    engine.calls.map((c) => c.datums.length),
    [2, 1],
  );
  for (const c of engine.calls) assert.equal(c.loss.normalizer, 3, "the whole batch's sequence count");
  assert.equal(engine.optim.length, 1);
  assert.equal(m["samples/trained"], 3);
  assert.equal(m["tokens/trained"], 3 + 3 + 5);
  assert.ok(Math.abs(m.loss! - 1) < 1e-12, "summed shares make the whole-batch loss");
  // Token-weighted averages of per-call metrics: kl 0.01 on 6 tokens, 0.02 on 5.
  assert.ok(Math.abs(m.kl! - (0.01 * 6 + 0.02 * 5) / 11) < 1e-12);
  assert.equal(m.clip_frac, 0.5);
  assert.equal(m.grad_norm, 0.5);
  assert.deepEqual([m["ratio/min"], m["ratio/max"]], [0.9, 1.1]);
  // The distill row is a PPO row whose advantage is its weight.
  assert.deepEqual(engine.calls[1]!.datums[0]!.advantages, [1, 1, 1, 1, 1]);

  const one = new FakeEngine();
  await trainOnSamples(one, samples, DEFAULTS, OPTIM);
  assert.equal(one.calls.length, 1);
  assert.equal(one.calls[0]!.loss.normalizer, undefined, "one call: the engine's own divisor is the batch's");
});

test("token-mean normalises by trained tokens; an empty batch skips the optimiser", async () => {
  const datums = [sampleToDatum(sample()), sampleToDatum(sample({ mask: [0, 1, 1, 1, 1, 1] }))];
  assert.equal(batchNormalizer(datums, { ...DEFAULTS, aggregation: "token-mean" }), 3 + 5);
  assert.equal(batchNormalizer(datums, DEFAULTS), 2);
  const engine = new FakeEngine();
  const m = await trainOnSamples(engine, [sample({ mask: [0, 0, 0, 0, 0, 0] })], DEFAULTS, OPTIM);
  assert.equal(engine.calls.length + engine.optim.length, 0);
  assert.equal(m["samples/trained"], 0);
});

test("rollout rows carry the sampler's log-probs; the gap is averaged over their tokens", async () => {
  assert.deepEqual(sampleToDatum(sample()).samplerLogprobs, [0, -0.5, -0.25, 0, -2]);
  const distill = sample({ stage: "distill", group: "", distillWeight: 1, mask: [0, 1, 1, 1, 1, 1] });
  assert.equal(sampleToDatum(distill).samplerLogprobs, undefined);
  const engine = new FakeEngine();
  const gaps = [
    { mismatch_tokens: 3, mismatch_abs_mean: 0.1, mismatch_abs_max: 0.4, mismatch_k3: 0.01 },
    { mismatch_tokens: 1, mismatch_abs_mean: 0.5, mismatch_abs_max: 0.5, mismatch_k3: 0.05 },
  ];
  const fb = engine.forwardBackward.bind(engine);
  engine.forwardBackward = async (d, l) => {
    const r = await fb(d, l);
    return { ...r, metrics: { ...r.metrics, ...gaps[engine.calls.length - 1] } };
  };
  const m = await trainOnSamples(
    engine,
    [sample(), sample({ episode: "e2" })],
    { ...DEFAULTS, microBatchSize: 1 },
    OPTIM,
  );
  assert.ok(Math.abs(m["mismatch/abs_mean"]! - (0.1 * 3 + 0.5) / 4) < 1e-12);
  assert.ok(Math.abs(m["mismatch/k3"]! - (0.01 * 3 + 0.05) / 4) < 1e-12);
  assert.equal(m["mismatch/abs_max"], 0.5);
  assert.equal(engine.calls[0]!.loss.tisCap, undefined);
});

test("with PPO mini-batches the gap is measured before the step's first optimiser step", async () => {
  // Calls after an optimiser step see a moved policy: their gap is the policy's change, not the samplers'.
  const engine = new FakeEngine();
  const fb = engine.forwardBackward.bind(engine);
  engine.forwardBackward = async (d, l) => {
    const r = await fb(d, l);
    const g = engine.optim.length === 0 ? 0.01 : 0.3;
    const gap = { mismatch_tokens: 3, mismatch_abs_mean: g, mismatch_abs_max: 2 * g, mismatch_k3: g * g };
    return { ...r, metrics: { ...r.metrics, ...gap } };
  };
  const samples = Array.from({ length: 4 }, (_, i) => sample({ episode: `e${i}` }));
  const m = await trainOnSamples(
    engine,
    samples,
    { ...DEFAULTS, miniBatchSize: 2, microBatchSize: 1 },
    OPTIM,
    new Rng("mm"),
  );
  assert.equal(engine.optim.length, 2);
  assert.equal(engine.calls.length, 4);
  assert.ok(Math.abs(m["mismatch/abs_mean"]! - 0.01) < 1e-12, `abs_mean ${m["mismatch/abs_mean"]}`);
  assert.equal(m["mismatch/abs_max"], 0.02);
  assert.ok(Math.abs(m["mismatch/k3"]! - 1e-4) < 1e-12);
});

test("with tisCap the trainer's own log-probs become the PPO anchor of rollout rows", async () => {
  const engine = new FakeEngine() as FakeEngine & { forward: (d: Datum[]) => Promise<number[][]> };
  const scored: Datum[][] = [];
  engine.forward = async (datums) => {
    scored.push(datums);
    return datums.map((d) => d.targetIds.map((t) => -t / 100));
  };
  const distill = sample({ stage: "distill", group: "", distillWeight: 1, mask: [0, 1, 1, 1, 1, 1] });
  await trainOnSamples(engine, [sample(), distill], { ...DEFAULTS, tisCap: 2 }, OPTIM);
  assert.equal(scored.length, 1);
  assert.equal(scored[0]!.length, 1, "only the rollout row is rescored");
  assert.equal(scored[0]![0]!.oldLogprobs, undefined);
  const [rollout, dist] = engine.calls[0]!.datums;
  assert.deepEqual(rollout!.oldLogprobs, [0, -0.12, -0.13, 0, -0.15]);
  assert.deepEqual(rollout!.samplerLogprobs, [0, -0.5, -0.25, 0, -2]);
  assert.deepEqual(dist!.oldLogprobs, [0, -0.5, -0.25, 0, -2], "distill rows keep their recomputed ones");
  assert.equal(engine.calls[0]!.loss.tisCap, 2);
  await assert.rejects(
    trainOnSamples(new FakeEngine(), [sample()], { ...DEFAULTS, tisCap: 2 }, OPTIM),
    /needs an engine with forward/,
  );
});

test("PPO mini-batches: a seeded shuffle, then one optimiser step per mini-batch with its own normaliser", async () => {
  const samples = Array.from({ length: 7 }, (_, i) => sample({ episode: `e${i}`, advantage: i }));
  const cfg = { ...DEFAULTS, miniBatchSize: 3, microBatchSize: 2 };
  // The split, by hand: the shuffled order cut into 3 + 3 + 1.
  const order = new Rng("mb").shuffle(samples.map((s) => s.advantage));
  const split = miniBatches(
    samples.map((s) => s.advantage),
    cfg,
    new Rng("mb"),
  );
  assert.deepEqual(split, [order.slice(0, 3), order.slice(3, 6), order.slice(6)]);
  assert.notDeepEqual(order, [0, 1, 2, 3, 4, 5, 6], "shuffled");
  assert.deepEqual(miniBatches([1, 2], cfg), [[1, 2]], "a batch that fits is one mini-batch, unshuffled");
  assert.throws(() => miniBatches(samples, cfg), /need an RNG/);

  const engine = new FakeEngine();
  const m = await trainOnSamples(engine, samples, cfg, OPTIM, new Rng("mb"));
  // Calls: mini-batch 1 as 2 + 1 (normaliser 3), mini-batch 2 the same, mini-batch 3 alone (its own divisor).
  assert.deepEqual(
    engine.calls.map((c) => [c.datums.length, c.loss.normalizer]),
    [
      [2, 3],
      [1, 3],
      [2, 3],
      [1, 3],
      [1, undefined],
    ],
  );
  assert.deepEqual(
    engine.calls.map((c) => c.datums.map((d) => d.advantages![1])),
    [order.slice(0, 2), order.slice(2, 3), order.slice(3, 5), order.slice(5, 6), order.slice(6)],
  );
  assert.equal(engine.optim.length, 3);
  assert.equal(m["optim/steps"], 3);
  assert.equal(m["forward_backward/calls"], 5);
  assert.ok(Math.abs(m.loss! - 1) < 1e-12, "the mean of the mini-batches' losses (each 1)");
  assert.equal(m["samples/trained"], 7);

  // Without mini-batches: one step, today's behaviour, and no RNG needed.
  const one = new FakeEngine();
  await trainOnSamples(one, samples, { ...cfg, miniBatchSize: null }, OPTIM);
  assert.equal(one.optim.length, 1);
});
