/**
 * The official `tinker` SDK (in .venv-tinker) against `erl engine serve --tinker` on erl-tiny
 * (test/tinker/sdk_drive.py drives it), and the same calls replayed on the engine's own protocol: a
 * LoRA training client, forward and forward_backward with each built-in loss, optim_step,
 * checkpoints, sampling sessions (live, saved, and after the weights moved on), prompt log-probs,
 * and refusals that come back as readable exceptions at once.
 *
 * Not part of `npm test` (the SDK's virtualenv is its own 1.6 GB): run by scripts/test-tinker.sh,
 * which .ci/run calls after `npm test`.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startEngine } from "../../src/engine/client.ts";
import { REPO_ROOT } from "../../src/util/paths.ts";
import type { Datum, Engine, LossConfig } from "../../src/engine/api.ts";
import { spawnTinkerServer, tinkerEnv, tinkerPython } from "../../src/engine/tinker.ts";

const TINY = join(REPO_ROOT, "models", "erl-tiny");
const KEY = "tml-itest";
// The server's engine and this one run the same fp32 math on the same inputs; sums of a few hundred
// log-probs in another micro-batch order differ in the last bits.
const close = (a: number, b: number, rel = 1e-4, abs = 1e-4) =>
  assert.ok(Math.abs(a - b) <= abs + rel * Math.abs(b), `${a} vs ${b}`);

interface Step {
  op: string;
  loss_fn: string | null;
  config: Record<string, number> | null;
  data: Record<string, number[]>[];
  loss: number;
  logprobs: number[][];
  adam: {
    learning_rate: number;
    beta1: number;
    beta2: number;
    eps: number;
    weight_decay: number;
    grad_clip_norm: number;
  };
  metrics: Record<string, number>;
  prompt: number[];
  n: number;
  seed: number;
  max_tokens: number;
  tokens: number[][];
  stop: string[];
}

function datums(seqs: number[][], data: Record<string, number[]>[]): Datum[] {
  return seqs.map((s, i) => {
    const d = data[i]!;
    const n = s.length - 1;
    const out: Datum = {
      inputIds: s.slice(0, -1),
      targetIds: s.slice(1),
      weights: d.weights ?? new Array(n).fill(1),
    };
    if (d.advantages) out.advantages = d.advantages;
    if (d.logprobs) out.oldLogprobs = d.logprobs;
    return out;
  });
}

function lossOf(step: Step): LossConfig {
  const loss: LossConfig = {
    name: step.loss_fn as LossConfig["name"],
    aggregation: "seq-mean-token-sum",
    normalizer: 1,
  };
  if (step.loss_fn === "ppo") {
    loss.clipLow = 1 - step.config!.clip_low_threshold!;
    loss.clipHigh = step.config!.clip_high_threshold! - 1;
  }
  return loss;
}

async function ceLoss(engine: Engine, ds: Datum[]): Promise<number> {
  const lps = await engine.forward(ds);
  return lps.reduce((a, lp, i) => a + lp.reduce((b, x, t) => b - ds[i]!.weights[t]! * x, 0), 0);
}

test(
  "the tinker SDK against serve --tinker: the engine's own numbers, checkpoints, sampling, refusals",
  { timeout: 900_000 },
  async () => {
    const store = mkdtempSync(join(tmpdir(), "erl-tinker-store-"));
    const server = await spawnTinkerServer({
      model: TINY,
      servedModelName: "erl-tiny",
      host: "127.0.0.1",
      port: 0,
      token: KEY,
      store,
      dtype: "float32",
      device: "cpu",
      stderr: () => undefined,
    });
    const engine = await startEngine();
    try {
      const { stdout } = await promisify(execFile)(
        tinkerPython(),
        [join(REPO_ROOT, "test", "tinker", "sdk_drive.py"), server.url, KEY, "erl-tiny"],
        { cwd: REPO_ROOT, env: tinkerEnv(), maxBuffer: 64 << 20, timeout: 600_000 },
      );
      const out = JSON.parse(stdout) as {
        steps: Step[];
        seqs: number[][];
        capabilities: string[];
        info: { model_id: string; lora_rank: number; model_name: string };
        paths: { state: string; sampler: string };
        prompt_logprobs: (number | null)[];
        moved_loss: number;
        restored_loss: number;
        snapshot_tokens: { live_again: number[][]; from_path: number[][] };
        errors: Record<string, string>;
        errors_seconds: number;
        wrong_key: string;
        custom_loss: number;
        custom_reference: number;
      };
      assert.deepEqual(out.capabilities, ["erl-tiny"]);
      assert.deepEqual(out.info, { model_id: out.info.model_id, lora_rank: 4, model_name: "erl-tiny" });
      assert.match(out.info.model_id, /^session-[0-9a-f]+:train:0$/);
      assert.match(out.paths.state, /^tinker:\/\/session-[0-9a-f]+:train:0\/weights\/after-two-steps$/);

      // The same model on the engine's own protocol: LoRA as the server maps Tinker's defaults.
      await engine.loadModel({
        path: TINY,
        dtype: "float32",
        device: "cpu",
        seed: 0,
        lora: {
          rank: 4,
          alpha: 32,
          dropout: 0,
          targetModules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "lm_head",
          ],
        },
      });
      const seqs = out.seqs;
      let afterTwo = 0;
      for (const [i, step] of out.steps.entries()) {
        if (step.op === "forward") {
          const ds = datums(seqs, step.data);
          const lps = await engine.forward(ds);
          lps.forEach((lp, k) => lp.forEach((x, t) => close(step.logprobs[k]![t]!, x, 1e-5, 1e-4)));
          close(step.loss, await ceLoss(engine, ds));
        } else if (step.op === "forward_backward") {
          const res = await engine.forwardBackward(datums(seqs, step.data), lossOf(step));
          close(step.loss, res.loss);
        } else if (step.op === "optim_step") {
          const a = step.adam;
          const res = await engine.optimStep({
            lr: a.learning_rate,
            betas: [a.beta1, a.beta2],
            eps: a.eps,
            weightDecay: a.weight_decay,
            gradClip: a.grad_clip_norm,
          });
          close(step.metrics["grad_norm:mean"]!, res.gradNorm, 1e-3);
        } else if (step.op === "sample") {
          const seqsOut = await engine.sample({
            prompts: [step.prompt],
            n: step.n,
            seed: step.seed,
            maxTokens: step.max_tokens,
            temperature: 1,
          });
          assert.deepEqual(
            step.tokens,
            seqsOut.map((s) => s.tokens),
            `sampled tokens at step ${i}`,
          );
          seqsOut.forEach((s, k) =>
            s.logprobs.forEach((x, t) => close(step.logprobs[k]![t]!, x, 1e-5, 1e-4)),
          );
          // Samplers made from the saved path and the earlier live client still sample these weights.
          assert.deepEqual(out.snapshot_tokens.live_again, step.tokens);
          assert.deepEqual(out.snapshot_tokens.from_path, step.tokens);
          const pl = (
            await engine.forward([
              {
                inputIds: step.prompt.slice(0, -1),
                targetIds: step.prompt.slice(1),
                weights: step.prompt.slice(1).map(() => 1),
              },
            ])
          )[0]!;
          assert.equal(out.prompt_logprobs[0], null);
          pl.forEach((x, t) => close(out.prompt_logprobs[t + 1]!, x, 1e-5, 1e-4));
          afterTwo = await ceLoss(engine, datums(seqs, out.steps[0]!.data));
        }
      }
      // The state saved after two steps, loaded into a new training client, forwards as they did.
      close(out.restored_loss, afterTwo);
      // A third step (cross-entropy, the same Adam settings) moves the weights on, here as there.
      const ce = out.steps[1]!;
      await engine.forwardBackward(datums(seqs, ce.data), lossOf(ce));
      const a = out.steps[2]!.adam;
      await engine.optimStep({
        lr: a.learning_rate,
        betas: [a.beta1, a.beta2],
        eps: a.eps,
        weightDecay: a.weight_decay,
        gradClip: a.grad_clip_norm,
      });
      close(out.moved_loss, await ceLoss(engine, datums(seqs, out.steps[0]!.data)));
      assert.notEqual(Math.round(out.moved_loss), Math.round(afterTwo));

      close(out.custom_loss, out.custom_reference, 1e-5);
      assert.match(
        out.errors.cispo!,
        /BadRequestError: .*loss_fn 'cispo' is not served; served: cross_entropy, importance_sampling, ppo/,
      );
      assert.match(
        out.errors.other_model!,
        /base model 'Qwen\/Qwen3-8B' is not served here; this server serves 'erl-tiny'/,
      );
      assert.match(out.errors.topk!, /topk_sample_logprobs > 0 is not served/);
      assert.ok(out.errors_seconds < 30, `refusals took ${out.errors_seconds} s`);
      assert.match(out.wrong_key, /AuthenticationError: Error code: 401/);
    } finally {
      await engine.close();
      await server.stop();
      rmSync(store, { recursive: true, force: true });
    }
  },
);
