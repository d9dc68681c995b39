/**
 * The algorithm registry: a new algorithm is one file and one registration line (examples/rlvr-wide.ts,
 * RLVR with 16 attempts per task), and the config, the runner and `erl compare` take it from there.
 * The step runs through the real engine with the tiny random model fixture.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { RLVR_WIDE } from "../../../examples/rlvr-wide.ts";
import { applyOverrides, attemptsPerTask, defaultConfig, validateConfig } from "../config.ts";
import { runTraining } from "../runner.ts";
import { defaultDeps } from "../deps.ts";
import { Progress } from "../progress.ts";
import { REPO_ROOT } from "../../util/paths.ts";
import { UserError } from "../../util/errors.ts";
import { int, oneOf } from "../../util/schema.ts";
import { getAlgorithm, knownAlgorithms, registerAlgorithm } from "./registry.ts";
import { RLVR } from "./rlvr.ts";
import { plannedConfig } from "../compare.ts";

test("a registered algorithm is known to the config, its defaults and erl compare", () => {
  assert.ok(knownAlgorithms().includes("rlvr-wide"));
  const cfg = applyOverrides(defaultConfig(), ["algo.name=rlvr-wide"]);
  assert.equal(attemptsPerTask(cfg), 16);
  assert.equal(plannedConfig(defaultConfig(), "rlvr-wide", 0, { kind: "rollouts" }, "/x").algo.n, 16);
  assert.throws(
    () => validateConfig({ algo: { name: "rlvr-wider" } }),
    (e: unknown) => e instanceof UserError && /"rlvr-wide"/.test(e.message),
  );
});

test("registration refuses a taken name and a key declared differently by another algorithm", () => {
  assert.throws(() => registerAlgorithm(RLVR_WIDE), /already registered/);
  assert.throws(
    () => registerAlgorithm({ ...RLVR, name: "clash", schema: { memory: int(1) }, defaults: { memory: 1 } }),
    /algo\.memory is declared differently/,
  );
  assert.throws(
    () => registerAlgorithm({ ...RLVR, name: "nodefault", schema: { width: oneOf(["a"]) }, defaults: {} }),
    /algo\.width has no default/,
  );
  assert.equal(knownAlgorithms().includes("clash"), false);
});

test("the runner runs the registered algorithm's step with its options", async () => {
  const runs = mkdtempSync(join(tmpdir(), "erl-algo-registry-"));
  const config = validateConfig({
    name: "wide",
    runsDir: runs,
    model: { path: join(REPO_ROOT, "test", "fixtures", "tiny-model"), dtype: "float32", device: "cpu" },
    steps: 1,
    batchSize: 1,
    algo: { name: "rlvr-wide", maxTokensPerTurn: 4, maxContextTokens: 640 },
    data: { evalTasks: 1 },
    eval: { every: 0, final: false, initial: false },
    checkpoint: { every: 1, keep: 1 },
  });
  assert.equal(getAlgorithm(config.algo.name), RLVR_WIDE);
  const dir = join(runs, "wide");
  await runTraining({
    config,
    runDir: dir,
    resume: false,
    deps: defaultDeps(),
    progress: new Progress({ write: () => undefined }),
  });
  const [train] = readFileSync(join(dir, "metrics.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, number | string>);
  assert.equal(train!.kind, "train");
  assert.equal(train!["episodes/first"], 16, "16 first attempts for the one task");
  assert.equal(train!["optim/steps"], 1, "and the runner trained on them");
  assert.equal(train!["memory/updates"], undefined, "no memory: RLVR's descriptor says so");
});
