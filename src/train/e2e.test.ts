/**
 * End-to-end tests through the real Python engine with the tiny random model fixture
 * (test/fixtures/tiny-model): a CI-sized `erl compare` killed with SIGKILL at a random moment and
 * re-run to completion; ERL and RLVR on HotpotQA with an engine that dies mid-run; clear CLI errors.
 * Sizes are minimal (2 steps, 1–2 tasks per step, short turns): these check plumbing, not learning.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { validateConfig, type RunConfig } from "./config.ts";
import { runTraining } from "./runner.ts";
import type { TrainDeps } from "./deps.ts";
import { defaultDeps } from "./deps.ts";
import { Progress } from "./progress.ts";
import { UserError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const ERL = join(ROOT, "bin", "erl.mjs");
const TINY = join(ROOT, "test", "fixtures", "tiny-model");

function ciConfig(env: string, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    env,
    model: { path: TINY, dtype: "float32", device: "cpu" },
    steps: 2,
    batchSize: 1,
    algo: { maxTokensPerTurn: 6, maxReflectionTokens: 12, maxContextTokens: 640 },
    data: { evalTasks: 1 },
    eval: { every: 0, final: true, initial: false, n: 1 },
    checkpoint: { every: 1, keep: 1 },
    ...over,
  };
}

interface Rec {
  kind?: string;
  step: number;
  stage?: string;
}

/** Parses a JSONL file strictly (every line complete and valid) and returns its records. */
function strictJsonl(file: string): Rec[] {
  const text = readFileSync(file, "utf8");
  assert.ok(text === "" || text.endsWith("\n"), `${file}: torn last line`);
  return text
    .split("\n")
    .filter((l) => l !== "")
    .map((l, i) => {
      try {
        return JSON.parse(l) as Rec;
      } catch {
        throw new Error(`${file}:${i + 1}: malformed`);
      }
    });
}

/** Checks a finished run directory against docs/run-format.md and returns its records, with the
 * number of steps that trained something (each of them must log the rollout–trainer mismatch). */
function checkRun(
  dir: string,
  steps: number,
  algo: string,
): { metrics: Rec[]; rollouts: Rec[]; measured: number } {
  const status = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as {
    state: string;
    step: number;
    totalSteps: number;
  };
  assert.deepEqual([status.state, status.step, status.totalSteps], ["finished", steps, steps], dir);
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as { algo: { name: string } };
  assert.equal(config.algo.name, algo);
  const metrics = strictJsonl(join(dir, "metrics.jsonl"));
  const train = metrics.filter((m) => m.kind === "train");
  assert.deepEqual(
    train.map((m) => m.step),
    Array.from({ length: steps }, (_, i) => i + 1),
    `${dir}: every step exactly once`,
  );
  let measured = 0;
  for (const m of train) {
    const r = m as unknown as Record<string, unknown>;
    for (const k of ["time", "reward/first", "time/sample", "time/train", "time/step"])
      assert.equal(typeof r[k], "number", `${k} in ${dir}`);
    if (algo === "rlvr") assert.equal(r["reward/post_reflection"], undefined);
    else assert.equal(typeof r["gate_rate"], "number");
    // The rollout–trainer gap of the engine's own sampler, in every algorithm's run (float rounding).
    if ((r["samples/trained"] as number) > 0) {
      measured++;
      assert.equal(typeof r["mismatch/abs_mean"], "number", `mismatch/abs_mean in ${dir}`);
      assert.ok(
        (r["mismatch/abs_max"] as number) < 1e-3,
        `mismatch/abs_max ${r["mismatch/abs_max"]} in ${dir}`,
      );
    }
  }
  const evals = metrics.filter((m) => m.kind === "eval");
  assert.deepEqual(
    evals.map((m) => m.step),
    [steps],
  );
  const rollouts = strictJsonl(join(dir, "rollouts.jsonl"));
  assert.ok(rollouts.length > 0);
  for (const r of rollouts) {
    const x = r as unknown as Record<string, unknown>;
    for (const k of ["task", "episode", "stage", "reward", "system", "messages", "trace", "feedback", "env"])
      assert.ok(k in x, `rollout record lacks ${k}`);
  }
  const firstSteps = new Set(rollouts.filter((r) => r.stage === "first").map((r) => r.step));
  assert.deepEqual(
    [...firstSteps].sort(),
    Array.from({ length: steps }, (_, i) => i + 1),
  );
  strictJsonl(join(dir, "memory.jsonl"));
  assert.ok(existsSync(join(dir, "checkpoints", "latest")));
  return { metrics, rollouts, measured };
}

/** The engine processes started by this test process (Linux /proc), to kill one as a crash would. */
function engineChildren(): number[] {
  const pids: number[] = [];
  for (const t of readdirSync(`/proc/${process.pid}/task`)) {
    let kids = "";
    try {
      kids = readFileSync(`/proc/${process.pid}/task/${t}/children`, "utf8");
    } catch {
      continue;
    }
    for (const p of kids.trim().split(/\s+/).filter(Boolean)) {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8");
      if (cmd.includes("erl_engine.server")) pids.push(Number(p));
    }
  }
  return pids;
}

test("CLI errors: bad config, unknown --set key, missing model — one clear line, no engine", () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-cli-"));
  const bad = join(dir, "bad.json");
  writeFileSync(bad, JSON.stringify({ algo: { name: "erl", memroy: "global" } }));
  const run = (...args: string[]) =>
    spawnSync(process.execPath, [ERL, "train", ...args], { encoding: "utf8", cwd: dir });
  let r = run("--config", bad);
  assert.equal(r.status, 2);
  assert.match(
    r.stderr,
    /^erl train: .*bad\.json, key "algo\.memroy": unknown key \(did you mean "algo\.memory"\?\)/,
  );
  r = run("--config", "frozenlake-tiny", "--set", "steps=-1");
  assert.match(r.stderr, /--set, key "steps": expected an integer >= 1, got -1/);
  r = run("--config", "frozenlake-tiny", "--set", "model.path=/no/such/model");
  assert.equal(r.status, 2);
  assert.match(r.stderr, /key "model.path": model directory \/no\/such\/model does not exist/);
  assert.ok(!existsSync(join(dir, "runs")), "nothing is created before the model is found");
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
  r = run("--resume", join(dir, "nope"));
  assert.match(r.stderr, /not a run directory/);
});

test(
  "CI-sized erl compare with the real engine survives kill -9 and resumes",
  { timeout: 240_000 },
  async () => {
    const seed = Date.now() % 100_000;
    const rng = new Rng(seed);
    const dir = mkdtempSync(join(tmpdir(), "erl-e2e-compare-"));
    const cfgFile = join(dir, "ci.json");
    writeFileSync(cfgFile, JSON.stringify(ciConfig("frozenlake")));
    const out = join(dir, "cmp");
    const args = [
      ERL,
      "compare",
      "--env",
      "frozenlake",
      "--algos",
      "erl,rlvr",
      "--seeds",
      "1",
      "--config",
      cfgFile,
      "--out",
      out,
    ];
    // Where to kill: right after the n-th occurrence of a progress line, plus a short random delay.
    // Anchoring on output rather than on wall-clock time keeps the kill inside the compare however
    // fast or slow the machine is.
    type KillPoint = { marker: string; occurrence: number; delayMs: number };
    const runCompare = (
      kill: KillPoint | null,
    ): Promise<{ code: number | null; signal: string | null; text: string }> =>
      new Promise((resolve, reject) => {
        const p = spawn(process.execPath, args, {
          stdio: ["ignore", "pipe", "pipe"],
          cwd: dir,
          detached: true,
        });
        let text = "";
        let timer: NodeJS.Timeout | undefined;
        const onData = (d: Buffer): void => {
          text += d.toString();
          if (kill !== null && timer === undefined && text.split(kill.marker).length - 1 >= kill.occurrence)
            timer = setTimeout(() => p.kill("SIGKILL"), kill.delayMs);
        };
        p.stdout.on("data", onData);
        p.stderr.on("data", onData);
        p.on("error", reject);
        p.on("close", (code, signal) => {
          clearTimeout(timer);
          // The engine exits on its own when its stdin closes; this only tidies up if it has not yet.
          try {
            process.kill(-p.pid!, "SIGKILL");
          } catch {
            /* the group is gone already */
          }
          resolve({ code, signal, text });
        });
      });

    const points: Omit<KillPoint, "delayMs">[] = [
      { marker: "starting the engine", occurrence: 1 },
      { marker: "step 1/2", occurrence: 1 },
      { marker: "step 2/2", occurrence: 1 },
      { marker: "eval @2", occurrence: 1 },
      { marker: "starting the engine", occurrence: 2 },
      { marker: "step 1/2", occurrence: 2 },
    ];
    const killed = await runCompare({ ...rng.pick(points), delayMs: rng.intBetween(0, 40) });
    assert.equal(
      killed.signal,
      "SIGKILL",
      `seed ${seed}: the compare ended before the kill:\n${killed.text}`,
    );
    const final = await runCompare(null);
    assert.equal(final.code, 0, `seed ${seed}:\n${killed.text}\n---\n${final.text}`);
    assert.match(final.text, /algorithm\s+final eval/);
    const erl = checkRun(join(out, "erl-seed0"), 2, "erl");
    const rlvr = checkRun(join(out, "rlvr-seed0"), 2, "rlvr");
    // Steps whose groups all tie train nothing; each run has at least one that trains.
    assert.ok(
      erl.measured > 0 && rlvr.measured > 0,
      `mismatch measured: erl ${erl.measured}, rlvr ${rlvr.measured}`,
    );
    assert.ok(erl.rollouts.some((r) => r.stage === "eval"));
    const report = readFileSync(join(out, "report.md"), "utf8");
    assert.match(report, /\| erl \| \d\.\d{3} \| /);
    assert.match(report, /\| rlvr \| \d\.\d{3} \| /);
    for (const f of [
      "eval-reward-vs-step.svg",
      "eval-reward-vs-time.svg",
      "train-reward-vs-step.svg",
      "train-reward-vs-time.svg",
    ])
      assert.match(readFileSync(join(out, f), "utf8"), /^<svg[\s\S]*<\/svg>\n$/);
  },
);

test(
  "ERL and RLVR on HotpotQA; an engine killed mid-run fails clearly and the run resumes",
  { timeout: 240_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "erl-e2e-hotpot-"));
    const quiet = new Progress({ write: () => undefined });
    const erlCfg: RunConfig = validateConfig(ciConfig("hotpotqa", { runsDir: dir, name: "erl" }));
    await runTraining({
      config: erlCfg,
      runDir: join(dir, "erl"),
      resume: false,
      deps: defaultDeps(),
      progress: quiet,
    });
    checkRun(join(dir, "erl"), 2, "erl");

    const rlvrCfg: RunConfig = validateConfig(
      ciConfig("hotpotqa", {
        runsDir: dir,
        name: "rlvr",
        algo: { name: "rlvr", n: 2, maxTokensPerTurn: 6, maxContextTokens: 640 },
      }),
    );
    // Kill the engine process once step 2's records are written (before its checkpoint), as an
    // out-of-memory kill would.
    const lines: string[] = [];
    const killer = new Progress({
      write: (t: string) => {
        lines.push(t);
        if (t.startsWith("step 2/2")) for (const pid of engineChildren()) process.kill(pid, "SIGKILL");
      },
    });
    const runDir = join(dir, "rlvr");
    await assert.rejects(
      runTraining({ config: rlvrCfg, runDir, resume: false, deps: defaultDeps(), progress: killer }),
      (e: unknown) => e instanceof UserError && /engine/i.test(e.message) && /--resume/.test(e.message),
    );
    const status = JSON.parse(readFileSync(join(runDir, "status.json"), "utf8")) as {
      state: string;
      step: number;
      error: string;
    };
    assert.equal(status.state, "failed");
    assert.equal(status.step, 1);
    assert.equal(engineChildren().length, 0, "no engine left running");
    const deps: TrainDeps = defaultDeps();
    const s = await runTraining({ config: rlvrCfg, runDir, resume: true, deps, progress: quiet });
    assert.equal(s.resumedFrom, 1);
    checkRun(runDir, 2, "rlvr");

    // The trained policy exports as an HF directory that `erl eval` loads like any model.
    const exported = join(dir, "exported");
    const ex = spawnSync(process.execPath, [ERL, "export", runDir, exported], { encoding: "utf8" });
    assert.equal(ex.status, 0, ex.stderr);
    assert.ok(existsSync(join(exported, "config.json")) && existsSync(join(exported, "model.safetensors")));
    const ev = spawnSync(
      process.execPath,
      [
        ERL,
        "eval",
        "--model",
        exported,
        "--env",
        "hotpotqa",
        "--tasks",
        "1",
        "--set",
        "model.dtype=float32",
        "--set",
        "algo.maxTokensPerTurn=6",
        "--set",
        "algo.maxContextTokens=640",
      ],
      { encoding: "utf8" },
    );
    assert.equal(ev.status, 0, ev.stderr);
    assert.match(ev.stdout, /hotpotqa test: 1 tasks × 1 {2}mean reward \d\.\d{3} {2}pass@1 \d\.\d{3}/);
    assert.doesNotMatch(ev.stdout, /pass@1 .*pass@1/); // n = 1: pass@n is pass@1, printed once
  },
);
