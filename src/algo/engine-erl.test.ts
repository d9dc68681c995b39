// The agent loop and the ERL step through the real engine (child process, tiny random fixture
// model): token trajectories under the real tokenizer and chat template, rollout log-probs aligned
// with the trained tokens, distill log-probs recomputed, and one training step whose PPO ratio
// starts at 1.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startEngine, type EngineClient } from "../engine/client.ts";
import { REPO_ROOT } from "../util/paths.ts";
import { EngineBackend } from "../agent/backend.ts";
import { TrajectoryBuilder } from "../agent/trajectory.ts";
import { FrozenLakeFamily } from "../envs/frozenlake.ts";
import type { ChatMessage } from "../engine/api.ts";
import { Rng } from "../util/rng.ts";
import { erlStep } from "./erl.ts";
import { scoringDatum, trainOnSamples } from "./learner.ts";
import { createMemory } from "./memory.ts";
import type { AlgoContext, TrainSample } from "./types.ts";
import { defaultConfig, learnerConfigFrom } from "../train/config.ts";
import { erlOptionsFrom } from "../train/algorithms/erl.ts";

const FIXTURE = join(REPO_ROOT, "test", "fixtures", "tiny-model");
let engine: EngineClient;
let model: EngineBackend;

before(async () => {
  engine = await startEngine();
  await engine.loadModel({ path: FIXTURE, dtype: "float32", device: "cpu", seed: 0, reference: "copy" });
  model = await EngineBackend.create(engine);
});
after(async () => {
  await engine?.close();
});

test("real template: an incremental trajectory equals the one-shot render", async () => {
  const env = new FrozenLakeFamily();
  const task = env.loadSplit("test")[0]!;
  const episode = env.makeEpisode(task);
  const b = await TrajectoryBuilder.start(model, [
    { role: "system", content: "rules" },
    { role: "user", content: episode.initialObservation },
  ]);
  const eos = model.eosTokenIds[0]!;
  for (const move of ["up", "left"]) {
    const text = "```\n" + move + "\n```";
    const tokens = [...(await engine.encode(text)), eos];
    b.appendSampled(
      tokens,
      tokens.map(() => -1),
      text,
    );
    const result = episode.step(text) as { observation: string; done: boolean };
    if (result.done) break;
    await b.appendMessages([{ role: "user", content: result.observation }]);
  }
  const traj = b.finish();
  // The last board was never answered, so the trajectory ends with the last reply.
  const lastReply = b.messages.map((m) => m.role).lastIndexOf("assistant");
  assert.deepEqual(traj.ids, await engine.renderChat(b.messages.slice(0, lastReply + 1)));
  assert.ok(traj.mask.some((m) => m === 1));
});

/** The decoded runs of trained tokens, in order. */
async function trainedRuns(s: TrainSample): Promise<string[]> {
  const runs: string[] = [];
  let cur: number[] = [];
  for (let i = 0; i <= s.ids.length; i++) {
    if (i < s.ids.length && s.mask[i] === 1) cur.push(s.ids[i]!);
    else if (cur.length > 0) {
      runs.push(await engine.decode(cur, { skipSpecialTokens: true }));
      cur = [];
    }
  }
  return runs;
}

/** Small boards keep several turns and the reflections inside the fixture's 1024 positions. */
function smallBoards(env: FrozenLakeFamily, index: number) {
  return env
    .loadSplit("test")
    .filter((t) => t.size <= 3)
    .slice(index, index + 1);
}
const SMALL_ERL = {
  ...erlOptionsFrom(defaultConfig()),
  n: 2,
  maxTokensPerTurn: 12,
  maxReflectionTokens: 24,
  profile: "compact" as const,
};

test("ERL step through the engine: sampled tokens are trained with their own log-probs", async () => {
  const env = new FrozenLakeFamily();
  const tasks = smallBoards(env, 0);
  const options = SMALL_ERL;
  const ctx: AlgoContext = { env, model, memory: createMemory({ kind: "global" }), rng: new Rng(5), step: 1 };
  const r = await erlStep(ctx, tasks, options);
  assert.equal(r.rollouts.filter((x) => x.stage === "first").length, 2);
  const trainedSamples = r.samples.filter((s) => s.mask.some((m) => m === 1));
  assert.ok(trainedSamples.length >= 5);

  // Rollout (or recomputed) log-probs sit on exactly the tokens they score.
  const scored = await engine.forward(trainedSamples.map(scoringDatum));
  trainedSamples.forEach((s, k) => {
    s.ids.forEach((_, i) => {
      if (s.mask[i] !== 1) return;
      const f = scored[k]![i - 1]!;
      assert.ok(
        Math.abs(f - s.logprobs[i]!) < 1e-3,
        `${s.stage} ${s.episode} token ${i}: ${s.logprobs[i]} vs ${f}`,
      );
    });
  });

  // The trained runs are the assistant turns, as the episode recorded them.
  for (const s of r.samples.filter((x) => x.stage === "first")) {
    const rec = r.rollouts.find((x) => x.episode === s.episode && x.stage === "first")!;
    const replies = rec.messages.filter((m: ChatMessage) => m.role === "assistant").map((m) => m.content);
    assert.deepEqual(
      (await trainedRuns(s)).filter((t) => t !== ""),
      replies.filter((t) => t !== ""),
    );
  }

  // One optimiser step over several forwardBackward calls: the ratio starts at 1, KL at 0. The
  // random model earns no reward, so advantages are set by hand to get a gradient.
  const batch = r.samples.map((s, i) => ({ ...s, advantage: i % 2 === 0 ? 1 : -1 }));
  const metrics = await trainOnSamples(
    engine,
    batch,
    { ...learnerConfigFrom(defaultConfig()), microBatchSize: 4 },
    { lr: 1e-3, gradClip: 1 },
  );
  const expectedTokens = trainedSamples.reduce(
    (a, s) => a + s.mask.slice(1).filter((m) => m === 1).length,
    0,
  );
  assert.equal(metrics["tokens/trained"], expectedTokens);
  assert.equal(metrics["forward_backward/calls"], Math.ceil(trainedSamples.length / 4));
  assert.ok(Math.abs(metrics["ratio/mean"]! - 1) < 1e-3, `ratio ${metrics["ratio/mean"]}`);
  assert.ok(metrics.kl! < 1e-6);
  assert.ok(Number.isFinite(metrics.grad_norm) && metrics.grad_norm! > 0);
  // The step changed the policy: the same tokens now score differently.
  const after = await engine.forward([scoringDatum(trainedSamples[0]!)]);
  assert.notDeepEqual(after[0], scored[0]);
  assert.ok(r.metrics["samples/reflection"]! > 0);
});

test("the reference's optimiser end to end: log-probs at T, ratio 1 at the first mini-batch, then several steps", async () => {
  const env = new FrozenLakeFamily();
  const model = await EngineBackend.create(engine);
  const tasks = smallBoards(env, 1);
  const options = { ...SMALL_ERL, logprobTemperature: 0.7 };
  const ctx: AlgoContext = { env, model, memory: createMemory({ kind: "global" }), rng: new Rng(9), step: 1 };
  const r = await erlStep(ctx, tasks, options);
  const trained = r.samples.filter((s) => s.mask.some((m) => m === 1));
  // Rollout and distill log-probs are the engine's at T = 0.7, not at T = 1.
  const atT = await engine.forward(trained.map(scoringDatum), { temperature: 0.7 });
  const at1 = await engine.forward(trained.map(scoringDatum));
  let gap1 = 0;
  trained.forEach((s, k) =>
    s.ids.forEach((_, i) => {
      if (s.mask[i] !== 1) return;
      assert.ok(Math.abs(atT[k]![i - 1]! - s.logprobs[i]!) < 1e-3, `${s.stage} token ${i}`);
      gap1 = Math.max(gap1, Math.abs(at1[k]![i - 1]! - s.logprobs[i]!));
    }),
  );
  assert.ok(gap1 > 1e-2, "T = 1 log-probs differ");
  // One mini-batch: the ratio is 1 at T = 0.7. Several: one optimiser step each.
  const batch = r.samples.map((s, i) => ({ ...s, advantage: i % 2 === 0 ? 1 : -1 }));
  const cfg = { ...learnerConfigFrom(defaultConfig()), temperature: 0.7, logRatioClamp: 20, klClamp: 10 };
  const one = await trainOnSamples(engine, batch, cfg, { lr: 0, gradClip: 1 });
  assert.ok(Math.abs(one["ratio/mean"]! - 1) < 1e-3, `ratio ${one["ratio/mean"]}`);
  const many = await trainOnSamples(
    engine,
    batch,
    { ...cfg, miniBatchSize: 2 },
    { lr: 1e-3, gradClip: 1 },
    new Rng(1),
  );
  assert.equal(many["optim/steps"], Math.ceil(trained.length / 2));
  assert.ok(many["ratio/max"]! - many["ratio/min"]! > 1e-4, "later mini-batches see a moved policy");
  // The engine's own sampler against its own forward is float rounding, measured before the policy
  // moves: the later mini-batches' change is not counted as rollout–trainer mismatch.
  for (const m of [one, many]) {
    assert.equal(typeof m["mismatch/abs_mean"], "number");
    assert.ok(m["mismatch/abs_max"]! < 1e-4, `mismatch/abs_max ${m["mismatch/abs_max"]}`);
  }
});
