/**
 * A training run from start (or resume) to finish: starts the engine and loads the model, then for
 * each step takes the next tasks, runs the algorithm's step (rollouts, reflection, memory, samples),
 * trains on the samples, evaluates when due, appends the run files and checkpoints when due.
 *
 * Crash safety: the JSONL files are only ever appended, and a checkpoint records their byte sizes.
 * Resuming loads the newest complete checkpoint, cuts the files back to those sizes and redoes the
 * steps after it with the restored RNG, data cursor, memory and engine state — so after a `kill -9`
 * at any moment the finished run has every step exactly once. status.json is replaced atomically.
 */
import { mkdirSync, rmSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import type { Engine, EngineInfo } from "../engine/api.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import type { EnvOptions } from "../envs/registry.ts";
import type {
  AlgoContext,
  ErlStepFn,
  EvaluateFn,
  ModelBackend,
  ProgressEvent,
  RlvrStepFn,
  StepResult,
  TrainOnSamplesFn,
} from "../algo/types.ts";
import { createMemory, RulebookMemory } from "../algo/memory.ts";
import { Rng } from "../util/rng.ts";
import { inputError, systemUserError, UserError } from "../util/errors.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";
import {
  envOptions,
  erlOptionsFrom,
  evalOptionsFrom,
  learnerConfigFrom,
  optimConfigFrom,
  rlvrOptionsFrom,
  type RunConfig,
} from "./config.ts";
import {
  checkpointCandidates,
  readCheckpointDir,
  writeCheckpoint,
  type RunCheckpoint,
  CHECKPOINT_VERSION,
} from "./checkpoint.ts";
import { TaskCursor } from "./data.ts";
import { JSONL_FILES, RunFiles, type RunState } from "./runfiles.ts";
import { RunLock } from "./runlock.ts";
import { EngineError } from "../engine/protocol.ts";
import { evalSummary, Progress, stepSummary } from "./progress.ts";
import { apiBackendFor, reflectorFor } from "./deps.ts";
import { usageMetrics, type ApiUsage, type OpenAIBackend } from "../agent/openai-backend.ts";
import { makeDirs } from "../util/dirs.ts";
import { checkRunLimits, readModelShape } from "./limits.ts";

export interface Algorithms {
  erlStep: ErlStepFn;
  rlvrStep: RlvrStepFn;
  trainOnSamples: TrainOnSamplesFn;
  evaluate: EvaluateFn;
}

/** What a run needs from the rest of the system; tests substitute their own. */
export interface TrainDeps {
  /** Starts an engine with the run's model loaded (the model path is already checked). */
  startEngine(config: RunConfig, modelPath: string): Promise<Engine>;
  makeBackend(engine: Engine): Promise<ModelBackend>;
  algorithms(): Promise<Algorithms>;
  /** The environment family by name, with the run's options for it (config.ts `envOptions`). */
  getEnv(name: string, opts?: EnvOptions): EnvFamily | Promise<EnvFamily>;
}

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

// ---------------------------------------------------------------------------------------------
// The run

/** What the engine chose, for the progress output: device and dtype, threads, each with its reason. */
export function engineSummary(info: EngineInfo): string[] {
  const cpu = info.cpu
    ? ` on ${info.cpu.model}${info.cpu.flags.length ? ` (${info.cpu.flags.join(", ")})` : ""}`
    : "";
  const lines = [
    `engine: ${info.device}${cpu}, ${info.dtype}${info.dtypeReason ? ` (${info.dtypeReason})` : ""}`,
  ];
  if (info.threads !== undefined)
    lines.push(
      `engine: ${info.threads} thread${info.threads === 1 ? "" : "s"}${info.threadsReason ? ` (${info.threadsReason})` : ""}`,
    );
  return lines;
}

export async function runTraining(opts: RunOptions): Promise<RunSummary> {
  const files = new RunFiles(opts.runDir);
  // --- one writer: the run directory's lock is taken before anything in it is read or written
  let createdDir = false;
  const alreadyExists = (): UserError =>
    new UserError(
      `${opts.runDir} already exists; continue it with --resume ${opts.runDir} or pick another run name`,
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
  const lock = RunLock.acquire(opts.runDir, { breakLock: opts.breakLock ?? false });
  try {
    // Another process may have created the run between the check above and the lock.
    if (!opts.resume && files.exists()) throw alreadyExists();
    return await runLocked(opts, files, lock, createdDir);
  } catch (e) {
    // Refused before its files were written (a size over its limit): no directory is left behind.
    if (createdDir && !files.exists()) {
      lock.release();
      rmSync(opts.runDir, { recursive: true, force: true });
    }
    throw e;
  } finally {
    lock.release();
  }
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
async function pickCheckpoint(
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

async function runLocked(
  opts: RunOptions,
  files: RunFiles,
  lock: RunLock,
  createdDir: boolean,
): Promise<RunSummary> {
  const { config: cfg, deps } = opts;
  const clock = opts.clock ?? (() => performance.now() / 1000);
  const progress = opts.progress ?? new Progress();

  // --- starting state (before any expensive work)
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
  // Every size within its limit before anything is written or loaded (src/train/limits.ts).
  checkRunLimits(cfg, {
    shape: cfg.policy.kind === "engine" ? readModelShape(resolve(cfg.model.path)) : null,
    evalSplitTasks: evalTasks.length,
    where: opts.resume ? { file: files.configFile } : {},
  });
  // A new run's config.json before the model loads: a run killed meanwhile is resumable.
  if (!opts.resume) files.create(cfg);

  // --- the engine before the run's records: a model that does not load or an engine that cannot be
  // reached leaves a new run no directory (its config.json is removed again), and a resumed one as it was.
  // An API policy (erl-icl only) needs no engine.
  const icl = cfg.algo.name === "erl-icl";
  let engine: Engine | null = null;
  let ckpt: { dir: string; state: RunCheckpoint } | null = null;
  try {
    if (cfg.policy.kind === "engine") {
      progress.line(`starting the engine and loading ${cfg.model.path}`);
      engine = await deps.startEngine(cfg, resolve(cfg.model.path));
    }
    // erl-icl checkpoints hold no weights: the engine keeps the base model.
    ckpt = await pickCheckpoint(icl ? null : engine, candidates, files, progress);
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

  const startStep = ckpt?.state.step ?? 0;
  const rng = ckpt ? Rng.fromState(ckpt.state.rng) : new Rng(cfg.seed);
  const cursor = new TaskCursor(
    trainTasks,
    cfg.seed,
    cfg.data.shuffle,
    cfg.data.trainTasks,
    ckpt?.state.cursor,
  );
  const erlOpts = erlOptionsFrom(cfg);
  const memory = ckpt?.state.memory
    ? RulebookMemory.fromJSON(ckpt.state.memory)
    : createMemory(erlOpts.memory);
  const counters: Record<string, number> = { ...(ckpt?.state.counters ?? {}) };
  const elapsedBefore = ckpt?.state.elapsed ?? 0;
  const t0 = clock();
  const elapsed = (): number => elapsedBefore + (clock() - t0);

  const status = (state: RunState, step: number, error?: string): void =>
    files.writeStatus({ state, step, totalSteps: cfg.steps, pid: process.pid, ...(error ? { error } : {}) });
  status("running", startStep);
  progress.line(
    ckpt
      ? `resuming ${opts.runDir} after step ${startStep}/${cfg.steps}`
      : opts.resume
        ? `restarting ${opts.runDir} from the beginning (no checkpoint yet)`
        : `run ${opts.runDir}`,
  );

  let step = startStep;
  let finalEval: RunSummary["finalEval"] = null;
  let finishedAt = startStep;
  let checkpointed = startStep;
  // Ctrl-C (or a polite kill): say so in status.json and how to go on, then exit. Files are appended
  // whole and checkpoints written atomically, so the directory is consistent at any instant;
  // --resume rolls back to the last checkpoint.
  const onSignal = (signal: NodeJS.Signals): void => {
    status("stopped", finishedAt, `interrupted by ${signal} during step ${finishedAt + 1}`);
    progress.clear();
    process.stderr.write(
      `\n${signal}: ${opts.runDir} stopped after step ${finishedAt}/${cfg.steps} (last checkpoint: step ${checkpointed}); continue with: erl train --resume ${opts.runDir}\n`,
    );
    lock.release();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  // erl-icl trains nothing: the engine's weights stay the base model's and the memory is the artifact.
  try {
    let model: ModelBackend;
    let apiPolicy: OpenAIBackend | undefined;
    if (engine === null) {
      apiPolicy = await apiBackendFor("policy", cfg.policy);
      progress.line(`policy: ${apiPolicy.label} at ${cfg.policy.baseUrl}`);
      model = apiPolicy;
    } else {
      const info = await engine.info();
      files.recordEngine(startStep, info);
      for (const line of engineSummary(info)) progress.line(line);
      model = await deps.makeBackend(engine);
    }
    const reflector = await reflectorFor(cfg);
    if (reflector) progress.line(`reflector: ${reflector.label} at ${cfg.reflector.baseUrl}`);
    const algos = await deps.algorithms();
    const evalOpts = evalOptionsFrom(cfg);

    const onProgress = (e: ProgressEvent): void => progress.update(`  ${e.phase}`, e.done, e.total, e.note);

    const runEval = async (atStep: number): Promise<void> => {
      const te = clock();
      // A separate stream per evaluation, so the cadence of evaluation never changes training.
      const evalRng = () => new Rng(`${cfg.seed}/eval/${atStep}`);
      // erl-icl evaluates first attempts under its memory's rulebook, and next to it (same seeds)
      // under the initial prompt; other algorithms evaluate under the initial prompt only.
      const rulebook = icl ? memory.read(0) : null;
      const res = await algos.evaluate(
        { env, model, rng: evalRng(), step: atStep, onProgress },
        evalTasks,
        rulebook !== null ? { ...evalOpts, system: rulebook } : evalOpts,
      );
      const record: Record<string, number | string> = {
        kind: "eval",
        step: atStep,
        time: elapsed(),
        "eval/reward": res.reward,
        "eval/pass@1": res.passAt1,
        "eval/pass@n": res.passAtN,
        "eval/n": res.n,
        "eval/split": cfg.data.evalSplit,
      };
      if (icl) {
        const base =
          rulebook === null
            ? res
            : await algos.evaluate(
                { env, model, rng: evalRng(), step: atStep, onProgress },
                evalTasks,
                evalOpts,
              );
        record["eval/initial_reward"] = base.reward;
        record["eval/initial_pass@1"] = base.passAt1;
        record["eval/memory"] = rulebook === null ? 0 : 1;
      }
      record["time/eval"] = clock() - te;
      files.append("rollouts", res.rollouts);
      files.append("metrics", [record]);
      progress.line(evalSummary(atStep, record));
      finalEval = { reward: res.reward, passAt1: res.passAt1, n: res.n };
    };

    if (startStep === 0 && cfg.eval.initial) await runEval(0);

    const alreadyDone = ckpt?.state.final === true;
    for (step = startStep + 1; step <= cfg.steps && !alreadyDone; step++) {
      const ts = clock();
      const tasks: Task[] = cursor.next(cfg.batchSize);
      const ctx: AlgoContext = {
        env,
        model,
        memory, // read-only to the step; applied below (the runner is memory's only writer)
        rng,
        step,
        onProgress,
        ...(reflector ? { reflector } : {}),
      };
      const usageBefore: [ApiUsage | null, ApiUsage | null] = [
        reflector ? { ...reflector.usage } : null,
        apiPolicy ? { ...apiPolicy.usage } : null,
      ];
      const result: StepResult =
        cfg.algo.name === "rlvr"
          ? await algos.rlvrStep(ctx, tasks, rlvrOptionsFrom(cfg))
          : await algos.erlStep(ctx, tasks, erlOpts);
      const tt = clock();
      let trainMetrics: Record<string, number> = {};
      if (!icl) {
        progress.update("  train", 0, 1);
        trainMetrics = await algos.trainOnSamples(
          engine!,
          result.samples,
          learnerConfigFrom(cfg),
          optimConfigFrom(cfg),
          new Rng(`${cfg.seed}/minibatches/${step}`),
        );
        progress.update("  train", 1, 1);
      }
      const trainTime = clock() - tt;
      if (reflector)
        Object.assign(
          trainMetrics,
          usageMetrics("reflector", usageBefore[0]!, reflector.usage, reflector.priced),
        );
      if (apiPolicy)
        Object.assign(
          trainMetrics,
          usageMetrics("policy", usageBefore[1]!, apiPolicy.usage, apiPolicy.priced),
        );
      memory.apply(result.memoryWrites);
      counters["memory/total"] = (counters["memory/total"] ?? 0) + result.memoryWrites.length;

      const m: Record<string, number> = { ...result.metrics, ...trainMetrics };
      const stepTime = clock() - ts;
      m["time/train"] = trainTime;
      m["time/step"] = stepTime;
      m["time/other"] = Math.max(0, stepTime - trainTime - (m["time/sample"] ?? 0) - (m["time/env"] ?? 0));
      if (cfg.algo.name !== "rlvr" && m["memory/updates"] === undefined)
        m["memory/updates"] = result.memoryWrites.length;
      if (m["tokens/sampled"] !== undefined && m["time/sample"])
        m["tokens_per_s"] = m["tokens/sampled"] / m["time/sample"];

      files.append("rollouts", result.rollouts);
      files.append("memory", result.memoryWrites);
      files.append("metrics", [{ kind: "train", step, time: elapsed(), ...m }]);
      progress.line(stepSummary(step, cfg.steps, m));

      const last = step === cfg.steps || (cfg.timeBudget !== null && elapsed() >= cfg.timeBudget);
      if ((cfg.eval.every > 0 && step % cfg.eval.every === 0) || (last && cfg.eval.final))
        await runEval(step);

      if (step % cfg.checkpoint.every === 0 || last) {
        const eng = engine;
        await writeCheckpoint(
          files.checkpointsDir,
          {
            version: CHECKPOINT_VERSION,
            step,
            elapsed: elapsed(),
            rng: rng.state(),
            cursor: cursor.save(),
            memory: memory.toJSON(),
            offsets: files.offsets(),
            counters,
            final: last,
          },
          // erl-icl changes no weight: its checkpoints hold the run state (memory included) only.
          icl || !eng ? (dir) => Promise.resolve(void mkdirSync(dir)) : (dir) => eng.saveState(dir),
          cfg.checkpoint.keep,
        );
        checkpointed = step;
      }
      finishedAt = step;
      if (last) break;
      status("running", step);
    }
    status("finished", finishedAt);
  } catch (e) {
    // A full or read-only disk is named as such (path, cause, code), not as a bug.
    const sys = e instanceof UserError ? null : systemUserError(e);
    const msg = sys ? sys.message : e instanceof Error ? e.message : String(e);
    const done = Math.max(startStep, step - 1);
    let statusNote = "";
    try {
      status("failed", done, msg);
    } catch (se) {
      // The same full disk usually refuses status.json too: say so rather than hide the first error.
      statusNote = ` (status.json could not be updated either: ${systemUserError(se)?.message ?? String(se)})`;
    }
    progress.clear();
    const hint = `the run directory is consistent; continue with: erl train --resume ${opts.runDir}${statusNote}`;
    if (e instanceof UserError) throw new UserError(`${e.message}\n(${hint})`, e.exitCode);
    const err = new UserError(`training failed during step ${step}: ${msg}\n(${hint})`, 1);
    (err as Error & { cause?: unknown }).cause = e;
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    if (engine) await engine.close().catch(() => undefined);
  }
  return {
    runDir: opts.runDir,
    steps: finishedAt,
    state: "finished",
    elapsed: elapsed(),
    finalEval,
    resumedFrom: ckpt ? startStep : null,
    alreadyFinished: false,
  };
}

/** The last eval record of a run, if any. */
function lastEval(files: RunFiles): RunSummary["finalEval"] {
  const recs = files.offsets().metrics > 0 ? readMetrics(files) : [];
  for (let i = recs.length - 1; i >= 0; i--) {
    const r = recs[i]!;
    if (r.kind === "eval")
      return { reward: Number(r["eval/reward"]), passAt1: Number(r["eval/pass@1"]), n: Number(r["eval/n"]) };
  }
  return null;
}

/** A run's metrics records; a torn last line (a live or killed run) is ignored. */
export function readMetrics(files: RunFiles): Record<string, number | string>[] {
  return readJsonlTolerant(files.path("metrics"));
}
