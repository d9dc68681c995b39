/**
 * The vLLM-sampled engine's trainer side on a CPU (vLLM itself needs a GPU: test/vllm/). Scoring
 * goes to the trainer at the temperature asked — the distill rows are scored at the loss's T — and
 * the vLLM process is not involved (here there is none).
 */
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startEngine, type EngineClient } from "./client.ts";
import { VllmSampledEngine } from "./vllm.ts";
import { REPO_ROOT } from "../util/paths.ts";
import type { Datum } from "./api.ts";

let trainer: EngineClient;
before(async () => {
  trainer = await startEngine();
  await trainer.loadModel({
    path: join(REPO_ROOT, "test", "fixtures", "tiny-model"),
    dtype: "float32",
    device: "cpu",
    seed: 0,
  });
});
after(async () => {
  await trainer.close();
});

test("forward passes the temperature to the trainer", async () => {
  // The constructor is private to `start`, which also launches vLLM; forward needs only the trainer.
  const Ctor = VllmSampledEngine as unknown as new (t: EngineClient, v: null) => VllmSampledEngine;
  const engine = new Ctor(trainer, null);
  const datums: Datum[] = [{ inputIds: [5, 9, 13, 7], targetIds: [9, 13, 7, 2], weights: [0, 1, 1, 1] }];
  const [atT] = await engine.forward(datums, { temperature: 0.7 });
  const [expected] = await trainer.forward(datums, { temperature: 0.7 });
  const [atOne] = await trainer.forward(datums);
  assert.deepEqual(atT, expected);
  assert.ok(
    atT!.some((v, i) => Math.abs(v - atOne![i]!) > 1e-3),
    "T = 0.7 and T = 1 log-probs differ here",
  );
});
