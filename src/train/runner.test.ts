import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  writeFileSync,
  appendFileSync,
  rmSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { validateConfig, type RunConfig } from "./config.ts";
import { engineSummary, runTraining } from "./runner.ts";
import { counterDeps } from "../testing/testkit.ts";
import { Progress } from "./progress.ts";
import { RunFiles } from "./runfiles.ts";
import { readLatestCheckpoint } from "./checkpoint.ts";
import { UserError } from "../util/errors.ts";
import { Rng } from "../util/rng.ts";

const quiet = (): Progress => new Progress({ write: () => undefined });

function counterConfig(over: Record<string, unknown> = {}): RunConfig {
  return validateConfig({
    env: "frozenlake",
    model: { path: "unused" },
    steps: 6,
    batchSize: 3,
    seed: 5,
    data: { evalTasks: 2 },
    eval: { every: 2, final: true, initial: true, n: 1 },
    checkpoint: { every: 2, keep: 2 },
    ...over,
  });
}

/** Run files with the wall-clock fields removed, for comparing two runs. */
function normalised(dir: string): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  for (const name of ["metrics", "rollouts", "memory"]) {
    const text = readFileSync(join(dir, `${name}.jsonl`), "utf8");
    assert.ok(text === "" || text.endsWith("\n"), `${name}.jsonl ends with a torn line`);
    out[name] = text
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => {
        const r = JSON.parse(l) as Record<string, unknown>;
        for (const k of Object.keys(r))
          if (k === "time" || k.startsWith("time/") || k === "tokens_per_s") delete r[k];
        return r;
      });
  }
  return out;
}

function tmp(): string {
  return mkdtempSync(join(tmpdir(), "erl-runner-"));
}

test("a run writes every step once, evals, checkpoints and a finished status", async () => {
  const dir = join(tmp(), "run");
  const deps = counterDeps();
  const summary = await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: false,
    deps,
    progress: quiet(),
  });
  assert.equal(summary.steps, 6);
  const files = normalised(dir);
  const train = files.metrics!.filter((r) => (r as { kind: string }).kind === "train");
  const evals = files.metrics!.filter((r) => (r as { kind: string }).kind === "eval");
  assert.deepEqual(
    train.map((r) => (r as { step: number }).step),
    [1, 2, 3, 4, 5, 6],
  );
  assert.deepEqual(
    evals.map((r) => (r as { step: number }).step),
    [0, 2, 4, 6],
  );
  assert.equal(files.rollouts!.filter((r) => (r as { stage: string }).stage !== "eval").length, 6 * 3 * 4);
  assert.equal(files.memory!.length, 6);
  const status = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as {
    state: string;
    step: number;
  };
  assert.equal(status.state, "finished");
  assert.equal(status.step, 6);
  const ckpts = readdirSync(join(dir, "checkpoints")).sort();
  assert.deepEqual(ckpts, ["latest", "step-000004", "step-000006"]);
  assert.equal(readLatestCheckpoint(join(dir, "checkpoints"))!.state.step, 6);
  assert.equal(deps.engines[0]!.updates, 6);
  assert.ok(deps.engines[0]!.closed, "engine closed at the end");
  // times are cumulative and increasing
  const times = readFileSync(join(dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => (JSON.parse(l) as { time: number }).time);
  assert.deepEqual(
    [...times].sort((a, b) => a - b),
    times,
  );
});

test("same seed, same run: the records are reproducible", async () => {
  const a = join(tmp(), "a");
  const b = join(tmp(), "b");
  await runTraining({
    config: counterConfig(),
    runDir: a,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  await runTraining({
    config: counterConfig(),
    runDir: b,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  assert.deepEqual(normalised(a), normalised(b));
  const c = join(tmp(), "c");
  await runTraining({
    config: counterConfig({ seed: 6 }),
    runDir: c,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  assert.notDeepEqual(normalised(a).rollouts, normalised(c).rollouts);
});

test("an existing run directory is refused without --resume; a finished run resumes to nothing", async () => {
  const dir = join(tmp(), "run");
  await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  await assert.rejects(
    runTraining({
      config: counterConfig(),
      runDir: dir,
      resume: false,
      deps: counterDeps(),
      progress: quiet(),
    }),
    (e: unknown) => e instanceof UserError && /already exists.*--resume/.test(e.message),
  );
  const deps = counterDeps();
  const s = await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: true,
    deps,
    progress: quiet(),
  });
  assert.equal(s.alreadyFinished, true);
  assert.equal(deps.engines.length, 0, "no engine started for a finished run");
  await assert.rejects(
    runTraining({
      config: counterConfig(),
      runDir: join(tmp(), "nope"),
      resume: true,
      deps,
      progress: quiet(),
    }),
    /not a run directory/,
  );
});

test("an engine that dies mid-run: clear error, status failed, and the run resumes to the same result", async () => {
  const ref = join(tmp(), "ref");
  await runTraining({
    config: counterConfig(),
    runDir: ref,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });

  const dir = join(tmp(), "run");
  const dying = counterDeps({ failAtUpdate: 4 });
  await assert.rejects(
    runTraining({ config: counterConfig(), runDir: dir, resume: false, deps: dying, progress: quiet() }),
    (e: unknown) =>
      e instanceof UserError && /step 4: engine process exited/.test(e.message) && /--resume/.test(e.message),
  );
  assert.ok(dying.engines[0]!.closed);
  const status = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as {
    state: string;
    step: number;
    error: string;
  };
  assert.equal(status.state, "failed");
  assert.equal(status.step, 3);
  assert.match(status.error, /engine process exited/);

  await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: true,
    deps: counterDeps(),
    progress: quiet(),
  });
  assert.deepEqual(normalised(dir), normalised(ref));
  // engine.json: one entry per start of the engine, with the dtype it chose.
  const engineLog = JSON.parse(readFileSync(join(dir, "engine.json"), "utf8")) as {
    starts: { step: number; dtype: string; device: string }[];
  };
  assert.deepEqual(
    engineLog.starts.map((s) => [s.step, s.dtype, s.device]),
    [
      [0, "float32", "cpu"],
      [2, "float32", "cpu"],
    ],
  );
});

test("the progress output names the engine's dtype and threads with their reasons", () => {
  const lines = engineSummary({
    protocolVersion: 1,
    engineVersion: "x",
    torch: "2",
    transformers: "5",
    device: "cpu",
    dtype: "bfloat16",
    dtypeReason: "auto: bf16 measured 2.00x faster",
    threads: 1,
    threadsReason: "measured at start",
    cpu: { model: "Some CPU", flags: ["avx2", "avx512_bf16"] },
    parameters: { total: 1, trainable: 1 },
    memory: { rssBytes: 0 },
  });
  assert.deepEqual(lines, [
    "engine: cpu on Some CPU (avx2, avx512_bf16), bfloat16 (auto: bf16 measured 2.00x faster)",
    "engine: 1 thread (measured at start)",
  ]);
});

test("resume cuts torn and post-checkpoint records, then redoes those steps exactly once", async () => {
  const ref = join(tmp(), "ref");
  await runTraining({
    config: counterConfig(),
    runDir: ref,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
  });
  const dir = join(tmp(), "run");
  await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 6 }),
    progress: quiet(),
  }).catch(() => undefined);
  // Records after the step-4 checkpoint exist (step 5) plus a torn line a crash could leave.
  appendFileSync(join(dir, "metrics.jsonl"), '{"kind":"train","step":6,"lo');
  appendFileSync(join(dir, "rollouts.jsonl"), '{"step":6');
  await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: true,
    deps: counterDeps(),
    progress: quiet(),
  });
  assert.deepEqual(normalised(dir), normalised(ref));
});

test("a run directory shorter than its checkpoint says is reported as damaged", async () => {
  const dir = join(tmp(), "run");
  await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 5 }),
    progress: quiet(),
  }).catch(() => undefined);
  writeFileSync(join(dir, "metrics.jsonl"), "");
  await assert.rejects(
    runTraining({
      config: counterConfig(),
      runDir: dir,
      resume: true,
      deps: counterDeps(),
      progress: quiet(),
    }),
    /metrics\.jsonl: 0 bytes, shorter than the checkpoint/,
  );
});

/**
 * A counter-model run config in a fresh directory, its uninterrupted reference run (with the child's
 * step delays, timed), where the interrupted run goes, and the child script that trains it.
 */
async function childRunFixture(steps: number) {
  const root = tmp();
  const config = counterConfig({ steps, batchSize: 2 });
  const configFile = join(root, "config.json");
  writeFileSync(configFile, JSON.stringify(config));
  const ref = join(root, "ref");
  const t0 = performance.now();
  await runTraining({
    config,
    runDir: ref,
    resume: false,
    deps: counterDeps({ delayMs: 10 }),
    progress: quiet(),
  });
  const refMs = performance.now() - t0;
  const child = fileURLToPath(new URL("../testing/testkit-child.ts", import.meta.url));
  return { root, config, configFile, ref, refMs, dir: join(root, "run"), child };
}

test(
  "kill -9 at random moments: the resumed run equals an uninterrupted one",
  { timeout: 120_000 },
  async () => {
    const seed = Date.now() % 100_000;
    const rng = new Rng(seed);
    // The reference uses the child's delays, so its duration tells how long a child run takes.
    const { root, configFile, ref, refMs: runMs, dir, child } = await childRunFixture(8);
    const runChild = (
      killAfterMs: number | null,
    ): Promise<{ code: number | null; signal: string | null; out: string }> =>
      new Promise((resolveRun, reject) => {
        const args = ["--import", "tsx", child, configFile, dir];
        if (existsSync(join(dir, "config.json"))) args.push("--resume");
        const p = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
        let out = "";
        p.stdout.on("data", (d: Buffer) => (out += d.toString()));
        p.stderr.on("data", (d: Buffer) => (out += d.toString()));
        let timer: NodeJS.Timeout | undefined;
        // Start the clock when the run has begun (tsx start-up time varies a lot on a busy machine).
        const arm = (): void => {
          if (killAfterMs !== null && timer === undefined && out.includes("run "))
            timer = setTimeout(() => p.kill("SIGKILL"), killAfterMs);
        };
        p.stdout.on("data", arm);
        p.on("error", reject);
        p.on("close", (code, signal) => {
          clearTimeout(timer);
          resolveRun({ code, signal, out });
        });
      });

    let kills = 0;
    for (let i = 0; i < 6; i++) {
      const r = await runChild(rng.intBetween(0, Math.ceil(runMs)));
      if (r.signal === "SIGKILL") kills++;
      else {
        assert.equal(r.code, 0, `seed ${seed}: child failed:\n${r.out}`);
        break;
      }
    }
    const final = await runChild(null);
    assert.equal(final.code, 0, `seed ${seed}: final resume failed:\n${final.out}`);
    assert.ok(kills >= 1, `seed ${seed}: the child was never killed`);
    assert.deepEqual(normalised(dir), normalised(ref), `seed ${seed}: resumed run differs`);
    const status = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as { state: string };
    assert.equal(status.state, "finished");
    assert.ok(new RunFiles(dir).exists());
    rmSync(root, { recursive: true, force: true });
  },
);

test(
  "Ctrl-C (SIGINT) marks the run stopped, says how to resume, and the resumed run equals an uninterrupted one",
  {
    timeout: 60_000,
  },
  async () => {
    const { root, config, configFile, ref, dir, child } = await childRunFixture(12);
    const first = await new Promise<{ code: number | null; out: string }>((done, reject) => {
      const p = spawn(process.execPath, ["--import", "tsx", child, configFile, dir], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      let sent = false;
      const onData = (d: Buffer): void => {
        out += d.toString();
        // Interrupt once the second step has been reported (a step is under way, none is final).
        if (!sent && /step {2}2\/12/.test(out)) {
          sent = true;
          p.kill("SIGINT");
        }
      };
      p.stdout.on("data", onData);
      p.stderr.on("data", onData);
      p.on("error", reject);
      p.on("close", (code) => done({ code, out }));
    });
    assert.equal(first.code, 130, first.out);
    assert.match(
      first.out,
      /SIGINT: .* stopped after step \d+\/12 \(last checkpoint: step \d+\); continue with: erl train --resume /,
    );
    const stopped = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as {
      state: string;
      error: string;
    };
    assert.equal(stopped.state, "stopped");
    assert.match(stopped.error, /interrupted by SIGINT/);
    await runTraining({
      config,
      runDir: dir,
      resume: true,
      deps: counterDeps({ delayMs: 10 }),
      progress: quiet(),
    });
    assert.deepEqual(normalised(dir), normalised(ref));
    rmSync(root, { recursive: true, force: true });
  },
);

test("a time budget ends the run early with a final eval and checkpoint; resume finds it finished", async () => {
  const dir = join(tmp(), "timed");
  let now = 0;
  const clock = (): number => (now += 1); // every clock read advances one "second"
  const config = counterConfig({
    steps: 50,
    timeBudget: 30,
    eval: { every: 0, final: true, initial: false, n: 1 },
  });
  const s = await runTraining({
    config,
    runDir: dir,
    resume: false,
    deps: counterDeps(),
    progress: quiet(),
    clock,
  });
  assert.ok(s.steps > 1 && s.steps < 50, `stopped after ${s.steps} steps`);
  const files = normalised(dir);
  const train = files.metrics!.filter((r) => (r as { kind: string }).kind === "train");
  const evals = files.metrics!.filter((r) => (r as { kind: string }).kind === "eval");
  assert.equal(train.length, s.steps);
  assert.deepEqual(
    evals.map((r) => (r as { step: number }).step),
    [s.steps],
  );
  const status = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as {
    state: string;
    step: number;
  };
  assert.deepEqual([status.state, status.step], ["finished", s.steps]);
  const again = await runTraining({
    config,
    runDir: dir,
    resume: true,
    deps: counterDeps(),
    progress: quiet(),
    clock,
  });
  assert.equal(again.alreadyFinished, true);
});
