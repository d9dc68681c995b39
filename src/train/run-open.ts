/**
 * Opening a run, before its first step: the run directory's writer lock, the "already finished"
 * check of a resume, the environment and its tasks, the engine with the model loaded, the newest
 * whole checkpoint, and the run state restored from it (RNG, data cursor, memory, counters, clock).
 *
 * Every size is checked against its limit first (src/train/limits.ts): a run refused there leaves no
 * directory. A new run's config.json is written before the engine loads the model, so a run killed
 * meanwhile is resumable; a model that does not load or an engine that cannot be reached leaves a
 * new run no directory (its files are removed again), and a resumed one as it was (a repaired
 * engine.url or model.path reaches config.json only once the engine has loaded the model).
 */
import { mkdirSync, rmSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import type { Engine } from "../engine/api.ts";
import { EngineError } from "../engine/protocol.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import { createMemory, RulebookMemory } from "../algo/memory.ts";
import { makeDirs } from "../util/dirs.ts";
import { inputError, systemUserError, UserError } from "../util/errors.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";
import { Rng } from "../util/rng.ts";
import type { Algorithm, StepOptions } from "./algorithms/types.ts";
import { checkpointCandidates, readCheckpointDir, type RunCheckpoint } from "./checkpoint.ts";
import { envOptions, type RunConfig } from "./config.ts";
import { TaskCursor } from "./data.ts";
import type { TrainDeps } from "./deps.ts";
import { Progress } from "./progress.ts";
import { JSONL_FILES, RunFiles } from "./runfiles.ts";
import { RunLock } from "./runlock.ts";
import { checkRunLimits, readModelShape } from "./limits.ts";

export interface RunOptions {
  config: RunConfig;
  runDir: string;
  /** Continue the run in `runDir` from its newest checkpoint. */
  resume: boolean;
  /** Take over the run's writer lock even when its holder cannot be shown to be gone. */
  breakLock?: boolean;
  deps: TrainDeps;
  progress?: Progress;
  /** Seconds clock (monotonic); injectable for tests. */
  clock?: () => number;
}

export interface RunSummary {
  runDir: string;
  steps: number;
  state: "finished";
  elapsed: number;
  finalEval: { reward: number; passAt1: number; n: number } | null;
  resumedFrom: number | null;
  alreadyFinished: boolean;
}

/** An opened run: its files (lock held), parts, and the state its next step starts from. */
export interface OpenedRun {
  cfg: RunConfig;
  files: RunFiles;
  lock: RunLock;
  progress: Progress;
  algo: Algorithm;
  stepOptions: StepOptions;
  env: EnvFamily;
  evalTasks: Task[];
  /** null when the policy is an API (an algorithm that trains nothing). */
  engine: Engine | null;
  /** The checkpoint resumed from, if any. */
  ckpt: RunCheckpoint | null;
  startStep: number;
  rng: Rng;
  cursor: TaskCursor;
  memory: RulebookMemory;
  counters: Record<string, number>;
  /** Run time (seconds) before this process, from the checkpoint. */
  elapsedBefore: number;
}

/** The run name used when the config does not give one. */
export function defaultRunName(cfg: RunConfig, date = new Date()): string {
  const stamp = date.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  return `${cfg.env}-${cfg.algo.name}-seed${cfg.seed}-${stamp}`;
}

export function runDirFor(cfg: RunConfig, date = new Date()): string {
  if (cfg.name !== null) checkRunName(cfg.name);
  return resolve(cfg.runsDir, cfg.name ?? defaultRunName(cfg, date));
}

/** A run name is one directory name inside `runsDir`: no path separators, not "." or "..". */
export function checkRunName(name: string): void {
  if (name === "." || name === ".." || /[/\\\0]/.test(name) || name.trim() !== name || name === "")
    throw inputError(
      { key: "name" },
      `${JSON.stringify(name)} is not a run name: it must be a single folder name inside runsDir (no "/", "\\", "." or "..")`,
    );
}

/** A run directory with its writer lock held: `createdDir` when this process created it. */
export interface LockedRunDir {
  files: RunFiles;
  lock: RunLock;
  createdDir: boolean;
}

/**
 * Takes a run directory's writer lock: a new run's directory is created first (and must not exist),
 * a resumed one must hold a config.json. One writer per run, for `erl train` and `erl sft` alike.
 */
export function lockRunDir(opts: {
  runDir: string;
  resume: boolean;
  breakLock?: boolean;
  /** The command that resumes it, for messages ("erl train"). */
  command: string;
}): LockedRunDir {
  const files = new RunFiles(opts.runDir);
  let createdDir = false;
  const alreadyExists = (): UserError =>
    new UserError(
      `${opts.runDir} already exists; continue it with ${opts.command} --resume ${opts.runDir} or pick another run name`,
    );
  if (opts.resume) {
    if (!files.exists()) throw new UserError(`--resume ${opts.runDir}: not a run directory (no config.json)`);
  } else {
    if (files.exists()) throw alreadyExists();
    try {
      makeDirs(dirname(opts.runDir));
      mkdirSync(opts.runDir);
      createdDir = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST")
        throw systemUserError(e, "cannot create the run directory") ?? e;
    }
  }
  // One writer: the lock is taken before anything in the directory is read or written.
  const lock = RunLock.acquire(opts.runDir, { breakLock: opts.breakLock ?? false });
  // Another process may have created the run between the check above and the lock.
  if (!opts.resume && files.exists()) {
    lock.release();
    throw alreadyExists();
  }
  return { files, lock, createdDir };
}

/**
 * Takes the run directory's lock (creating a new run's directory first) and opens the run; returns
 * the summary instead when a resumed run had already finished. The caller releases `lock`.
 */
export async function openRun(opts: RunOptions): Promise<OpenedRun | RunSummary> {
  const { files, lock, createdDir } = lockRunDir({ ...opts, command: "erl train" });
  try {
    const opened = await openLocked(opts, files, lock, createdDir);
    if (!("files" in opened)) lock.release();
    return opened;
  } catch (e) {
    lock.release();
    // Refused before its files were written (a size over its limit): no directory is left behind.
    if (createdDir && !files.exists()) rmSync(opts.runDir, { recursive: true, force: true });
    throw e;
  }
}

async function openLocked(
  opts: RunOptions,
  files: RunFiles,
  lock: RunLock,
  createdDir: boolean,
): Promise<OpenedRun | RunSummary> {
  const { config: cfg, deps } = opts;
  const progress = opts.progress ?? new Progress();
  let candidates: string[] = [];
  if (opts.resume) {
    const status = files.readStatus();
    candidates = checkpointCandidates(files.checkpointsDir);
    const newest = readQuiet(candidates[0]);
    if (status?.state === "finished" && newest && newest.state.step === status.step) {
      progress.line(`${opts.runDir}: already finished (${newest.state.step} steps)`);
      return {
        runDir: opts.runDir,
        steps: newest.state.step,
        state: "finished",
        elapsed: newest.state.elapsed,
        finalEval: lastEval(files),
        resumedFrom: newest.state.step,
        alreadyFinished: true,
      };
    }
  }

  const env = await deps.getEnv(cfg.env, envOptions(cfg));
  const trainTasks = env.loadSplit("train");
  const evalTasks = env.loadSplit(cfg.data.evalSplit).slice(0, cfg.data.evalTasks ?? undefined);
  if (trainTasks.length === 0) throw new UserError(`${cfg.env}: the train split is empty`);
  const algo = await deps.algorithm(cfg.algo.name);
  // Every size within its limit before anything is written or loaded (src/train/limits.ts).
  checkRunLimits(cfg, {
    shape: cfg.policy.kind === "engine" ? readModelShape(resolve(cfg.model.path)) : null,
    evalSplitTasks: evalTasks.length,
    where: opts.resume ? { file: files.configFile } : {},
  });
  // A new run's config.json before the model loads: a run killed meanwhile is resumable.
  if (!opts.resume) files.create(cfg);

  // The engine before the run's records. An API policy (only for an algorithm that trains nothing)
  // needs none, and the checkpoints of such an algorithm hold no weights.
  let engine: Engine | null = null;
  let ckpt: { dir: string; state: RunCheckpoint } | null = null;
  try {
    if (cfg.policy.kind === "engine") {
      progress.line(`starting the engine and loading ${cfg.model.path}`);
      engine = await deps.startEngine(cfg, resolve(cfg.model.path));
    }
    ckpt = await pickCheckpoint(algo.trains ? engine : null, candidates, files, progress);
  } catch (e) {
    if (engine) await engine.close().catch(() => undefined);
    const msg = e instanceof Error ? e.message : String(e);
    if (!opts.resume) {
      lock.release();
      if (createdDir) rmSync(opts.runDir, { recursive: true, force: true });
      else files.remove();
      throw new UserError(
        `${msg}\n(nothing was written for ${opts.runDir}; fix this and run the same command again)`,
      );
    }
    try {
      files.writeStatus({
        state: "failed",
        step: files.readStatus()?.step ?? 0,
        totalSteps: cfg.steps,
        error: msg,
      });
    } catch {
      /* the status is informational; the checkpoint decides where a resume starts */
    }
    throw new UserError(
      `${msg}\n(the run directory is unchanged; continue with: erl train --resume ${opts.runDir}` +
        ` — add --set engine.url=..., engine.python=... or model.path=... if one of them was wrong)`,
    );
  }

  // `--resume --set engine.url=...` (or model.path, engine.python): the run keeps the repair, once
  // the engine has loaded the model with it (a failed repair leaves config.json as it was).
  if (opts.resume && JSON.stringify(files.readConfig()) !== JSON.stringify(cfg)) files.writeConfig(cfg);
  if (ckpt) files.truncateTo(ckpt.state.offsets);
  else if (opts.resume) files.truncateTo({ metrics: 0, rollouts: 0, memory: 0 });

  const state = ckpt?.state ?? null;
  const stepOptions = algo.options(cfg);
  return {
    cfg,
    files,
    lock,
    progress,
    algo,
    stepOptions,
    env,
    evalTasks,
    engine,
    ckpt: state,
    startStep: state?.step ?? 0,
    rng: state ? Rng.fromState(state.rng) : new Rng(cfg.seed),
    cursor: new TaskCursor(trainTasks, cfg.seed, cfg.data.shuffle, cfg.data.trainTasks, state?.cursor),
    // An algorithm without memory keeps an empty global one: nothing writes it.
    memory: state?.memory
      ? RulebookMemory.fromJSON(state.memory)
      : createMemory(stepOptions.memory ?? { kind: "global" }),
    counters: { ...(state?.counters ?? {}) },
    elapsedBefore: state?.elapsed ?? 0,
  };
}

/** A checkpoint's state if it reads, else null (for the cheap "already finished" check). */
function readQuiet(dir: string | undefined): { dir: string; state: RunCheckpoint } | null {
  if (!dir) return null;
  try {
    return readCheckpointDir(dir);
  } catch {
    return null;
  }
}

/**
 * The newest checkpoint that is whole: its run state reads, the run files are at least as long as
 * it records, and the engine accepts its state (the engine verifies checksums before it changes
 * anything). A damaged one is reported and the previous one tried.
 */
export async function pickCheckpoint(
  engine: Engine | null,
  candidates: readonly string[],
  files: RunFiles,
  progress: Progress,
): Promise<{ dir: string; state: RunCheckpoint } | null> {
  const rejected: string[] = [];
  for (const dir of candidates) {
    try {
      const c = readCheckpointDir(dir);
      const sizes = files.offsets();
      for (const n of JSONL_FILES)
        if (sizes[n] < c.state.offsets[n])
          throw new UserError(
            `${files.path(n)}: ${sizes[n]} bytes, shorter than the checkpoint's ${c.state.offsets[n]}`,
          );
      if (engine) await engine.loadState(resolve(dir, "engine"));
      if (rejected.length > 0) progress.line(`resuming from the intact checkpoint ${basename(dir)}`);
      return c;
    } catch (e) {
      const dead = e instanceof EngineError && ["engine_exited", "unreachable"].includes(e.code);
      if (!(e instanceof UserError) || dead) throw e;
      rejected.push(`${basename(dir)}: ${e.message}`);
      progress.line(`checkpoint ${basename(dir)} is damaged (${e.message}); trying the one before it`);
    }
  }
  if (rejected.length > 0)
    throw new UserError(
      `${files.checkpointsDir}: no usable checkpoint; the run directory is damaged:\n  ${rejected.join("\n  ")}`,
    );
  return null;
}

/** The last eval record of a run, if any. */
function lastEval(files: RunFiles): RunSummary["finalEval"] {
  const recs =
    files.offsets().metrics > 0 ? readJsonlTolerant<Record<string, unknown>>(files.path("metrics")) : [];
  for (let i = recs.length - 1; i >= 0; i--) {
    const r = recs[i]!;
    if (r.kind === "eval")
      return { reward: Number(r["eval/reward"]), passAt1: Number(r["eval/pass@1"]), n: Number(r["eval/n"]) };
  }
  return null;
}
