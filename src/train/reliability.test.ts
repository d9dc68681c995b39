// A run has one writer; a stale lock (dead pid, or a pid now owned by another process) is taken over;
// a damaged latest checkpoint falls back to the previous one; a model or engine that fails to start
// leaves nothing to repair by hand; a full disk is named, with no temporary files left (issue 17).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, utimesSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { validateConfig, type RunConfig } from "./config.ts";
import { runTraining } from "./runner.ts";
import { counterDeps, quietProgress, runRecords, trainSteps } from "../testing/testkit.ts";
import { Progress } from "./progress.ts";
import { LOCK_FILE, processStart, RunLock } from "./runlock.ts";
import { UserError } from "../util/errors.ts";

const quiet = quietProgress;
const tmp = (): string => mkdtempSync(join(tmpdir(), "erl-reliab-"));

function config(over: Record<string, unknown> = {}): RunConfig {
  return validateConfig({
    env: "frozenlake",
    model: { path: "unused" },
    steps: 6,
    batchSize: 2,
    seed: 3,
    data: { evalTasks: 1 },
    eval: { every: 0, final: true, initial: false, n: 1 },
    checkpoint: { every: 2, keep: 3 },
    ...over,
  });
}

const records = runRecords;

async function reference(cfg: RunConfig): Promise<string> {
  const dir = join(tmp(), "ref");
  await runTraining({ config: cfg, runDir: dir, resume: false, deps: counterDeps(), progress: quiet() });
  return records(dir);
}

test("two runs started together on one new run directory: one writes it, the other is refused", async () => {
  const dir = join(tmp(), "run");
  const go = () =>
    runTraining({
      config: config(),
      runDir: dir,
      resume: false,
      deps: counterDeps({ delayMs: 5 }),
      progress: quiet(),
    });
  const results = await Promise.allSettled([go(), go()]);
  const ok = results.filter((r) => r.status === "fulfilled");
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === "rejected");
  assert.equal(ok.length, 1);
  assert.equal(refused.length, 1);
  assert.match(
    String(refused[0]!.reason),
    /being written by process \d+.*a run has one writer|already exists/,
  );
  assert.deepEqual(trainSteps(dir), [1, 2, 3, 4, 5, 6]);
  assert.ok(!existsSync(join(dir, LOCK_FILE)), "the lock is released at the end");
});

test("two processes resuming one run at once: one writer, every step once", async () => {
  const root = tmp();
  const dir = join(root, "run");
  const cfg = config({ steps: 8 });
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 3 }),
    progress: quiet(),
  }).catch(() => undefined);
  const configFile = join(root, "config.json");
  writeFileSync(configFile, JSON.stringify(cfg));
  const child = fileURLToPath(new URL("../testing/testkit-child.ts", import.meta.url));
  const run = (): Promise<{ code: number | null; out: string }> =>
    new Promise((done, reject) => {
      const p = spawn(process.execPath, ["--import", "tsx", child, configFile, dir, "--resume"], {
        stdio: ["ignore", "pipe", "pipe"],
      });
      let out = "";
      p.stdout.on("data", (d: Buffer) => (out += d.toString()));
      p.stderr.on("data", (d: Buffer) => (out += d.toString()));
      p.on("error", reject);
      p.on("close", (code) => done({ code, out }));
    });
  const [a, b] = await Promise.all([run(), run()]);
  const codes = [a.code, b.code].sort();
  // Either both were refused/serialised correctly: one wrote the run, the other was refused, or the
  // second started after the first finished and found nothing to do.
  assert.ok(codes[0] === 0, `${a.out}\n${b.out}`);
  if (codes[1] !== 0) assert.match(a.out + b.out, /a run has one writer/);
  assert.deepEqual(trainSteps(dir), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(records(dir), await reference(cfg));
});

test("a stale lock is taken over: a dead pid, or a live pid that is another process now", async () => {
  const dir = join(tmp(), "run");
  const cfg = config();
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 3 }),
    progress: quiet(),
  }).catch(() => undefined);
  const lock = (pid: number, start: string | null): void =>
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({ pid, host: hostname(), start, since: "2020-01-01T00:00:00Z", command: "erl train" }),
    );
  // status.json still says running, with the pid of a live unrelated process (our parent): no block.
  writeFileSync(
    join(dir, "status.json"),
    JSON.stringify({ state: "running", step: 2, totalSteps: 6, pid: process.ppid, updatedAt: "" }),
  );
  lock(process.ppid, "some-other-boot:1"); // the pid is alive but started at another time: reused
  const resumed = () =>
    runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
  await resumed();
  assert.deepEqual(trainSteps(dir), [1, 2, 3, 4, 5, 6]);
  assert.equal(records(dir), await reference(cfg));

  // A lock held by a live process (same pid, same start time) refuses, and --break-lock overrides.
  writeFileSync(
    join(dir, "status.json"),
    JSON.stringify({ state: "stopped", step: 6, totalSteps: 6, updatedAt: "" }),
  );
  const start = processStart(process.ppid);
  if (start !== null) {
    lock(process.ppid, start);
    await assert.rejects(resumed(), /being written by process \d+ .*a run has one writer/);
    await runTraining({
      config: cfg,
      runDir: dir,
      resume: true,
      breakLock: true,
      deps: counterDeps(),
      progress: quiet(),
    });
  }
  // A lock from another machine cannot be judged from here: refused, unless broken explicitly.
  writeFileSync(
    join(dir, LOCK_FILE),
    JSON.stringify({ pid: 1, host: "another-host", start: null, since: "x", command: "erl train" }),
  );
  await assert.rejects(resumed(), /cannot be checked from this machine; .*--break-lock/);
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: true,
    breakLock: true,
    deps: counterDeps(),
    progress: quiet(),
  });
  assert.ok(!existsSync(join(dir, LOCK_FILE)));
});

test("RunLock: O_EXCL, one holder, released only by its holder", () => {
  const dir = tmp();
  const a = RunLock.acquire(dir);
  assert.throws(() => RunLock.acquire(dir), /a run has one writer/);
  assert.ok(a.held());
  a.release();
  assert.ok(!existsSync(join(dir, LOCK_FILE)));
  const b = RunLock.acquire(dir);
  a.release(); // a second release by the old holder must not remove b's lock
  assert.ok(b.held());
  b.release();
});

test("a damaged latest checkpoint falls back to the previous one, and the resumed run is identical", async () => {
  const cfg = config({ steps: 8 });
  for (const damage of ["run.json", "engine/state.json"]) {
    const dir = join(tmp(), "run");
    await runTraining({
      config: cfg,
      runDir: dir,
      resume: false,
      deps: counterDeps({ failAtUpdate: 7 }),
      progress: quiet(),
    }).catch(() => undefined);
    const latest = readFileSync(join(dir, "checkpoints", "latest"), "utf8").trim();
    assert.equal(latest, "step-000006");
    const f = join(dir, "checkpoints", latest, damage);
    writeFileSync(f, readFileSync(f, "utf8").slice(0, 10)); // torn
    const lines: string[] = [];
    await runTraining({
      config: cfg,
      runDir: dir,
      resume: true,
      deps: counterDeps(),
      progress: new Progress({ write: (s: string) => void lines.push(s) }),
    });
    assert.match(lines.join(""), /checkpoint step-000006 is damaged .*trying the one before it/);
    assert.match(lines.join(""), /resuming from the intact checkpoint step-000004/);
    assert.deepEqual(trainSteps(dir), [1, 2, 3, 4, 5, 6, 7, 8], damage);
    assert.equal(records(dir), await reference(cfg), damage);
  }
});

test("a model that does not load leaves no run directory; a resume whose engine fails leaves the run as it was", async () => {
  const dir = join(tmp(), "run");
  const cfg = config();
  const broken = {
    ...counterDeps(),
    startEngine: async () => {
      throw new UserError("/models/x/model.safetensors: truncated or corrupted safetensors file");
    },
  };
  await assert.rejects(
    runTraining({ config: cfg, runDir: dir, resume: false, deps: broken, progress: quiet() }),
    /model\.safetensors: truncated.*\n\(nothing was written for .*run; fix this and run the same command again\)/,
  );
  assert.ok(!existsSync(dir));
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 3 }),
    progress: quiet(),
  }).catch(() => undefined);
  const before = records(dir);
  await assert.rejects(
    runTraining({ config: cfg, runDir: dir, resume: true, deps: broken, progress: quiet() }),
    /the run directory is unchanged; continue with: erl train --resume .*--set engine\.url/,
  );
  assert.equal(records(dir), before);
  // The repair: a resume with a changed engine.url keeps it in config.json and finishes the run.
  const fixed = validateConfig({ ...cfg, engine: { url: "http://127.0.0.1:1", python: null } });
  await runTraining({ config: fixed, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
  assert.deepEqual(trainSteps(dir), [1, 2, 3, 4, 5, 6]);
  assert.equal(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")).engine.url, "http://127.0.0.1:1");
});

test("a size over its limit leaves no run; config.json is there while the model loads; a failed repair changes nothing", async () => {
  const dir = join(tmp(), "run");
  // 1,000,000 tasks × 4 attempts × 3 episodes a step cannot fit in Node's heap (src/train/limits.ts).
  await assert.rejects(
    runTraining({
      config: config({ batchSize: 1_000_000 }),
      runDir: dir,
      resume: false,
      deps: counterDeps(),
      progress: quiet(),
    }),
    /key "batchSize": 1,000,000 is over the limit of [\d,]+ here: .* episodes a step/,
  );
  assert.ok(!existsSync(dir), "a refused run leaves no directory");
  // A new run's config.json exists before the engine starts, so a kill -9 during loading leaves a
  // run that --resume restarts; a model that fails to load still leaves no directory.
  let sawConfig = false;
  const failing = {
    ...counterDeps(),
    startEngine: async () => {
      sawConfig = existsSync(join(dir, "config.json"));
      throw new UserError("/models/x/model.safetensors: truncated or corrupted safetensors file");
    },
  };
  const cfg = config();
  await assert.rejects(
    runTraining({ config: cfg, runDir: dir, resume: false, deps: failing, progress: quiet() }),
  );
  assert.ok(sawConfig && !existsSync(dir));
  // A repair (--resume --set model.path=...) whose model does not load leaves config.json as it was.
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 3 }),
    progress: quiet(),
  }).catch(() => undefined);
  const before = readFileSync(join(dir, "config.json"), "utf8");
  const repair = validateConfig({ ...cfg, model: { path: "/elsewhere/model" } });
  await assert.rejects(
    runTraining({ config: repair, runDir: dir, resume: true, deps: failing, progress: quiet() }),
  );
  assert.equal(readFileSync(join(dir, "config.json"), "utf8"), before);
  await runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
  assert.deepEqual(trainSteps(dir), [1, 2, 3, 4, 5, 6]);
});

test("a full disk while checkpointing is named, status says failed, no temporary files remain", async () => {
  const dir = join(tmp(), "run");
  const deps = counterDeps();
  const start = deps.startEngine;
  deps.startEngine = async (c, m) => {
    const e = await start(c, m);
    let saves = 0;
    const save = e.saveState.bind(e);
    e.saveState = async (d) => {
      if (++saves === 2) {
        await save(d); // part of the state is written, then the disk is full
        throw Object.assign(new Error(`ENOSPC: no space left on device, write`), {
          code: "ENOSPC",
          syscall: "write",
          path: join(d, "state.json"),
        });
      }
      return save(d);
    };
    return e;
  };
  await assert.rejects(
    runTraining({ config: config(), runDir: dir, resume: false, deps, progress: quiet() }),
    /training failed during step 4: .*state\.json: write failed: no space left on the device \(ENOSPC\)/,
  );
  const status = JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as { state: string };
  assert.equal(status.state, "failed");
  const left = readdirSync(join(dir, "checkpoints")).filter((n) => n.includes("tmp"));
  assert.deepEqual(left, []);
  assert.deepEqual(
    readdirSync(dir).filter((n) => n.includes(".tmp-")),
    [],
  );
});

test("a lock file torn by a crash (empty, or half its JSON) is taken over once it is not fresh", () => {
  const dir = tmp();
  for (const torn of ["", '{"pid": 12']) {
    writeFileSync(join(dir, LOCK_FILE), torn);
    const old = new Date(Date.now() - 60_000);
    utimesSync(join(dir, LOCK_FILE), old, old);
    writeFileSync(join(dir, `${LOCK_FILE}.break`), ""); // a takeover that was killed too
    utimesSync(join(dir, `${LOCK_FILE}.break`), old, old);
    const lock = RunLock.acquire(dir);
    assert.ok(lock.held());
    lock.release();
  }
});
