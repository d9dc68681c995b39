// The TypeScript client drives a 2-rank engine (torchrun, gloo on CPU) over the same stdio protocol as
// a single engine, with the tiny fixture: one training step gives the same log-probs as one process.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { engineArgs, startEngine } from "./client.ts";
import { REPO_ROOT } from "../util/paths.ts";
import type { Datum } from "./api.ts";
import { UserError } from "../util/errors.ts";

const FIXTURE = join(REPO_ROOT, "test", "fixtures", "tiny-model");

test("engineArgs launches torchrun for several ranks and refuses a bad count", () => {
  assert.deepEqual(engineArgs(1), ["-m", "erl_engine.server"]);
  assert.deepEqual(engineArgs(2).slice(0, 4), [
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node=2",
  ]);
  assert.throws(() => engineArgs(0), UserError);
  assert.throws(() => engineArgs(1.5), /positive integer/);
});

test("a 2-rank engine trains like a single one through the client", async () => {
  const datums: Datum[] = [5, 11, 3].map((n, k) => {
    const ids = Array.from({ length: n + 1 }, (_, i) => 7 + ((i * 13 + k * 5) % 90));
    return { inputIds: ids.slice(0, -1), targetIds: ids.slice(1), weights: ids.slice(1).map(() => 1) };
  });
  const load = { path: FIXTURE, dtype: "float32", device: "cpu", seed: 0 } as const;
  const [one, two] = await Promise.all([startEngine(), startEngine({ ranks: 2 })]);
  try {
    await Promise.all([one.loadModel(load), two.loadModel(load)]);
    const [a, b] = await Promise.all([
      one.forwardBackward(datums, { name: "cross_entropy" }),
      two.forwardBackward(datums, { name: "cross_entropy" }),
    ]);
    assert.ok(Math.abs(a.loss - b.loss) < 1e-5 * Math.abs(a.loss), `${a.loss} vs ${b.loss}`);
    assert.equal(a.metrics.tokens, b.metrics.tokens);
    await Promise.all([one.optimStep({ lr: 1e-3 }), two.optimStep({ lr: 1e-3 })]);
    const [lpA, lpB] = await Promise.all([one.forward(datums), two.forward(datums)]);
    lpA.forEach((row, i) =>
      row.forEach((x, t) => assert.ok(Math.abs(x - (lpB[i]?.[t] ?? NaN)) < 2e-5, `datum ${i} token ${t}`)),
    );
  } finally {
    await Promise.all([one.close(), two.close()]);
  }
});
