import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { validateConfig } from "./config.ts";
import { budgetStatement, parseBudget, plannedConfig, runComparison } from "./compare.ts";
import { counterDeps } from "../testing/testkit.ts";
import { Progress } from "./progress.ts";
import { mean, pm, std, summarise, curve, type RunData } from "./report.ts";
import { lineChart, niceTicks } from "./svg.ts";
import { parseAlgos, parseSeeds } from "../cli/compare.ts";

const quiet = (): Progress => new Progress({ write: () => undefined });
const base = () =>
  validateConfig({
    model: { path: "test/fixtures/tiny-model" },
    steps: 3,
    batchSize: 2,
    data: { evalTasks: 2 },
    eval: { every: 1, n: 1 },
    checkpoint: { every: 2 },
  });

test("mean, sample std and the ± format", () => {
  assert.equal(mean([1, 2, 3]), 2);
  assert.equal(std([1, 2, 3]), 1);
  assert.equal(std([5]), 0);
  assert.equal(pm([0.5, 0.7]), "0.600 ± 0.141");
  assert.equal(pm([0.5]), "0.500");
  assert.equal(pm([]), "–");
});

test("budgets: the paper's equal rollouts, equal attempts, equal time", () => {
  assert.deepEqual(parseBudget("time:2.5"), { kind: "time", minutes: 2.5 });
  assert.throws(() => parseBudget("tokens"), /expected "rollouts"/);
  const b = base();
  assert.equal(plannedConfig(b, "rlvr", 1, { kind: "rollouts" }, "/x").algo.n, 10);
  assert.equal(plannedConfig(b, "erl-no-memory", 1, { kind: "rollouts" }, "/x").algo.n, 4);
  assert.equal(plannedConfig(b, "rlvr", 1, { kind: "attempts" }, "/x").algo.n, 4);
  const timed = plannedConfig(b, "erl", 2, { kind: "time", minutes: 3 }, "/x");
  assert.equal(timed.timeBudget, 180);
  assert.equal(timed.seed, 2);
  assert.equal(timed.name, "erl-seed2");
  assert.match(
    budgetStatement(b, { kind: "rollouts" }, ["erl", "rlvr"]),
    /erl samples 4 .* rlvr samples 10 .* 3 training steps/,
  );
  assert.match(budgetStatement(b, { kind: "time", minutes: 3 }, ["rlvr"]), /3 minutes of run time/);
  assert.deepEqual(parseSeeds("3"), [0, 1, 2]);
  assert.deepEqual(parseSeeds("4,7"), [4, 7]);
  assert.throws(() => parseSeeds("x"), /--seeds/);
  assert.throws(() => parseAlgos("erl,ppo"), /unknown algorithm "ppo"/);
});

test("curves average over seeds at each step; the band spans the seeds", () => {
  const runs: RunData[] = [0, 1].map((seed) => ({
    algo: "erl",
    seed,
    dir: "",
    train: [],
    evals: [
      { kind: "eval", step: 0, time: 60 * (1 + seed), "eval/reward": 0.1 * seed },
      { kind: "eval", step: 2, time: 120 * (1 + seed), "eval/reward": 0.5 + 0.1 * seed },
    ],
  }));
  const c = curve(runs, "eval", "eval/reward", "step");
  assert.deepEqual(
    c.points.map((p) => p[0]),
    [0, 2],
  );
  assert.ok(Math.abs(c.points[1]![1] - 0.55) < 1e-12);
  assert.deepEqual(c.band![1]!.slice(1), [0.5, 0.6]);
  const t = curve(runs, "eval", "eval/reward", "time");
  assert.deepEqual(
    t.points.map((p) => p[0]),
    [1.5, 3],
  ); // minutes, mean over seeds
  const s = summarise(runs, ["erl", "rlvr"]);
  assert.deepEqual(s[0]!.finalEval, [0.5, 0.6]);
  assert.deepEqual(s[1]!.finalEval, []);
});

test("the SVG chart is well-formed and escapes text", () => {
  assert.deepEqual(niceTicks(0, 1), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  // Step axes: whole numbers only.
  assert.deepEqual(niceTicks(1, 12, 5, true), [3, 6, 9, 12]);
  assert.deepEqual(niceTicks(0, 3, 5, true), [0, 1, 2, 3]);
  assert.deepEqual(niceTicks(1, 12), [2.5, 5, 7.5, 10]);
  const svg = lineChart({
    title: "a < b & c",
    xLabel: "x",
    yLabel: "y",
    series: [
      {
        name: "s1",
        points: [
          [0, 0],
          [1, 1],
        ],
        band: [
          [0, 0, 0.1],
          [1, 0.9, 1],
        ],
      },
      { name: "s2", points: [], dashed: true },
    ],
  });
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.match(svg, /a &lt; b &amp; c/);
  assert.match(svg, /<\/svg>\n$/);
  assert.equal((svg.match(/<path /g) ?? []).length, 1);
  assert.equal((svg.match(/<polygon /g) ?? []).length, 1);
});

test(
  "a comparison runs algos × seeds on the same tasks, reports, and is resumable",
  { timeout: 60_000 },
  async () => {
    const dir = join(mkdtempSync(join(tmpdir(), "erl-compare-")), "cmp");
    const opts = {
      env: "frozenlake" as const,
      algos: ["erl" as const, "rlvr" as const],
      seeds: [0, 1],
      budget: { kind: "rollouts" as const },
      base: base(),
      dir,
      command: "erl compare --env frozenlake --algos erl,rlvr --seeds 2",
      progress: quiet(),
    };
    const r1 = await runComparison({ ...opts, deps: counterDeps() });
    assert.equal(r1.ran.length, 4);
    const report = readFileSync(join(dir, "report.md"), "utf8");
    assert.match(report, /\*\*Budget\.\*\* .*rlvr samples 10/);
    assert.match(report, /\| erl \| \d\.\d{3} ± \d\.\d{3} \|/);
    assert.match(report, /\| rlvr \| /);
    for (const f of [
      "eval-reward-vs-step.svg",
      "eval-reward-vs-time.svg",
      "train-reward-vs-step.svg",
      "train-reward-vs-time.svg",
    ]) {
      assert.ok(existsSync(join(dir, f)), f);
      assert.match(report, new RegExp(`\\]\\(${f.replace(/\./g, "\\.")}\\)`));
    }
    // Same seed → same tasks for both algorithms.
    const tasksOf = (run: string): string[] =>
      readFileSync(join(dir, run, "rollouts.jsonl"), "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as { stage: string; task: string; step: number; attempt: number })
        .filter((r) => r.stage === "first" && r.attempt === 0)
        .map((r) => `${r.step}:${r.task}`);
    assert.deepEqual(tasksOf("erl-seed1"), tasksOf("rlvr-seed1"));
    assert.notDeepEqual(tasksOf("erl-seed0"), tasksOf("erl-seed1"));

    const r2 = await runComparison({ ...opts, deps: counterDeps() });
    assert.equal(r2.ran.length, 0);
    assert.equal(r2.skipped.length, 4);
    assert.equal(readFileSync(join(dir, "report.md"), "utf8"), report);

    await assert.rejects(
      runComparison({ ...opts, base: validateConfig({ ...base(), steps: 4 }), deps: counterDeps() }),
      /different config than this comparison asks for \(steps: 3 in the run, 4 asked\)/,
    );
    // A new description is not a different experiment: the finished runs are still reused.
    const r3 = await runComparison({
      ...opts,
      base: validateConfig({ ...base(), description: "edited" }),
      deps: counterDeps(),
    });
    assert.equal(r3.ran.length, 0);
  },
);

test(
  "--parallel: runs side by side, each engine with cores/N threads; the same runs and report",
  { timeout: 60_000 },
  async () => {
    const dir = join(mkdtempSync(join(tmpdir(), "erl-compare-par-")), "cmp");
    const threads: (number | undefined)[] = [];
    const deps = counterDeps({ delayMs: 5 });
    const start = deps.startEngine;
    let open = 0;
    let most = 0;
    deps.startEngine = async (c, p, o) => {
      threads.push(o?.threads);
      const e = await start(c, p, o);
      most = Math.max(most, ++open);
      const close = e.close.bind(e);
      e.close = async () => {
        open--;
        await close();
      };
      return e;
    };
    const r = await runComparison({
      env: "frozenlake",
      algos: ["erl", "rlvr"],
      seeds: [0],
      budget: { kind: "rollouts" },
      base: base(),
      dir,
      command: "erl compare --parallel 2",
      progress: quiet(),
      deps,
      parallel: 2,
    });
    assert.equal(r.ran.length, 2);
    assert.equal(most, 2, "the two runs' engines were open at the same time");
    const want = Math.max(1, Math.floor((await import("node:os")).cpus().length / 2));
    assert.deepEqual(threads, [want, want]);
    assert.match(readFileSync(join(dir, "report.md"), "utf8"), /2 runs side by side/);
  },
);
