/**
 * `npm run faults`: the fault-injection suite (docs/reliability.md). Every case injects one fault —
 * kill -9 at a random moment, an engine killed mid-step, a torn JSONL line, a damaged checkpoint, a
 * full or read-only disk, two writers on one run, unauthenticated floods on the engine's HTTP server,
 * malformed input — and checks the promised outcome: a resumed run identical to an uninterrupted one,
 * or one clear error that names the file, key or value, with nothing lost.
 *
 * Loopback only; every case has a time limit. Prints a table of every case and its outcome, then
 * the figures, then one last line "N passed, M failed". Seed: $FAULTS_SEED (default: the time).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import fs, {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { syncBuiltinESMExports } from "node:module";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash, randomBytes } from "node:crypto";
import { validateConfig, type RunConfig } from "../src/train/config.ts";
import { runTraining } from "../src/train/runner.ts";
import { counterDeps, quietProgress, runRecords, trainSteps } from "../src/testing/testkit.ts";
import { readJsonlTolerant } from "../src/util/jsonl.ts";
import { systemUserError, UserError } from "../src/util/errors.ts";
import { Rng } from "../src/util/rng.ts";
import { main as erlMain } from "../src/cli/main.ts";
import { startEngine } from "../src/engine/client.ts";
import { loadFrozenLakeMaps } from "../src/envs/frozenlake.ts";
import { loadQuestionsJsonl } from "../src/envs/hotpotqa.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const ERL = join(ROOT, "bin", "erl.mjs");
const CHILD = join(ROOT, "src", "testing", "testkit-child.ts");
const TINY = join(ROOT, "test", "fixtures", "tiny-model");
const PYTHON = process.env.ERL_PYTHON ?? join(ROOT, ".venv", "bin", "python");
const SEED = Number(process.env.FAULTS_SEED ?? Date.now() % 1_000_000);
const rng = new Rng(SEED);
const WORK = mkdtempSync(join(tmpdir(), "erl-faults-"));
process.env.ERL_TEST ??= "1";

// ---------------------------------------------------------------------------------------------
// Cases, outcomes, figures

interface Case {
  group: string;
  name: string;
  limitS: number;
  run: () => Promise<string>;
}
const cases: Case[] = [];
const figures: string[] = [];
function kase(group: string, name: string, limitS: number, run: () => Promise<string>): void {
  cases.push({ group, name, limitS, run });
}
function check(cond: unknown, what: string): asserts cond {
  if (!cond) throw new Error(what);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quiet = quietProgress;
let dirs = 0;
const fresh = (name: string): string => join(WORK, `${String(++dirs).padStart(3, "0")}-${name}`);

// ---------------------------------------------------------------------------------------------
// Run helpers

const records = runRecords;

function state(dir: string): string {
  return (JSON.parse(readFileSync(join(dir, "status.json"), "utf8")) as { state: string }).state;
}

function noTemps(dir: string): void {
  const walk = (d: string): string[] =>
    readdirSync(d).flatMap((n) => {
      const p = join(d, n);
      return statSync(p).isDirectory()
        ? [...(n.includes(".tmp-") ? [p] : []), ...walk(p)]
        : n.includes(".tmp-")
          ? [p]
          : [];
    });
  const left = walk(dir);
  check(left.length === 0, `temporary files left: ${left.join(", ")}`);
}

interface Proc {
  code: number | null;
  signal: string | null;
  out: string;
}

/** Runs a command; `onOutput` may kill it (it gets the child and the output so far). */
function runProc(
  cmd: string,
  args: string[],
  opts: {
    cwd?: string;
    onOutput?: (p: ChildProcess, out: string) => void;
    limitMs?: number;
    env?: Record<string, string>;
  } = {},
): Promise<Proc> {
  return new Promise((done, reject) => {
    const p = spawn(cmd, args, {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    let out = "";
    const on = (d: Buffer): void => {
      out += d.toString();
      opts.onOutput?.(p, out);
    };
    p.stdout.on("data", on);
    p.stderr.on("data", on);
    const limit = setTimeout(() => p.kill("SIGKILL"), opts.limitMs ?? 300_000);
    p.on("error", reject);
    p.on("close", (code, signal) => {
      clearTimeout(limit);
      try {
        process.kill(-p.pid!, "SIGKILL"); // an engine left behind by a killed CLI
      } catch {
        /* gone */
      }
      done({ code, signal, out });
    });
  });
}

const erlCli = (args: string[], opts: Parameters<typeof runProc>[2] = {}): Promise<Proc> =>
  runProc(process.execPath, [ERL, ...args], opts);

function clean(r: Proc, re: RegExp, what: string): string {
  check(
    r.code !== 0 && r.code !== null,
    `${what}: exit ${r.code} (${r.signal}), expected an error:\n${r.out}`,
  );
  check(!/internal error|\n\s+at \S+ \(/.test(r.out), `${what}: a stack trace:\n${r.out}`);
  check(re.test(r.out), `${what}: expected ${re} in:\n${r.out}`);
  const lines = r.out.trim().split("\n");
  return (lines.find((l) => l.startsWith("erl ")) ?? lines[0]!).slice(0, 140);
}

// The counter-engine run (src/train/testkit.ts): the whole run state, fast.
function counterConfig(over: Record<string, unknown> = {}): RunConfig {
  return validateConfig({
    env: "frozenlake",
    model: { path: "unused" },
    steps: 8,
    batchSize: 3,
    seed: 11,
    data: { evalTasks: 2 },
    eval: { every: 4, final: true, initial: true, n: 1 },
    checkpoint: { every: 2, keep: 2 },
    ...over,
  });
}
const refs = new Map<string, { records: string; ms: number }>();
async function counterReference(cfg: RunConfig, delayMs = 0): Promise<{ records: string; ms: number }> {
  const key = JSON.stringify(cfg) + delayMs;
  const have = refs.get(key);
  if (have) return have;
  const dir = fresh("reference");
  const t0 = performance.now();
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ delayMs }),
    progress: quiet(),
  });
  const ref = { records: records(dir), ms: performance.now() - t0 };
  refs.set(key, ref);
  return ref;
}
function counterChild(
  cfg: RunConfig,
  dir: string,
  resume: boolean,
  killAfterMs: number | null,
  marker = "run ",
): Promise<Proc> {
  const cfgFile = join(
    WORK,
    `counter-${createHash("sha1").update(JSON.stringify(cfg)).digest("hex").slice(0, 12)}.json`,
  );
  if (!existsSync(cfgFile)) writeFileSync(cfgFile, JSON.stringify(cfg));
  let timer: NodeJS.Timeout | undefined;
  return runProc(
    process.execPath,
    ["--import", "tsx", CHILD, cfgFile, dir, ...(resume ? ["--resume"] : [])],
    {
      onOutput: (p, out) => {
        if (killAfterMs !== null && timer === undefined && out.includes(marker))
          timer = setTimeout(() => p.kill("SIGKILL"), killAfterMs);
      },
    },
  );
}

// The real engine on the tiny fixture model, through the `erl` command.
const realCfgFile = join(WORK, "real.json");
writeFileSync(
  realCfgFile,
  JSON.stringify({
    env: "frozenlake",
    model: { path: TINY, dtype: "float32", device: "cpu" },
    steps: 3,
    batchSize: 1,
    algo: { maxTokensPerTurn: 6, maxReflectionTokens: 12, maxContextTokens: 640 },
    data: { evalTasks: 1 },
    eval: { every: 0, final: true, initial: false, n: 1 },
    checkpoint: { every: 1, keep: 2 },
  }),
);
let realRef: string | null = null;
async function realReference(): Promise<string> {
  if (realRef) return realRef;
  const runs = fresh("real-ref");
  const r = await erlCli(["train", "--config", realCfgFile, "--runs-dir", runs, "--name", "ref"]);
  check(r.code === 0, `the uninterrupted real-engine run failed:\n${r.out}`);
  realRef = records(join(runs, "ref"));
  return realRef;
}
/** Starts a real-engine run and kills it (kill -9) `delayMs` after `marker` first appears. */
function realKilled(
  runs: string,
  marker: string,
  delayMs: number,
  target: "cli" | "engine" = "cli",
): Promise<Proc> {
  let timer: NodeJS.Timeout | undefined;
  return erlCli(["train", "--config", realCfgFile, "--runs-dir", runs, "--name", "run"], {
    onOutput: (p, out) => {
      if (timer !== undefined || !out.includes(marker)) return;
      timer = setTimeout(() => {
        if (target === "cli") p.kill("SIGKILL");
        else for (const pid of engineOf(p.pid!)) process.kill(pid, "SIGKILL");
      }, delayMs);
    },
  });
}
/** The engine processes under a CLI process (Linux /proc). */
function engineOf(pid: number): number[] {
  const out: number[] = [];
  const kids = (p: number): number[] => {
    try {
      return readdirSync(`/proc/${p}/task`).flatMap((t) =>
        readFileSync(`/proc/${p}/task/${t}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number),
      );
    } catch {
      return [];
    }
  };
  for (const k of kids(pid)) {
    try {
      if (readFileSync(`/proc/${k}/cmdline`, "utf8").includes("erl_engine.server")) out.push(k);
    } catch {
      /* gone */
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// 1. kill -9 at random moments, each compared to an uninterrupted run

const killCfg = counterConfig({ steps: 10 });
for (let i = 1; i <= 10; i++)
  kase("kill -9", `counter run #${i}, random moment`, 90, async () => {
    const ref = await counterReference(killCfg, 10);
    const dir = fresh(`kill-${i}`);
    // The moment: a random delay after a random step's progress line (or the start), so the kill
    // lands in a step, an evaluation or a checkpoint write however fast or slow the machine is.
    const after = rng.intBetween(0, 9);
    const marker = after === 0 ? "run " : `step ${String(after).padStart(2)}/10`;
    const delay = rng.intBetween(0, 25);
    const killed = await counterChild(killCfg, dir, false, delay, marker);
    check(killed.signal === "SIGKILL", `not killed (finished first, exit ${killed.code}):\n${killed.out}`);
    const at = `${delay} ms after ${after === 0 ? "the start" : `step ${after}`}`;
    const done = steps(dir);
    const resumed = await counterChild(killCfg, dir, existsSync(join(dir, "config.json")), null);
    check(resumed.code === 0, `resume failed:\n${resumed.out}`);
    check(records(dir) === ref.records, "the resumed run differs from the uninterrupted one");
    check(state(dir) === "finished", "status is not finished");
    return `killed ${at} (${done} steps written); resumed, identical`;
  });
function steps(dir: string): number {
  return existsSync(join(dir, "metrics.jsonl")) ? trainSteps(dir).length : 0;
}
// One through the real engine too (each real-engine run costs seconds of engine start-up).
for (const [i, marker] of [[1, "step 1/3"]] as const)
  kase("kill -9", `real engine (tiny model) #${i}, after "${marker}"`, 240, async () => {
    const ref = await realReference();
    const runs = fresh(`real-kill-${i}`);
    const delay = rng.intBetween(0, 400);
    const killed = await realKilled(runs, marker, delay);
    check(killed.signal === "SIGKILL", `not killed:\n${killed.out}`);
    const r = await erlCli(["train", "--resume", join(runs, "run")]);
    check(r.code === 0, `resume failed:\n${r.out}`);
    check(records(join(runs, "run")) === ref, "the resumed run differs from the uninterrupted one");
    return `killed ${delay} ms after "${marker}"; resumed, identical`;
  });

// ---------------------------------------------------------------------------------------------
// 2. The engine killed mid-step

kase("engine death", "engine process killed mid-step (real engine)", 240, async () => {
  const ref = await realReference();
  const runs = fresh("engine-death");
  // At once: on an idle machine the two steps left take well under 200 ms of engine time.
  const r = await realKilled(runs, "step 1/3", 0, "engine");
  const line = clean(r, /engine process .*exited|engine process.*(killed|signal)|--resume/, "engine death");
  check(state(join(runs, "run")) === "failed", "status.json does not say failed");
  const again = await erlCli(["train", "--resume", join(runs, "run")]);
  check(again.code === 0, `resume failed:\n${again.out}`);
  check(records(join(runs, "run")) === ref, "the resumed run differs");
  return `"${line}"; resumed, identical`;
});

// ---------------------------------------------------------------------------------------------
// 3. Torn lines

for (const file of ["metrics", "rollouts", "memory"])
  kase("torn line", `half a record at the end of ${file}.jsonl`, 60, async () => {
    const cfg = counterConfig();
    const ref = await counterReference(cfg);
    const dir = fresh(`torn-${file}`);
    await runTraining({
      config: cfg,
      runDir: dir,
      resume: false,
      deps: counterDeps({ failAtUpdate: 6 }),
      progress: quiet(),
    }).catch(() => undefined);
    appendFileSync(join(dir, `${file}.jsonl`), '{"step": 6, "kind": "tr');
    readJsonlTolerant(join(dir, `${file}.jsonl`)); // readers (the dashboard) skip it
    await runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
    check(records(dir) === ref.records, "the resumed run differs");
    return "readers skip it; resume cuts it; identical";
  });

// ---------------------------------------------------------------------------------------------
// 4. Damaged checkpoints

kase("checkpoint", "truncated engine state in the latest checkpoint (real engine)", 240, async () => {
  const ref = await realReference();
  const runs = fresh("ckpt-trunc");
  const killed = await realKilled(runs, "step 3/3", 0);
  const ck = join(runs, "run", "checkpoints");
  const latest = readFileSync(join(ck, "latest"), "utf8").trim();
  check(killed.signal === "SIGKILL" || existsSync(join(ck, latest)), "no checkpoint");
  const names = readdirSync(ck).filter((n) => n.startsWith("step-"));
  check(names.length >= 2, `need two checkpoints, have ${names.join(", ")}`);
  const f = join(ck, latest, "engine", "trainable.safetensors");
  truncateSync(f, Math.floor(statSync(f).size / 2));
  if (state(join(runs, "run")) === "finished")
    writeFileSync(
      join(runs, "run", "status.json"),
      JSON.stringify({ state: "stopped", step: 0, totalSteps: 3 }),
    );
  const r = await erlCli(["train", "--resume", join(runs, "run")]);
  check(r.code === 0, `resume failed:\n${r.out}`);
  check(
    /checkpoint step-\d+ is damaged .*trainable\.safetensors/.test(r.out),
    `no fallback message:\n${r.out}`,
  );
  check(records(join(runs, "run")) === ref, "the resumed run differs");
  return `${latest} truncated: named, fell back to the previous one, identical`;
});
kase("checkpoint", "torn run.json in the latest checkpoint", 60, async () => {
  const cfg = counterConfig();
  const ref = await counterReference(cfg);
  const dir = fresh("ckpt-runjson");
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 7 }),
    progress: quiet(),
  }).catch(() => undefined);
  const latest = readFileSync(join(dir, "checkpoints", "latest"), "utf8").trim();
  writeFileSync(join(dir, "checkpoints", latest, "run.json"), '{"version": 1, "st');
  await runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
  check(records(dir) === ref.records, "the resumed run differs");
  return `${latest}/run.json torn: fell back, identical`;
});
kase("checkpoint", "every checkpoint damaged", 60, async () => {
  const cfg = counterConfig();
  const dir = fresh("ckpt-all");
  await runTraining({
    config: cfg,
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 7 }),
    progress: quiet(),
  }).catch(() => undefined);
  for (const n of readdirSync(join(dir, "checkpoints")).filter((x) => x.startsWith("step-")))
    writeFileSync(join(dir, "checkpoints", n, "run.json"), "");
  const before = records(dir);
  const e = await runTraining({
    config: cfg,
    runDir: dir,
    resume: true,
    deps: counterDeps(),
    progress: quiet(),
  }).then(
    () => null,
    (x: unknown) => x,
  );
  check(
    e instanceof UserError && /no usable checkpoint/.test(e.message),
    `expected a clear error, got ${String(e)}`,
  );
  check(records(dir) === before, "the run files changed");
  return (e as Error).message.split("\n")[0]!.slice(0, 100);
});

// ---------------------------------------------------------------------------------------------
// 5. Full and read-only disks: a small tmpfs when this machine lets us mount one, else simulated
//    write failures (fs calls under the directory fail with ENOSPC / EROFS, as the kernel's would).

function tryMount(dir: string, sizeK: number): boolean {
  mkdirSync(dir, { recursive: true });
  if (process.env.FAULTS_NO_MOUNT) return false; // to exercise the simulated path
  return (
    spawnSync("mount", ["-t", "tmpfs", "-o", `size=${sizeK}k`, "tmpfs", dir], {
      stdio: "ignore",
      timeout: 10_000,
    }).status === 0
  );
}
const umount = (dir: string): void =>
  void spawnSync("umount", ["-l", dir], { stdio: "ignore", timeout: 10_000 });
const remount = (dir: string, opt: string): boolean =>
  spawnSync("mount", ["-o", `remount,${opt}`, dir], { stdio: "ignore", timeout: 10_000 }).status === 0;

/** Makes every write under `dir` fail with `code` while `on()` is true (fs calls, as the kernel would). */
function simulateFailure(dir: string, code: "ENOSPC" | "EROFS", on: () => boolean): () => void {
  const f = fs as unknown as Record<string, (...a: unknown[]) => unknown>;
  const names = [
    "writeFileSync",
    "appendFileSync",
    "mkdirSync",
    "renameSync",
    "writeSync",
    "openSync",
    "rmSync",
    "unlinkSync",
    "ftruncateSync",
  ];
  const saved = new Map(names.map((n) => [n, f[n]!]));
  const fail = (path: unknown, syscall: string): void => {
    if (!on()) return;
    if (typeof path === "string" && !resolve(path).startsWith(dir)) return;
    const err = new Error(`${code}: simulated, ${syscall} '${String(path)}'`) as NodeJS.ErrnoException;
    Object.assign(err, { code, syscall, path: typeof path === "string" ? path : undefined });
    throw err;
  };
  const fds = new Map<number, string>();
  for (const n of names)
    f[n] = (...a: unknown[]) => {
      if (n === "openSync") {
        const flags = String(a[1] ?? "r");
        if (/[wax+]/.test(flags)) fail(a[0], "open");
        const fd = saved.get(n)!(...a) as number;
        fds.set(fd, String(a[0]));
        return fd;
      }
      if (n === "writeSync" || n === "ftruncateSync") fail(fds.get(a[0] as number), "write");
      else if (code === "EROFS" || !["rmSync", "unlinkSync"].includes(n)) fail(a[0], n.replace("Sync", ""));
      return saved.get(n)!(...a);
    };
  syncBuiltinESMExports();
  return () => {
    for (const [n, fn] of saved) f[n] = fn;
    syncBuiltinESMExports();
  };
}

kase("disk", "full disk mid-run, then space freed and resumed", 90, async () => {
  const cfg = counterConfig({ steps: 30, checkpoint: { every: 3, keep: 2 } });
  const ref = await counterReference(cfg);
  const mnt = fresh("tmpfs-full");
  const dir = join(mnt, "run");
  let how: string;
  let err: unknown;
  if (tryMount(mnt, 256)) {
    how = "tmpfs of 256 KiB";
    try {
      writeFileSync(join(mnt, "filler"), Buffer.alloc(160 * 1024));
      err = await runTraining({
        config: cfg,
        runDir: dir,
        resume: false,
        deps: counterDeps(),
        progress: quiet(),
      }).then(
        () => null,
        (e: unknown) => e,
      );
      check(err !== null, "the run did not hit the full disk");
      noTemps(dir);
      rmSync(join(mnt, "filler"));
      await runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
      check(records(dir) === ref.records, "the resumed run differs");
    } finally {
      umount(mnt);
    }
  } else {
    how = "simulated (no permission to mount a tmpfs)";
    let writes = 0;
    const full = { on: false };
    const deps = counterDeps();
    const algorithm = deps.algorithm;
    deps.algorithm = async (name) => {
      const a = await algorithm(name);
      return {
        ...a,
        step: async (...args) => {
          if (++writes === 5) full.on = true; // the disk fills during step 5
          return a.step(...args);
        },
      };
    };
    const restore = simulateFailure(resolve(mnt), "ENOSPC", () => full.on);
    try {
      err = await runTraining({ config: cfg, runDir: dir, resume: false, deps, progress: quiet() }).then(
        () => null,
        (e: unknown) => e,
      );
    } finally {
      restore();
    }
    noTemps(dir);
    await runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
    check(records(dir) === ref.records, "the resumed run differs");
  }
  check(err instanceof UserError, `not a clear error: ${String(err)}`);
  const msg = (err as Error).message;
  check(
    new RegExp(`${mnt}/run/\\S+: \\w+ failed: no space left on the device \\(ENOSPC\\)`).test(msg),
    `cause or file not named: ${msg}`,
  );
  check(!/internal error/.test(msg), msg);
  return `${how}: "${msg.split("\n")[0]!.slice(0, 90)}"; no temp files; resumed, identical`;
});

kase("disk", "read-only run directory on resume", 90, async () => {
  const cfg = counterConfig();
  const ref = await counterReference(cfg);
  const mnt = fresh("tmpfs-ro");
  const dir = join(mnt, "run");
  const mounted = tryMount(mnt, 4096);
  let restore = (): void => undefined;
  try {
    await runTraining({
      config: cfg,
      runDir: dir,
      resume: false,
      deps: counterDeps({ failAtUpdate: 5 }),
      progress: quiet(),
    }).catch(() => undefined);
    const before = records(dir);
    // A machine that lets us mount may still refuse the remount: then simulate, as without a mount.
    const ro = mounted && remount(mnt, "ro");
    if (!ro) restore = simulateFailure(resolve(mnt), "EROFS", () => true);
    const err = await runTraining({
      config: cfg,
      runDir: dir,
      resume: true,
      deps: counterDeps(),
      progress: quiet(),
    }).then(
      () => null,
      (e: unknown) => e,
    );
    restore();
    const u = err instanceof UserError ? err : systemUserError(err);
    check(u !== null, `not a clear error: ${String(err)}`);
    check(
      /read-only \(EROFS\)/.test(u.message) && u.message.includes(dir),
      `cause or path not named: ${u.message}`,
    );
    if (ro) check(remount(mnt, "rw"), "remount read-write failed");
    check(records(dir) === before, "the run files changed");
    await runTraining({ config: cfg, runDir: dir, resume: true, deps: counterDeps(), progress: quiet() });
    check(records(dir) === ref.records, "the resumed run differs");
    return `${ro ? "tmpfs remounted ro" : "simulated"}: "${u.message.slice(0, 80)}"; then resumed, identical`;
  } finally {
    restore();
    if (mounted) umount(mnt);
  }
});

// ---------------------------------------------------------------------------------------------
// 6. Two writers

kase("two writers", "two processes start the same new run at once", 90, async () => {
  const cfg = counterConfig();
  const ref = await counterReference(cfg);
  const dir = fresh("two-new");
  const [a, b] = await Promise.all([
    counterChild(cfg, dir, false, null),
    counterChild(cfg, dir, false, null),
  ]);
  const codes = [a.code, b.code].sort();
  check(codes[0] === 0 && codes[1] !== 0, `exit codes ${a.code}, ${b.code}:\n${a.out}\n${b.out}`);
  check(/a run has one writer|already exists/.test(a.out + b.out), "the refusal does not say why");
  check(records(dir) === ref.records, "the run differs from a single writer's");
  return "one wrote the run, the other was refused; every step once";
});
kase("two writers", "two resumes of one run at once", 90, async () => {
  const cfg = counterConfig({ steps: 12 });
  const ref = await counterReference(cfg, 10);
  const dir = fresh("two-resume");
  await counterChild(cfg, dir, false, Math.floor(ref.ms / 4));
  const [a, b] = await Promise.all([counterChild(cfg, dir, true, null), counterChild(cfg, dir, true, null)]);
  check(a.code === 0 || b.code === 0, `neither finished:\n${a.out}\n${b.out}`);
  const refused = a.code !== 0 || b.code !== 0;
  if (refused)
    check(/a run has one writer/.test(a.out + b.out), `the refusal does not say why:\n${a.out}\n${b.out}`);
  check(records(dir) === ref.records, "the run differs from a single writer's");
  return refused
    ? "one resumed, the other was refused; identical"
    : "the second found it finished; identical";
});
kase("two writers", "two `erl train --name X` at once (real engine)", 240, async () => {
  const runs = fresh("two-cli");
  const go = () => erlCli(["train", "--config", realCfgFile, "--runs-dir", runs, "--name", "x"]);
  const [a, b] = await Promise.all([go(), go()]);
  const ok = [a, b].filter((r) => r.code === 0);
  check(ok.length === 1, `exit codes ${a.code}, ${b.code}`);
  const other = a.code === 0 ? b : a;
  const line = clean(other, /a run has one writer|already exists/, "second writer");
  check(
    JSON.stringify(trainSteps(join(runs, "x"))) === "[1,2,3]",
    `steps ${JSON.stringify(trainSteps(join(runs, "x")))}`,
  );
  return `"${line.slice(0, 90)}"`;
});

// ---------------------------------------------------------------------------------------------
// 7. The engine's HTTP server under unauthenticated floods

const RSS_BOUND_MB = 64;
let server: { p: ChildProcess; port: number; token: string } | null = null;
async function httpServer(): Promise<{ p: ChildProcess; port: number; token: string }> {
  if (server) return server;
  const token = randomBytes(16).toString("hex");
  const p = spawn(PYTHON, ["-m", "erl_engine.server", "--http", "--port", "0", "--header-timeout", "2"], {
    cwd: ROOT,
    env: {
      ...process.env,
      ERL_ENGINE_TOKEN: token,
      PYTHONPATH: join(ROOT, "engine"),
      ERL_ENGINE_THREADS: "1",
    },
    stdio: ["ignore", "ignore", "pipe"],
  });
  const port = await new Promise<number>((res, rej) => {
    let err = "";
    p.stderr!.on("data", (d: Buffer) => {
      err += d.toString();
      const m = /listening on http:\/\/[\d.]+:(\d+)/.exec(err);
      if (m) res(Number(m[1]));
    });
    p.on("exit", () => rej(new Error(`the server exited:\n${err}`)));
  });
  server = { p, port, token };
  return server;
}
function rssMB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}
/** Opens a connection, sends `head` (+ `body` bytes of padding), returns the status line or "closed". */
function attack(port: number, head: string, bodyBytes: number, byteDelayMs = 0): Promise<string> {
  return new Promise((done) => {
    const s = net.connect(port, "127.0.0.1");
    let got = "";
    s.setTimeout(60_000, () => s.destroy());
    s.on("data", (d) => (got += d.toString()));
    s.on("error", () => undefined);
    s.on("close", () => done(got ? got.split("\r\n")[0]! : "closed"));
    s.on("connect", async () => {
      if (byteDelayMs > 0) {
        for (const ch of head) {
          if (s.destroyed) return;
          s.write(ch);
          await sleep(byteDelayMs);
        }
        return;
      }
      s.write(head);
      const chunk = Buffer.alloc(64 * 1024, 97);
      for (let sent = 0; sent < bodyBytes && !s.destroyed; sent += chunk.length)
        if (!s.write(chunk)) await new Promise((r) => s.once("drain", r).once("close", r));
      s.end();
    });
  });
}
async function flood(name: string, n: number, make: (port: number) => Promise<string>): Promise<string> {
  const srv = await httpServer();
  const base = rssMB(srv.p.pid!);
  let peak = base;
  const sampler = setInterval(() => (peak = Math.max(peak, rssMB(srv.p.pid!))), 50);
  const t0 = performance.now();
  const answers = await Promise.all(Array.from({ length: n }, () => make(srv.port)));
  clearInterval(sampler);
  peak = Math.max(peak, rssMB(srv.p.pid!));
  const counts = new Map<string, number>();
  for (const a of answers) {
    const k = a.replace(/^HTTP\/1\.[01] /, "");
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  const health = await fetch(`http://127.0.0.1:${srv.port}/v1/health`, {
    headers: { Authorization: `Bearer ${srv.token}` },
  });
  check(health.status === 200, "the server does not answer its client after the flood");
  check(
    peak - base <= RSS_BOUND_MB,
    `RSS grew ${(peak - base).toFixed(1)} MB, over the ${RSS_BOUND_MB} MB bound`,
  );
  const summary = [...counts].map(([k, v]) => `${v}× ${k}`).join(", ");
  figures.push(
    `server flood "${name}": ${n} connections, RSS ${base.toFixed(0)} → peak ${peak.toFixed(0)} MB (+${(peak - base).toFixed(1)} MB), ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return `${summary}; RSS +${(peak - base).toFixed(1)} MB (bound ${RSS_BOUND_MB}); client still served`;
}
const post = (len: number, auth = ""): string =>
  `POST /v1/call HTTP/1.1\r\nHost: x\r\n${auth}Content-Length: ${len}\r\nContent-Type: application/json\r\n\r\n`;

kase("server flood", "oversized: 8 × 400 MB claimed, 8 MB sent, no token", 120, () =>
  flood("oversized", 8, async (port) => {
    const a = await attack(port, post(400 << 20), 8 << 20);
    check(/401|closed/.test(a), `answered ${a}`);
    return a;
  }),
);
kase("server flood", "oversized with a wrong token", 120, () =>
  flood("wrong token", 8, async (port) => {
    const a = await attack(port, post(400 << 20, "Authorization: Bearer wrong\r\n"), 4 << 20);
    check(/401|closed/.test(a), `answered ${a}`);
    return a;
  }),
);
kase("server flood", "slow: 40 heads that never end, a byte every 25 ms", 120, () =>
  flood("slow", 40, async (port) => {
    const t = performance.now();
    // A head that never ends: only the server's head deadline (2 s here, 30 s by default) ends it.
    const a = await attack(port, post(10).replace("\r\n\r\n", "\r\nX-Slow: ") + "x".repeat(4000), 0, 25);
    check(a === "closed" || /503|400|501/.test(a), `answered ${a}`);
    check(performance.now() - t < 20_000, "held for more than 20 s");
    return a === "closed" ? "cut off at the deadline" : a;
  }),
);
kase("server flood", "many: 300 connections at once", 120, () =>
  flood("many", 300, async (port) => {
    const a = await attack(port, post(2), 2);
    check(/401|503|closed/.test(a), `answered ${a}`);
    return a;
  }),
);
kase("server flood", "huge head: 1 MB of headers", 60, () =>
  flood("huge head", 4, async (port) => {
    const a = await attack(
      port,
      `POST /v1/call HTTP/1.1\r\n${"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(30_000)}\r\n`,
      0,
    );
    check(/431|closed|400/.test(a), `answered ${a}`);
    return a;
  }),
);

// ---------------------------------------------------------------------------------------------
// 8. Malformed inputs (configs, CLI flags, data lines, model directories, protocol messages, paths)

async function erlIn(argv: string[]): Promise<Proc> {
  const out: string[] = [];
  const saved = { error: console.error, log: console.log };
  console.error = (...a: unknown[]) => void out.push(a.map(String).join(" "));
  console.log = (...a: unknown[]) => void out.push(a.map(String).join(" "));
  try {
    const code = await erlMain(argv);
    return { code, signal: null, out: out.join("\n") };
  } finally {
    console.error = saved.error;
    console.log = saved.log;
  }
}
const M = join(WORK, "malformed");
mkdirSync(M, { recursive: true });
const file = (name: string, text: string): string => {
  const p = join(M, name);
  writeFileSync(p, text);
  return p;
};
const cliCases: [string, string, () => string[], RegExp][] = [
  [
    "config",
    "malformed JSON",
    () => ["train", "--config", file("c1.json", "{ steps: 3 ")],
    /c1\.json.*malformed JSON|c1\.json/,
  ],
  [
    "config",
    "unknown key with suggestion",
    () => ["train", "--config", file("c2.json", '{"stpes": 3}')],
    /key "stpes": unknown key \(did you mean "steps"\?\)/,
  ],
  [
    "config",
    "wrong type",
    () => ["train", "--config", file("c3.json", '{"steps": "three"}')],
    /key "steps": expected an integer/,
  ],
  [
    "config",
    "negative steps",
    () => ["train", "--config", file("c4.json", '{"steps": -2}')],
    /key "steps": expected an integer >= 1, got -2/,
  ],
  [
    "config",
    "key constructor",
    () => ["train", "--config", file("c5.json", '{"constructor": {}}')],
    /key "constructor": unknown key/,
  ],
  [
    "config",
    "key __proto__",
    () => ["train", "--config", file("c6.json", '{"algo": {"__proto__": {"n": 1}}}')],
    /key "algo\.__proto__": unknown key/,
  ],
  [
    "config",
    "key toString",
    () => ["train", "--config", file("c7.json", '{"toString": 1}')],
    /key "toString": unknown key/,
  ],
  [
    "config",
    "key hasOwnProperty",
    () => ["train", "--config", file("c8.json", '{"eval": {"hasOwnProperty": 1}}')],
    /key "eval\.hasOwnProperty": unknown key/,
  ],
  [
    "config",
    "unknown algorithm",
    () => ["train", "--config", file("c9.json", '{"algo": {"name": "ppo"}}')],
    /key "algo\.name": expected one of/,
  ],
  [
    "config",
    "array instead of object",
    () => ["train", "--config", file("c10.json", "[1, 2]")],
    /c10\.json.*expected an object|c10\.json/,
  ],
  ["config", "missing config file", () => ["train", "--config", join(M, "nope.json")], /nope\.json/],
  [
    "config",
    "--set on an unknown key",
    () => ["train", "--config", "frozenlake-tiny", "--set", "optim.lr_typo=1"],
    /--set, key "optim\.lr_typo": unknown key/,
  ],
  [
    "config",
    "--set with no '='",
    () => ["train", "--config", "frozenlake-tiny", "--set", "steps"],
    /--set steps: expected key\.path=value/,
  ],
  [
    "config",
    "--set NaN",
    () => ["train", "--config", "frozenlake-tiny", "--set", "optim.lr=NaN"],
    /key "optim\.lr"/,
  ],
  ["flag", "--config without a value", () => ["train", "--config"], /--config needs a value/],
  [
    "flag",
    "--resume followed by a flag",
    () => ["train", "--resume", "--config", "x"],
    /--resume needs a value/,
  ],
  ["flag", "unknown option", () => ["train", "--steps", "3"], /Unknown option '--steps'/],
  ["flag", "a command named constructor", () => ["constructor"], /unknown command "constructor"/],
  ["flag", "dashboard --poll -5", () => ["dashboard", M, "--poll", "-5"], /--poll needs a value/],
  [
    "flag",
    "dashboard --poll=-5",
    () => ["dashboard", M, "--poll=-5"],
    /--poll must be an integer from 100 to 60000/,
  ],
  ["flag", "dashboard --port 70000", () => ["dashboard", M, "--port", "70000"], /--port must be an integer/],
  [
    "flag",
    "eval --n 0",
    () => ["eval", "--model", TINY, "--env", "frozenlake", "--n", "0"],
    /--n must be an integer >= 1, got "0"/,
  ],
  [
    "flag",
    "eval --tasks -1",
    () => ["eval", "--model", TINY, "--env", "frozenlake", "--tasks=-1"],
    /--tasks must be an integer >= 1/,
  ],
  [
    "flag",
    "eval --split dev",
    () => ["eval", "--model", TINY, "--env", "frozenlake", "--split", "dev"],
    /--split must be test or train, got dev/,
  ],
  ["flag", "eval without --env", () => ["eval", "--model", TINY], /--env is required/],
  [
    "flag",
    "engine serve --port abc",
    () => ["engine", "serve", "--port", "abc"],
    /--port must be an integer in 0\.\.65535/,
  ],
  [
    "flag",
    "--resume with --set steps",
    () => ["train", "--resume", M, "--set", "steps=5"],
    /--set steps=5: with --resume only engine\.url, .*model\.path may be set/,
  ],
  [
    "flag",
    "--break-lock without --resume",
    () => [
      "train",
      "--config",
      "frozenlake-tiny",
      "--break-lock",
      "--set",
      `model.path=${TINY}`,
      "--runs-dir",
      join(M, "r"),
    ],
    /--break-lock goes with --resume/,
  ],
  [
    "path",
    "--name ..",
    () => ["train", "--config", "frozenlake-tiny", "--runs-dir", join(M, "runs"), "--name", ".."],
    /key "name": "\.\." is not a run name/,
  ],
  [
    "path",
    "--name a/b",
    () => ["train", "--config", "frozenlake-tiny", "--runs-dir", join(M, "runs"), "--name", "a/b"],
    /key "name": "a\/b" is not a run name/,
  ],
  [
    "path",
    "model.path missing",
    () => ["train", "--config", "frozenlake-tiny", "--set", "model.path=/no/such/model"],
    /key "model\.path": model directory \/no\/such\/model does not exist/,
  ],
  [
    "path",
    "--resume of a non-run",
    () => ["train", "--resume", M],
    /not a run directory \(no config\.json\)/,
  ],
  [
    "path",
    "eval --out in a missing folder",
    () => ["eval", "--model", TINY, "--env", "frozenlake", "--out", join(M, "no", "o.jsonl")],
    /the folder .* does not exist/,
  ],
  [
    "path",
    "eval --out onto a non-JSONL file",
    () => ["eval", "--model", TINY, "--env", "frozenlake", "--out", file("notes.md", "# notes\n")],
    /notes\.md: exists and is not a JSONL file/,
  ],
  [
    "path",
    "eval --out where no file can be created (sysfs)",
    () => ["eval", "--model", TINY, "--env", "frozenlake", "--out", "/sys/erl-faults.jsonl"],
    /erl-faults\.jsonl: --out: cannot write: /,
  ],
  [
    "path",
    "export where no folder can be created (sysfs)",
    () => ["export", M, "/sys/erl-faults-export"],
    /\/sys: cannot write the export to \/sys\/erl-faults-export: /,
  ],
  [
    "path",
    "export to an existing file",
    () => ["export", M, file("exists.txt", "x")],
    /exists\.txt exists and is a file/,
  ],
  [
    "path",
    "export under a file",
    () => ["export", M, join(M, "exists.txt", "sub")],
    /exists\.txt is not a directory/,
  ],
  ["path", "dashboard on a file", () => ["dashboard", file("f.txt", "x")], /not a directory/],
  [
    "path",
    "dashboard on a missing folder",
    () => ["dashboard", join(M, "nowhere")],
    /runs directory not found/,
  ],
  [
    "path",
    "--env-module missing",
    () => ["--env-module", join(M, "env.ts"), "play"],
    /env module .*env\.ts not found/,
  ],
];
for (const [group, name, argv, re] of cliCases)
  kase(`malformed ${group}`, name, 30, async () => clean(await erlIn(argv()), re, name));

const dataCases: [string, string, RegExp, (f: string) => unknown][] = [
  [
    "bad JSON line",
    '{"index":0,"size":2,"map":["SF","FG"],"start":[0,0],"goal":[1,1]}\n{"index":1, size\n',
    /:2: malformed JSON/,
    (f) => loadFrozenLakeMaps(f, "train"),
  ],
  [
    "map row of wrong length",
    '{"index":0,"size":2,"map":["SFF","FG"],"start":[0,0],"goal":[1,1]}\n',
    /:1, key "map": each row must be 2 characters/,
    (f) => loadFrozenLakeMaps(f, "train"),
  ],
  [
    "start outside the board",
    '{"index":0,"size":2,"map":["SF","FG"],"start":[5,0],"goal":[1,1]}\n',
    /:1, key "start": expected \[row, col\] inside the board/,
    (f) => loadFrozenLakeMaps(f, "train"),
  ],
  [
    "a line that is not an object",
    '{"index":0,"size":2,"map":["SF","FG"],"start":[0,0],"goal":[1,1]}\n[1,2]\n',
    /:2/,
    (f) => loadFrozenLakeMaps(f, "train"),
  ],
  [
    "HotpotQA question without an answer",
    '{"id":"q1","question":"Who?","answer":""}\n',
    /:1, key "answer": expected a non-empty string/,
    (f) => loadQuestionsJsonl(f),
  ],
];
for (const [name, text, re, load] of dataCases)
  kase("malformed data line", name, 30, async () => {
    const d = fresh("data");
    mkdirSync(d);
    const f = join(d, "train_maps.jsonl");
    writeFileSync(f, text);
    try {
      load(name.startsWith("HotpotQA") ? f : d);
    } catch (e) {
      check(e instanceof UserError, `not a clear error: ${String(e)}`);
      check(re.test(e.message) && e.message.includes(f), `expected ${re} naming ${f}: ${e.message}`);
      return e.message.replace(d, "…").slice(0, 100);
    }
    throw new Error("accepted");
  });

let engine: Awaited<ReturnType<typeof startEngine>> | null = null;
const modelCases: [string, (d: string) => void, RegExp][] = [
  [
    "empty safetensors",
    (d) => writeFileSync(join(d, "model.safetensors"), ""),
    /model\.safetensors: empty weight file/,
  ],
  [
    "truncated safetensors",
    (d) => truncateSync(join(d, "model.safetensors"), 1000),
    /model\.safetensors: truncated or corrupted safetensors/,
  ],
  ["no tokenizer files", (d) => rmSync(join(d, "tokenizer.json")), /no tokenizer files/],
  ["no config.json", (d) => rmSync(join(d, "config.json")), /no config\.json/],
  [
    "config.json not JSON",
    (d) => writeFileSync(join(d, "config.json"), "{oops"),
    /config\.json|not a valid JSON|Expecting/,
  ],
];
for (const [name, damage, re] of modelCases)
  kase("malformed model dir", name, 120, async () => {
    const d = fresh("model");
    fs.cpSync(TINY, d, { recursive: true });
    damage(d);
    engine ??= await startEngine();
    const e = await engine.loadModel({ path: d, dtype: "float32", device: "cpu", seed: 0 }).then(
      () => null,
      (x: unknown) => x,
    );
    check(e instanceof UserError, `loaded, or not a clear error: ${String(e)}`);
    check(re.test(e.message), `expected ${re}: ${e.message}`);
    check(!/see the engine's stderr/.test(e.message), `quotes internals: ${e.message}`);
    return e.message.replace(d, "<dir>").slice(0, 100);
  });

const protocolCases: [string, string, RegExp][] = [
  ["not JSON", "{nope", /"code":"bad_request".*not valid JSON/],
  ["wrong protocol version", '{"v":99,"id":1,"method":"info","params":{}}', /"code":"protocol_version"/],
  ["unknown method", '{"v":1,"id":2,"method":"rm -rf","params":{}}', /"code":"unknown_method"/],
  ["params not an object", '{"v":1,"id":3,"method":"encode","params":[1]}', /"code":"bad_request"/],
  ["missing field", '{"v":1,"id":4,"method":"encode","params":{}}', /"code":"(bad_request|no_model)"/],
  ["id not an integer", '{"v":1,"id":"x","method":"info","params":{}}', /"ok":false/],
  ["a JSON array", "[1,2,3]", /"code":"bad_request"/],
  [
    "loadModel of a missing path",
    '{"v":1,"id":5,"method":"loadModel","params":{"path":"/no/model","dtype":"float32","device":"cpu","seed":0}}',
    /"code":"not_found".*\/no\/model/,
  ],
];
kase("malformed protocol", `${protocolCases.length} bad messages to one stdio engine`, 120, async () => {
  const lines = protocolCases.map(([, l]) => l).join("\n") + '\n{"v":1,"id":9,"method":"info","params":{}}\n';
  const r = spawnSync(PYTHON, ["-m", "erl_engine.server"], {
    cwd: ROOT,
    input: lines,
    encoding: "utf8",
    env: { ...process.env, PYTHONPATH: join(ROOT, "engine"), ERL_ENGINE_THREADS: "1" },
    timeout: 110_000,
  });
  const answers = r.stdout.split("\n").filter(Boolean);
  check(answers.length === protocolCases.length + 1, `${answers.length} answers:\n${r.stdout}\n${r.stderr}`);
  protocolCases.forEach(([name, , re], i) => check(re.test(answers[i]!), `${name}: ${answers[i]}`));
  check(/"id":9,"ok":true/.test(answers.at(-1)!), "the engine stopped serving");
  check(!/Traceback/.test(r.stderr), `a traceback:\n${r.stderr}`);
  return `each answered with an error code; the engine kept serving`;
});
// Counted as the malformed inputs they are (one case in the table, eight inputs).
const MALFORMED_COUNT = cliCases.length + dataCases.length + modelCases.length + protocolCases.length;

// ---------------------------------------------------------------------------------------------
// 9. Sizes over their bounds, errors that name the real cause, exports another user can load, the
//    servers' limits, and the scripts' arguments (issue #28; each case failed on the code before it).

/** Starts a long-running command and resolves once `ready` appears in its output. */
function startChild(
  cmd: string,
  args: string[],
  ready: RegExp,
  env: Record<string, string> = {},
): Promise<{ p: ChildProcess; m: RegExpExecArray; out: () => string }> {
  return new Promise((done, reject) => {
    const p = spawn(cmd, args, {
      cwd: ROOT,
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const on = (d: Buffer): void => {
      out += d.toString();
      const m = ready.exec(out);
      if (m) done({ p, m, out: () => out });
    };
    p.stdout.on("data", on);
    p.stderr.on("data", on);
    p.on("error", reject);
    p.on("exit", (code) => reject(new Error(`exited (${code}) before it was ready:\n${out}`)));
  });
}
async function stopChild(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const gone = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
  await gone;
  clearTimeout(t);
}

kase("bounds", "train --set batchSize=1000000000 (real engine)", 120, async () => {
  const runs = fresh("batch-1e9");
  const r = await erlCli(
    ["train", "--config", realCfgFile, "--runs-dir", runs, "--name", "big", "--set", "batchSize=1000000000"],
    { limitMs: 100_000 },
  );
  const line = clean(r, /key "batchSize": 1,000,000,000 is over the limit of [\d,]+/, "batchSize 1e9");
  check(!existsSync(join(runs, "big")), "a run directory was left behind");
  return `"${line}"; no run directory`;
});
kase("bounds", "eval --tasks 1 --n 1000000000", 40, async () => {
  const r = await erlCli(
    ["eval", "--model", TINY, "--env", "frozenlake", "--tasks", "1", "--n", "1000000000"],
    { limitMs: 30_000 },
  );
  return clean(r, /--n 1,000,000,000 is over the limit of [\d,]+/, "eval --n 1e9");
});
kase("bounds", "train --set seed=1e300", 60, async () => {
  const runs = fresh("seed-1e300");
  const r = await erlIn(["train", "--config", realCfgFile, "--runs-dir", runs, "--set", "seed=1e300"]);
  const line = clean(r, /key "seed": .* over the limit of 4,294,967,295/, "seed 1e300");
  check(!existsSync(runs) || readdirSync(runs).length === 0, "a run directory was left behind");
  return line;
});
kase("bounds", "--set reflector.timeout=1e9 (Node's timers)", 30, async () =>
  clean(
    await erlIn([
      "train",
      "--config",
      realCfgFile,
      "--runs-dir",
      fresh("timeout"),
      "--set",
      "reflector.timeout=1e9",
    ]),
    /key "reflector\.timeout": 1000000000 is over the limit of 2,147,483 s/,
    "timeout 1e9",
  ),
);
kase("bounds", "compare --seeds 1000000000", 40, async () =>
  clean(
    await erlCli(
      ["compare", "--env", "frozenlake", "--algos", "erl", "--seeds", "1000000000", "--out", fresh("cmp")],
      { limitMs: 30_000 },
    ),
    /--seeds 1000000000: .*over the limit/,
    "compare --seeds 1e9",
  ),
);

kase("cause", "--config /etc (a folder)", 30, async () =>
  clean(
    await erlIn(["train", "--config", "/etc"]),
    /--config \/etc: is a folder, not a config file/,
    "--config /etc",
  ),
);
kase("cause", "a config saved with a UTF-8 byte-order mark", 30, async () => {
  const f = file("bom.json", '\uFEFF{"steps": 3}');
  const r = await erlIn(["train", "--config", f, "--print-config"]);
  check(r.code === 0, `exit ${r.code}: ${r.out}`);
  check(/"steps": 3/.test(r.out), `the config was not read: ${r.out}`);
  return "read as JSON (the mark is skipped)";
});
const damagedModels: [string, (d: string) => void, RegExp][] = [
  [
    "config.json inconsistent (hidden size 7, 3 heads)",
    (d) => {
      const c = JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
      writeFileSync(join(d, "config.json"), JSON.stringify({ ...c, hidden_size: 7, num_attention_heads: 3 }));
    },
    /config\.json: .*(hidden_size|hidden size).*7.*(heads|num_attention_heads)/,
  ],
  [
    "weights that do not fit config.json",
    (d) => {
      const c = JSON.parse(readFileSync(join(d, "config.json"), "utf8"));
      writeFileSync(
        join(d, "config.json"),
        JSON.stringify({ ...c, intermediate_size: c.intermediate_size * 2 }),
      );
    },
    /model\.safetensors: .*shape \[\d+, \d+\].*config\.json .*\[\d+, \d+\]/,
  ],
];
for (const [name, damage, re] of damagedModels)
  kase("cause", name, 120, async () => {
    const d = fresh("model");
    fs.cpSync(TINY, d, { recursive: true });
    damage(d);
    engine ??= await startEngine();
    const e = await engine.loadModel({ path: d, dtype: "float32", device: "cpu", seed: 0 }).then(
      () => null,
      (x: unknown) => x,
    );
    check(e instanceof UserError, `loaded, or not a clear error: ${String(e)}`);
    check(!/tokenizer|above report/i.test(e.message), `blames the wrong part: ${e.message}`);
    check(re.test(e.message), `expected ${re}: ${e.message}`);
    return e.message.replace(d, "<dir>").slice(0, 110);
  });
kase("cause", "ERL_PYTHON is a Python without the engine's packages", 90, async () => {
  const bare = fresh("bare-python");
  const mk = spawnSync(PYTHON, ["-m", "venv", "--without-pip", bare], { encoding: "utf8", timeout: 60_000 });
  check(mk.status === 0, `could not make a bare virtualenv: ${mk.stderr}`);
  const py = join(bare, "bin", "python");
  const r = await runProc(
    process.execPath,
    [ERL, "eval", "--model", TINY, "--env", "frozenlake", "--tasks", "1", "--n", "1"],
    {
      limitMs: 60_000,
      env: { ERL_PYTHON: py },
    },
  );
  const line = clean(r, /ERL_PYTHON.*has no module named '\w+'/, "bare ERL_PYTHON");
  check(!/Traceback/.test(r.out), `a traceback:\n${r.out}`);
  return line.replace(bare, "<venv>");
});
kase("cause", "kill -9 while the model loads, then --resume (real engine)", 240, async () => {
  const ref = await realReference();
  const runs = fresh("kill-load");
  const killed = await realKilled(runs, "starting the engine", rng.intBetween(50, 400));
  check(killed.signal === "SIGKILL", `not killed:\n${killed.out}`);
  const r = await erlCli(["train", "--resume", join(runs, "run")]);
  check(r.code === 0, `resume failed:\n${r.out}`);
  check(records(join(runs, "run")) === ref, "the resumed run differs from an uninterrupted one");
  return "resumed from the beginning, identical";
});
kase("cause", "--resume --set model.path=<a broken model> keeps the run's config", 240, async () => {
  const ref = await realReference();
  const runs = fresh("resume-bad-model");
  await realKilled(runs, "step 1/3", 0);
  const dir = join(runs, "run");
  if (state(dir) === "finished")
    writeFileSync(join(dir, "status.json"), JSON.stringify({ state: "stopped", step: 0, totalSteps: 3 }));
  const bad = fresh("broken-model");
  fs.cpSync(TINY, bad, { recursive: true });
  truncateSync(join(bad, "model.safetensors"), 1000);
  const before = readFileSync(join(dir, "config.json"), "utf8");
  const r = await erlCli(["train", "--resume", dir, "--set", `model.path=${bad}`]);
  const line = clean(r, /model\.safetensors: truncated/, "resume with a broken model");
  check(
    readFileSync(join(dir, "config.json"), "utf8") === before,
    "config.json was changed by the failed repair",
  );
  const again = await erlCli(["train", "--resume", dir]);
  check(again.code === 0, `a plain --resume failed:\n${again.out}`);
  check(records(dir) === ref, "the resumed run differs");
  return `"${line.replace(bad, "<bad>").slice(0, 80)}"; config.json unchanged; resumed, identical`;
});
kase("cause", "--api-key-env toString", 30, async () =>
  clean(
    await erlIn([
      "eval",
      "--policy",
      "openai:x",
      "--env",
      "frozenlake",
      "--base-url",
      "http://127.0.0.1:9/v1",
      "--api-key-env",
      "toString",
      "--tasks",
      "1",
      "--n",
      "1",
    ]),
    /\$toString, which is not set/,
    "--api-key-env toString",
  ),
);
kase("cause", "an env module that registers __proto__", 30, async () => {
  const f = join(fresh("proto-env"), "proto.mts");
  mkdirSync(join(f, ".."));
  writeFileSync(
    f,
    `import { registerEnv } from ${JSON.stringify(join(ROOT, "src", "envs", "registry.ts"))};\n` +
      `registerEnv("__proto__", () => { throw new Error("never built"); });\n`,
  );
  return clean(await erlIn(["--env-module", f, "play", "x"]), /"__proto__" is reserved/, "__proto__ env");
});
kase("cause", "the corridor example copied outside the repository", 60, async () => {
  const d = fresh("corridor");
  mkdirSync(d);
  const f = join(d, "corridor.ts");
  writeFileSync(
    f,
    readFileSync(join(ROOT, "examples", "corridor.ts"), "utf8").replace(
      '"../src/envs/index.ts"',
      JSON.stringify(join(ROOT, "src", "envs", "index.ts")),
    ),
  );
  const r = await erlCli(["--env-module", f, "eval", "--help"], { limitMs: 50_000 });
  check(r.code === 0 && /corridor/.test(r.out), `exit ${r.code}:\n${r.out}`);
  return "loaded; `erl eval --help` lists corridor";
});
kase("cause", "eval and export of a run with no checkpoint yet", 60, async () => {
  const dir = fresh("no-ckpt");
  await runTraining({
    config: counterConfig(),
    runDir: dir,
    resume: false,
    deps: counterDeps({ failAtUpdate: 1 }),
    progress: quiet(),
  }).catch(() => undefined);
  rmSync(join(dir, "checkpoints"), { recursive: true, force: true });
  const e = clean(
    await erlIn(["eval", "--model", dir]),
    /has no checkpoint yet/,
    "eval of a run without checkpoint",
  );
  clean(await erlIn(["export", dir, join(fresh("x"), "out")]), /has no checkpoint yet/, "export");
  return e.replace(dir, "<run>");
});
kase("cause", "eval --env constructor", 30, async () =>
  clean(
    await erlIn(["eval", "--model", TINY, "--env", "constructor"]),
    /--env constructor: unknown environment/,
    "--env constructor",
  ),
);

// Exports: the files get the umask's modes, and another user loads them from another directory.
const asNobody = (): boolean =>
  process.getuid?.() === 0 && spawnSync("setpriv", ["--version"], { stdio: "ignore" }).status === 0;
/** Moves an export into a fresh world-readable folder elsewhere and loads it there (as nobody when root). */
function loadElsewhere(exported: string, code: string): { how: string; out: string } {
  const elsewhere = mkdtempSync(join(tmpdir(), "erl-faults-elsewhere-"));
  fs.chmodSync(elsewhere, 0o755);
  const moved = join(elsewhere, "policy");
  fs.renameSync(exported, moved);
  const home = mkdtempSync(join(tmpdir(), "erl-faults-home-"));
  fs.chmodSync(home, 0o777);
  const env = {
    ...process.env,
    HOME: home,
    HF_HOME: join(home, "hf"),
    PYTHONPATH: join(ROOT, "engine"),
    ERL_EXPORT: moved,
  };
  const nobody = asNobody();
  const cmd = nobody
    ? (["setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", PYTHON, "-c", code]] as const)
    : ([PYTHON, ["-c", code]] as const);
  const r = spawnSync(cmd[0], [...cmd[1]], { cwd: elsewhere, env, encoding: "utf8", timeout: 120_000 });
  rmSync(elsewhere, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
  check(r.status === 0, `loading failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
  return {
    how: nobody ? "as nobody" : "as this user (not root: no other user to switch to)",
    out: r.stdout.trim(),
  };
}
function umaskModes(dir: string): string {
  const um = process.umask();
  const want = { dir: (0o777 & ~um).toString(8), file: (0o666 & ~um).toString(8) };
  const walk = (d: string): string[] =>
    readdirSync(d).flatMap((n) => {
      const p = join(d, n);
      return statSync(p).isDirectory() ? [p, ...walk(p)] : [p];
    });
  for (const p of [dir, ...walk(dir)]) {
    const mode = (statSync(p).mode & 0o777).toString(8);
    const expected = statSync(p).isDirectory() ? want.dir : want.file;
    check(mode === expected, `${p}: mode ${mode}, the umask gives ${expected}`);
  }
  return `modes ${want.dir}/${want.file} (umask ${um.toString(8).padStart(3, "0")})`;
}
kase(
  "export",
  "a full model: the umask's modes, loaded by another user from another folder",
  240,
  async () => {
    await realReference();
    const runDir = join(
      WORK,
      readdirSync(WORK).find((n) => n.endsWith("-real-ref"))!,
      "ref",
    );
    const out = join(fresh("export-full"), "policy");
    const r = await erlCli(["export", runDir, out]);
    check(r.code === 0, `export failed:\n${r.out}`);
    const modes = umaskModes(out);
    const ckpt = join(
      runDir,
      "checkpoints",
      readFileSync(join(runDir, "checkpoints", "latest"), "utf8").trim(),
    );
    umaskModes(ckpt);
    const { how } = loadElsewhere(
      out,
      "import os, transformers as t; d=os.environ['ERL_EXPORT']; m=t.AutoModelForCausalLM.from_pretrained(d); " +
        "k=t.AutoTokenizer.from_pretrained(d); print(sum(p.numel() for p in m.parameters()), len(k))",
    );
    return `${modes}, checkpoints too; loaded ${how}`;
  },
);
kase("export", "a LoRA adapter names its base portably and loads elsewhere (real engine)", 300, async () => {
  const runs = fresh("lora-run");
  const cfg = JSON.parse(readFileSync(realCfgFile, "utf8"));
  const loraCfg = file(
    "lora.json",
    JSON.stringify({
      ...cfg,
      steps: 1,
      model: { ...cfg.model, lora: { rank: 2, alpha: 4, dropout: 0, targetModules: "q_proj,v_proj" } },
    }),
  );
  const t = await erlCli(["train", "--config", loraCfg, "--runs-dir", runs, "--name", "lora"]);
  check(t.code === 0, `the LoRA run failed:\n${t.out}`);
  const out = join(fresh("export-lora"), "adapter");
  const r = await erlCli(["export", join(runs, "lora"), out]);
  check(r.code === 0, `export failed:\n${r.out}`);
  const base = JSON.parse(readFileSync(join(out, "adapter_config.json"), "utf8"))
    .base_model_name_or_path as string;
  check(
    !base.startsWith("/") && !base.includes(ROOT),
    `the adapter names its base by an absolute path: ${base}`,
  );
  umaskModes(out);
  const { how, out: printed } = loadElsewhere(
    out,
    "import os; from erl_engine.portable import load_export; m, k = load_export(os.environ['ERL_EXPORT']); " +
      "print(type(m).__name__, len(k))",
  );
  return `base "${base}"; loaded ${how} (${printed})`;
});

// The servers' limits through the Node front end, and slow unauthenticated connections.
kase("server limits", "erl engine serve --max-body 100 --header-timeout 2", 120, async () => {
  const token = randomBytes(8).toString("hex");
  const s = await startChild(
    process.execPath,
    [ERL, "engine", "serve", "--port", "0", "--max-body", "100", "--header-timeout", "2"],
    /engine serving at (http:\/\/\S+)/,
    { ERL_ENGINE_TOKEN: token, ERL_ENGINE_THREADS: "1" },
  );
  try {
    const url = s.m[1]!;
    const big = await fetch(`${url}/v1/call`, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify({ v: 1, id: 1, method: "info", params: {}, pad: "x".repeat(200) }),
    });
    check(big.status === 413, `a 250-byte body answered ${big.status}`);
    const port = Number(new URL(url).port);
    const t0 = performance.now();
    const a = await attack(port, post(10).replace("\r\n\r\n", "\r\nX-Slow: "), 0, 50);
    const held = (performance.now() - t0) / 1000;
    check(held < 10, `a slow head held ${held.toFixed(1)} s with --header-timeout 2`);
    return `413 over 100 bytes; a slow head cut after ${held.toFixed(1)} s (${a})`;
  } finally {
    await stopChild(s.p);
  }
});
kase("server limits", "40 slow unauthenticated connections do not starve a real client", 120, async () => {
  const token = randomBytes(8).toString("hex");
  const s = await startChild(
    process.execPath,
    [ERL, "engine", "serve", "--port", "0"],
    /engine serving at (http:\/\/\S+)/,
    {
      ERL_ENGINE_TOKEN: token,
      ERL_ENGINE_THREADS: "1",
    },
  );
  const socks: net.Socket[] = [];
  try {
    const url = s.m[1]!;
    const port = Number(new URL(url).port);
    for (let i = 0; i < 40; i++) {
      const sock = net.connect(port, "127.0.0.1");
      sock.on("error", () => undefined);
      sock.on("connect", () => sock.write("POST /v1/call HTTP/1.1\r\nHost: x\r\n"));
      socks.push(sock);
    }
    // Until they hold the server's slots (its listen queue may take a few SYN retries to drain).
    const t1 = performance.now();
    while (socks.filter((x) => x.readyState === "open").length < 40 && performance.now() - t1 < 15_000)
      await sleep(100);
    await sleep(500);
    const answers: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) {
      const r = await fetch(`${url}/v1/health`, { headers: { Authorization: `Bearer ${token}` } });
      answers.push(r.status);
      // The attacker reconnects at once.
      const sock = net.connect(port, "127.0.0.1");
      sock.on("error", () => undefined);
      sock.on("connect", () => sock.write("GET /v1/health HTTP/1.1\r\n"));
      socks.push(sock);
    }
    const ms = (performance.now() - t0) / 5;
    check(
      answers.every((a) => a === 200),
      `the real client got ${answers.join(", ")}`,
    );
    return `5 of 5 answered 200 (mean ${ms.toFixed(0)} ms) with 40+ slow connections open`;
  } finally {
    for (const sock of socks) sock.destroy();
    await stopChild(s.p);
  }
});
kase("server limits", "the dashboard over a metrics.jsonl ending in a 200 MB line", 90, async () => {
  const root = fresh("dash-big");
  const run = join(root, "run");
  mkdirSync(run, { recursive: true });
  writeFileSync(
    join(run, "config.json"),
    JSON.stringify({ env: "frozenlake", algo: { name: "erl" }, steps: 2 }),
  );
  writeFileSync(join(run, "status.json"), JSON.stringify({ state: "running", step: 1, totalSteps: 2 }));
  const fd = fs.openSync(join(run, "metrics.jsonl"), "w");
  fs.writeSync(fd, '{"kind":"train","step":1,"time":1,"reward/first":0.5}\n{"kind":"train","step":2,"pad":"');
  const mb = Buffer.alloc(1 << 20, 97);
  for (let i = 0; i < 200; i++) fs.writeSync(fd, mb);
  fs.closeSync(fd);
  const s = await startChild(
    process.execPath,
    [ERL, "dashboard", root, "--port", "0"],
    /open (http:\/\/\S+?)\s/,
  );
  try {
    const url = s.m[1]!.replace(/\/$/, "");
    const base = rssMB(s.p.pid!);
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const r = await fetch(`${url}/api/runs`);
      check(r.status === 200, `/api/runs answered ${r.status}`);
      await r.text();
      times.push(performance.now() - t0);
    }
    const grew = rssMB(s.p.pid!) - base;
    check(
      times[1]! < 1000 && times[2]! < 1000,
      `later /api/runs took ${times.map((t) => t.toFixed(0)).join(", ")} ms`,
    );
    check(grew < 100, `RSS grew ${grew.toFixed(0)} MB`);
    return `/api/runs ${times.map((t) => t.toFixed(0)).join(", ")} ms; RSS +${grew.toFixed(0)} MB`;
  } finally {
    await stopChild(s.p);
  }
});

// The scripts' arguments: unknown flags and a missing output folder are errors; nothing is written
// outside the folder given.
const scriptCases: [string, string[], RegExp][] = [
  ["bash bench/gpu-check.sh --dry-run", ["bash", "bench/gpu-check.sh", "--dry-run"], /OUT_DIR/],
  [
    "bash bench/gpu-check.sh OUT --bogus",
    ["bash", "bench/gpu-check.sh", "<out>", "--bogus"],
    /unknown option --bogus/,
  ],
  ["bash bench/reflectors.sh --bogus", ["bash", "bench/reflectors.sh", "--bogus"], /unknown option --bogus/],
  [
    "bash bench/smollm2-baseline.sh nowhere paper",
    ["bash", "bench/smollm2-baseline.sh", "nowhere", "paper"],
    /env must be one of/,
  ],
  [
    "node bench/step.ts --steps abc",
    [process.execPath, "--import", "tsx", "bench/step.ts", "--steps", "abc"],
    /--steps must be an integer/,
  ],
  [
    "node bench/dashboard.ts --bogus",
    [process.execPath, "--import", "tsx", "bench/dashboard.ts", "--bogus"],
    /Unknown option '--bogus'/,
  ],
  [
    "python bench/engine_bench.py --repeats -1",
    [PYTHON, "bench/engine_bench.py", "--repeats", "-1"],
    /--repeats: .*-1/,
  ],
  [
    "bash scripts/gpu/hotpotqa-smol-compare.sh run",
    ["bash", "scripts/gpu/hotpotqa-smol-compare.sh", "run"],
    /OUT_DIR/,
  ],
];
for (const [name, argv, re] of scriptCases)
  kase("scripts", name, 60, async () => {
    const cwd = fresh("script");
    mkdirSync(cwd);
    const out = join(cwd, "out");
    const rootFiles = ["/log.txt", "/summary.md"].filter((f) => !existsSync(f));
    const args = argv.map((a) => (a === "<out>" ? out : a));
    const r = await runProc(args[0]!, args.slice(1), { limitMs: 40_000 });
    check(r.code !== 0 && r.code !== null, `exit ${r.code} (${r.signal}):\n${r.out.slice(-600)}`);
    check(!/\n\s+at \S+ \(|Traceback/.test(r.out), `a stack trace:\n${r.out}`);
    check(re.test(r.out), `expected ${re} in:\n${r.out.slice(-600)}`);
    const stray = rootFiles.filter((f) => existsSync(f));
    check(stray.length === 0, `wrote ${stray.join(", ")}`);
    check(!existsSync(out) || readdirSync(out).length === 0, `wrote into ${out}`);
    return r.out.trim().split("\n")[0]!.slice(0, 100);
  });

// ---------------------------------------------------------------------------------------------
// Run everything

// `npm run faults -- <text>` runs only the cases whose group or name contains the text.
const only = process.argv.slice(2);
if (only.length > 0) {
  const keep = cases.filter((c) => only.some((o) => `${c.group}: ${c.name}`.includes(o)));
  cases.splice(0, cases.length, ...keep);
}
const t0 = performance.now();
console.log(`fault-injection suite: ${cases.length} cases, seed ${SEED}, work dir ${WORK}`);
const rows: [string, string, string, string, string][] = [];
let passed = 0;
let failed = 0;
for (const [i, c] of cases.entries()) {
  const ts = performance.now();
  let ok = false;
  let detail: string;
  try {
    detail = await Promise.race([
      c.run(),
      sleep(c.limitS * 1000).then(() => {
        throw new Error(`over its ${c.limitS} s limit`);
      }),
    ]);
    ok = true;
  } catch (e) {
    detail = (e instanceof Error ? e.message : String(e)).split("\n").slice(0, 6).join(" | ");
  }
  if (ok) passed++;
  else failed++;
  const s = ((performance.now() - ts) / 1000).toFixed(1);
  rows.push([
    String(i + 1),
    c.group,
    c.name,
    ok ? "PASS" : "FAIL",
    `${detail.replace(/\s+/g, " ").slice(0, 160)} (${s} s)`,
  ]);
  process.stderr.write(
    `${ok ? "PASS" : "FAIL"} ${c.group}: ${c.name} (${s} s)${ok ? "" : `\n  ${detail}`}\n`,
  );
}
// (Assigned inside the cases; TypeScript's flow analysis does not see that.)
await (engine as { close(): Promise<void> } | null)?.close().catch(() => undefined);
(server as { p: ChildProcess } | null)?.p.kill("SIGKILL");

const widths = [0, 1, 2, 3].map((k) => Math.max(...rows.map((r) => r[k]!.length), 5));
const line = (r: string[]): string =>
  `| ${r.map((x, k) => (k < 4 ? x.padEnd(widths[k]!) : x)).join(" | ")} |`;
console.log("\n" + line(["#", "group", "case", "outcome", "detail"]));
console.log(line(widths.map((w) => "-".repeat(w)).concat(["---"])));
for (const r of rows) console.log(line(r));
console.log("\nfigures:");
for (const f of figures) console.log(`  ${f}`);
console.log(`  malformed inputs checked: ${MALFORMED_COUNT}`);
console.log(`  kill -9 resumes: ${cases.filter((c) => c.group === "kill -9").length}`);
console.log(`  total time ${((performance.now() - t0) / 1000).toFixed(0)} s, seed ${SEED}`);
if (failed === 0) rmSync(WORK, { recursive: true, force: true });
else console.log(`  work dir kept for inspection: ${WORK}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
