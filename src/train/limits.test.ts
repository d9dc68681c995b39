import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { validateConfig } from "./config.ts";
import {
  checkRunLimits,
  episodeBudget,
  readModelShape,
  sampleRowBudget,
  SEED_MAX,
  STRING_MAX,
  thisMachine,
  type Machine,
} from "./limits.ts";
import { UserError } from "../util/errors.ts";

const TINY = fileURLToPath(new URL("../../test/fixtures/tiny-model", import.meta.url));
const SMALL: Machine = { heapBytes: 4 * 2 ** 30, memoryBytes: 16 * 2 ** 30 };
const cfg = (over: Record<string, unknown> = {}) => validateConfig({ model: { path: TINY }, ...over });
const refused = (f: () => void, re: RegExp) =>
  assert.throws(f, (e: unknown) => e instanceof UserError && re.test(e.message));

test("the shipped presets and the defaults are within every limit on this machine", async () => {
  const { buildConfig, listPresets } = await import("./config.ts");
  for (const name of listPresets()) {
    const c = buildConfig(name, []).config;
    const shape = readModelShape(c.model.path);
    checkRunLimits(c, { shape, machine: thisMachine() });
  }
  checkRunLimits(cfg(), { shape: readModelShape(TINY) });
});

test("the model's sizes come from its config.json", () => {
  const s = readModelShape(TINY)!;
  // test/fixtures/tiny-model: 2 layers, 2 KV heads of 16 dimensions, 105 tokens, 1024 positions.
  assert.deepEqual(s, { maxPositions: 1024, vocabSize: 105, hiddenSize: 64, kvPerToken: 2 * 2 * 2 * 16 });
  const d = mkdtempSync(join(tmpdir(), "erl-limits-"));
  assert.equal(readModelShape(d), null);
  writeFileSync(
    join(d, "config.json"),
    '\uFEFF{"n_positions": 512, "n_embd": 32, "n_head": 4, "n_layer": 3}',
  );
  assert.deepEqual(readModelShape(d), {
    maxPositions: 512,
    vocabSize: null,
    hiddenSize: 32,
    kvPerToken: 3 * 2 * 4 * 8,
  });
});

test("seeds: integers in 0..2^32-1, the RNG's range", () => {
  checkRunLimits(cfg({ seed: SEED_MAX }));
  refused(
    () => checkRunLimits(cfg({ seed: SEED_MAX + 1 })),
    /key "seed": 4,294,967,296 is over the limit of 4,294,967,295 \(seeds are taken modulo 2\^32/,
  );
  refused(() => checkRunLimits(cfg({ seed: 1e300 })), /key "seed": 1e\+300 is over the limit/);
});

test("episodes per step: the bound follows Node's heap and the context, and names the outlier", () => {
  const b = episodeBudget(2048, SMALL);
  // 2 GiB for one step, 32 KiB + 64 B × 2048 = 160 KiB an episode.
  assert.equal(b.episodes, Math.floor(2 ** 31 / (32 * 1024 + 64 * 2048)));
  // Per task: 4 attempts × 3 episodes (ERL): batchSize may be at most episodes / 12.
  const limit = Math.floor(b.episodes / 12);
  checkRunLimits(cfg({ batchSize: limit }), { machine: SMALL });
  refused(
    () => checkRunLimits(cfg({ batchSize: limit + 1 }), { machine: SMALL }),
    new RegExp(
      `key "batchSize": ${(limit + 1).toLocaleString("en-US")} is over the limit of ${limit.toLocaleString("en-US")} here: batchSize .* × algo\\.n 4 × episodes per attempt 3 = .* episodes a step.*Node's 4,096 MiB heap`,
    ),
  );
  // RLVR: one episode per attempt, 10 attempts.
  checkRunLimits(cfg({ batchSize: Math.floor(b.episodes / 10), algo: { name: "rlvr" } }), { machine: SMALL });
  refused(() => checkRunLimits(cfg({ algo: { n: 5000 } }), { machine: SMALL }), /key "algo\.n": .*4,096/);
  // A longer context lowers the bound.
  assert.ok(episodeBudget(8192, SMALL).episodes < b.episodes / 3);
  // With a heap far larger than any string, V8's longest string decides.
  const huge = episodeBudget(2048, { heapBytes: 2 ** 50, memoryBytes: 2 ** 50 });
  assert.equal(huge.episodes, Math.floor(STRING_MAX / (4096 + 16 * 2048)));
  assert.match(huge.why, /one string/);
});

test("evaluation: tasks × n, with flags named as flags", () => {
  const where = { flags: { "eval.n": "--n", "data.evalTasks": "--tasks" } };
  refused(
    () =>
      checkRunLimits(cfg({ data: { evalTasks: 1 }, eval: { n: 4096 } }), {
        where,
        machine: { heapBytes: 2 ** 26, memoryBytes: 2 ** 34 },
        only: "eval",
      }),
    /^--n 4,096 is over the limit of \d+ here: data\.evalTasks 1 × eval\.n 4,096/,
  );
  // data.evalTasks null: the split's size counts.
  const all = cfg({ data: { evalTasks: null }, eval: { n: 2000 } });
  checkRunLimits(all, { machine: SMALL, only: "eval" });
  refused(
    () => checkRunLimits(all, { machine: SMALL, evalSplitTasks: 100, only: "eval" }),
    /key "eval\.n": 2,000 is over the limit/,
  );
});

test("a CPU engine: rows of keys and values within half the RAM", () => {
  const shape = { maxPositions: 8192, vocabSize: 49152, hiddenSize: 576, kvPerToken: 30 * 2 * 3 * 64 };
  const rows = sampleRowBudget(4096, shape, SMALL)!;
  // 4096 × 11520 × 4 B + 49152 × 12 B = 189 MB a row; 8 GiB / that.
  assert.equal(rows.rows, Math.floor((8 * 2 ** 30) / (4096 * 11520 * 4 + 49152 * 12)));
  const big = cfg({
    batchSize: 32,
    data: { evalTasks: 8 },
    eval: { n: 1 },
    algo: { maxContextTokens: 4096 },
    model: { path: TINY, device: "cpu" },
  });
  refused(
    () => checkRunLimits(big, { shape, machine: SMALL }),
    /key "batchSize": 32 is over the limit of \d+ here: batchSize 32 × algo\.n 4 = 128 sequences in one sampling call/,
  );
  // On a GPU the engine's memory is not known here.
  checkRunLimits(
    cfg({ batchSize: 32, algo: { maxContextTokens: 4096 }, model: { path: TINY, device: "cuda" } }),
    { shape, machine: SMALL },
  );
});

test("token lengths, top-k and LoRA rank against the model", () => {
  const shape = readModelShape(TINY)!;
  refused(
    () => checkRunLimits(cfg({ algo: { maxTokensPerTurn: 3000 } }), { shape }),
    /key "algo\.maxTokensPerTurn": 3,000 is over the limit of 2,048 \(a turn fits in algo\.maxContextTokens\)/,
  );
  refused(
    () =>
      checkRunLimits(cfg({ algo: { attemptSampling: { temperature: 1, topP: 1, topK: 200 } } }), { shape }),
    /key "algo\.attemptSampling\.topK": 200 is over the limit of 105 \(the model's vocabulary size\)/,
  );
  refused(
    () =>
      checkRunLimits(
        cfg({
          model: {
            path: TINY,
            lora: { rank: 65, alpha: 1, dropout: 0, targetModules: "q_proj" },
            reference: "base",
          },
        }),
        { shape },
      ),
    /key "model\.lora\.rank": 65 is over the limit of 64/,
  );
  refused(
    () => checkRunLimits(cfg({ steps: 1_000_000 })),
    /key "steps": 1,000,000 is over the limit of 999,999 \(checkpoints are named step-NNNNNN\)/,
  );
  refused(
    () => checkRunLimits(cfg({ policy: { timeout: 3e6 } })),
    /key "policy\.timeout": 3000000 is over the limit of 2,147,483 s/,
  );
});
