/**
 * A training run from start (or resume) to finish. `openRun` (run-open.ts) takes the lock, starts
 * the engine and restores the state; then for each step the runner takes the next tasks, runs the
 * algorithm's step (rollouts, reflection, memory, samples), trains on the samples, evaluates when
 * due, appends the run files and checkpoints when due.
 *
 * Crash safety: the JSONL files are only ever appended, and a checkpoint records their byte sizes.
 * Resuming loads the newest complete checkpoint, cuts the files back to those sizes and redoes the
 * steps after it with the restored RNG, data cursor, memory and engine state — so after a `kill -9`
 * at any moment the finished run has every step exactly once. status.json is replaced atomically.
 */
import { mkdirSync } from "node:fs";
import type { EngineInfo } from "../engine/api.ts";
import type { AlgoContext, EvalResult, ModelBackend, ProgressEvent } from "../algo/types.ts";
import { usageMetrics, type ApiUsage, type OpenAIBackend } from "../agent/openai-backend.ts";
import { Rng } from "../util/rng.ts";
import { systemUserError, UserError } from "../util/errors.ts";
import { evalOptionsFrom, learnerConfigFrom, optimConfigFrom } from "./config.ts";
import { CHECKPOINT_VERSION, writeCheckpoint } from "./checkpoint.ts";
import { apiBackendFor, reflectorFor, type Trainer } from "./deps.ts";
import { evalSummary, stepSummary } from "./progress.ts";
import { openRun, type OpenedRun, type RunOptions, type RunSummary } from "./run-open.ts";
import type { RunState } from "./runfiles.ts";
import { startTracker, type Tracker } from "./tracking.ts";

export { checkRunName, defaultRunName, runDirFor, type RunOptions, type RunSummary } from "./run-open.ts";

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

/** The parts a step uses, made once the run is open. */
interface Parts {
  model: ModelBackend;
  apiPolicy?: OpenAIBackend;
  reflector?: OpenAIBackend;
  trainer: Trainer;
  /** TensorBoard / W&B, when the config asks (tracking.ts). */
  tracker: Tracker | null;
}

export async function runTraining(opts: RunOptions): Promise<RunSummary> {
  const run = await openRun(opts);
  if (!("files" in run)) return run; // a resumed run that had already finished
  const { cfg, files, progress, engine, startStep } = run;
  const clock = opts.clock ?? (() => performance.now() / 1000);
  const t0 = clock();
  const elapsed = (): number => run.elapsedBefore + (clock() - t0);
  const status = (state: RunState, step: number, error?: string): void =>
    files.writeStatus({ state, step, totalSteps: cfg.steps, pid: process.pid, ...(error ? { error } : {}) });
  status("running", startStep);
  progress.line(
    run.ckpt
      ? `resuming ${opts.runDir} after step ${startStep}/${cfg.steps}`
      : opts.resume
        ? `restarting ${opts.runDir} from the beginning (no checkpoint yet)`
        : `run ${opts.runDir}`,
  );

  let step = startStep;
  let finishedAt = startStep;
  let checkpointed = startStep;
  let finalEval: RunSummary["finalEval"] = null;
  // Ctrl-C (or a polite kill): say so in status.json and how to go on, then exit. Files are appended
  // whole and checkpoints written atomically, so the directory is consistent at any instant;
  // --resume rolls back to the last checkpoint.
  const onSignal = (signal: NodeJS.Signals): void => {
    status("stopped", finishedAt, `interrupted by ${signal} during step ${finishedAt + 1}`);
    progress.clear();
    process.stderr.write(
      `\n${signal}: ${opts.runDir} stopped after step ${finishedAt}/${cfg.steps} (last checkpoint: step ${checkpointed}); continue with: erl train --resume ${opts.runDir}\n`,
    );
    run.lock.release();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  let parts: Parts | null = null;
  try {
    parts = await makeParts(run, opts);
    if (startStep === 0 && cfg.eval.initial) finalEval = await evaluateAt(run, parts, 0, elapsed, clock);
    for (step = startStep + 1; step <= cfg.steps && run.ckpt?.final !== true; step++) {
      await trainStep(run, parts, step, elapsed, clock);
      const last = step === cfg.steps || (cfg.timeBudget !== null && elapsed() >= cfg.timeBudget);
      if ((cfg.eval.every > 0 && step % cfg.eval.every === 0) || (last && cfg.eval.final))
        finalEval = await evaluateAt(run, parts, step, elapsed, clock);
      if (step % cfg.checkpoint.every === 0 || last) {
        await checkpoint(run, step, elapsed(), last);
        checkpointed = step;
      }
      finishedAt = step;
      if (last) break;
      status("running", step);
    }
    status("finished", finishedAt);
  } catch (e) {
    throw failed(e, Math.max(startStep, step - 1), step, opts.runDir, status, progress.clear.bind(progress));
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await parts?.tracker?.close();
    if (engine) await engine.close().catch(() => undefined);
    run.lock.release();
  }
  return {
    runDir: opts.runDir,
    steps: finishedAt,
    state: "finished",
    elapsed: elapsed(),
    finalEval,
    resumedFrom: run.ckpt ? startStep : null,
    alreadyFinished: false,
  };
}

/** The policy (the engine's model, or an API), the reflector if the config names one, the trainer. */
async function makeParts(run: OpenedRun, opts: RunOptions): Promise<Parts> {
  const { cfg, engine, progress, files } = run;
  let model: ModelBackend;
  let apiPolicy: OpenAIBackend | undefined;
  if (engine === null) {
    apiPolicy = await apiBackendFor("policy", cfg.policy);
    progress.line(`policy: ${apiPolicy.label} at ${cfg.policy.baseUrl}`);
    model = apiPolicy;
  } else {
    const info = await engine.info();
    files.recordEngine(run.startStep, info);
    for (const line of engineSummary(info)) progress.line(line);
    model = await opts.deps.makeBackend(engine);
  }
  const reflector = await reflectorFor(cfg);
  if (reflector) progress.line(`reflector: ${reflector.label} at ${cfg.reflector.baseUrl}`);
  return {
    model,
    ...(apiPolicy ? { apiPolicy } : {}),
    ...(reflector ? { reflector } : {}),
    trainer: await opts.deps.trainer(),
    tracker: await startTracker(cfg, files.dir, (line) => progress.line(line)),
  };
}

const progressOf =
  (run: OpenedRun) =>
  (e: ProgressEvent): void =>
    run.progress.update(`  ${e.phase}`, e.done, e.total, e.note);

/** One training step: the algorithm's step, training on its samples, memory, records. */
async function trainStep(
  run: OpenedRun,
  parts: Parts,
  step: number,
  elapsed: () => number,
  clock: () => number,
): Promise<void> {
  const { cfg, algo, memory, files, progress } = run;
  const ts = clock();
  const tasks = run.cursor.next(cfg.batchSize);
  // The memory is read-only to the step; its writes are applied below (the runner is its only writer).
  const ctx: AlgoContext = {
    env: run.env,
    model: parts.model,
    memory,
    rng: run.rng,
    step,
    onProgress: progressOf(run),
  };
  if (parts.reflector) ctx.reflector = parts.reflector;
  const apis = [
    ["reflector", parts.reflector],
    ["policy", parts.apiPolicy],
  ] as const;
  const usageBefore = apis.map(([, api]): ApiUsage | null => (api ? { ...api.usage } : null));
  const result = await algo.step(ctx, tasks, run.stepOptions);
  const tt = clock();
  let trainMetrics: Record<string, number> = {};
  if (algo.trains) {
    progress.update("  train", 0, 1);
    trainMetrics = await parts.trainer.trainOnSamples(
      run.engine!,
      result.samples,
      learnerConfigFrom(cfg),
      optimConfigFrom(cfg),
      new Rng(`${cfg.seed}/minibatches/${step}`),
    );
    progress.update("  train", 1, 1);
  }
  const trainTime = clock() - tt;
  apis.forEach(([name, api], i) => {
    if (api) Object.assign(trainMetrics, usageMetrics(name, usageBefore[i]!, api.usage, api.priced));
  });
  memory.apply(result.memoryWrites);
  run.counters["memory/total"] = (run.counters["memory/total"] ?? 0) + result.memoryWrites.length;

  const m: Record<string, number> = { ...result.metrics, ...trainMetrics };
  const stepTime = clock() - ts;
  m["time/train"] = trainTime;
  m["time/step"] = stepTime;
  m["time/other"] = Math.max(0, stepTime - trainTime - (m["time/sample"] ?? 0) - (m["time/env"] ?? 0));
  if (algo.usesMemory && m["memory/updates"] === undefined) m["memory/updates"] = result.memoryWrites.length;
  if (m["tokens/sampled"] !== undefined && m["time/sample"])
    m["tokens_per_s"] = m["tokens/sampled"] / m["time/sample"];

  files.append("rollouts", result.rollouts);
  files.append("memory", result.memoryWrites);
  const record = { kind: "train", step, time: elapsed(), ...m };
  files.append("metrics", [record]);
  parts.tracker?.log(record);
  progress.line(stepSummary(step, cfg.steps, m));
}

/**
 * Evaluation after step `atStep` (0: before the first). An algorithm that deploys its memory is
 * evaluated under the memory's rulebook, and next to it (same seeds) under the initial prompt.
 */
async function evaluateAt(
  run: OpenedRun,
  parts: Parts,
  atStep: number,
  elapsed: () => number,
  clock: () => number,
): Promise<RunSummary["finalEval"]> {
  const { cfg, algo, files } = run;
  const te = clock();
  const opts = evalOptionsFrom(cfg);
  // A separate stream per evaluation, so the cadence of evaluation never changes training.
  const once = (system: string | null): Promise<EvalResult> =>
    parts.trainer.evaluate(
      {
        env: run.env,
        model: parts.model,
        rng: new Rng(`${cfg.seed}/eval/${atStep}`),
        step: atStep,
        onProgress: progressOf(run),
      },
      run.evalTasks,
      system !== null ? { ...opts, system } : opts,
    );
  const rulebook = algo.deploysMemory ? run.memory.read(0) : null;
  const res = await once(rulebook);
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
  if (algo.deploysMemory) {
    const base = rulebook === null ? res : await once(null);
    record["eval/initial_reward"] = base.reward;
    record["eval/initial_pass@1"] = base.passAt1;
    record["eval/memory"] = rulebook === null ? 0 : 1;
  }
  record["time/eval"] = clock() - te;
  files.append("rollouts", res.rollouts);
  files.append("metrics", [record]);
  parts.tracker?.log(record);
  run.progress.line(evalSummary(atStep, record));
  return { reward: res.reward, passAt1: res.passAt1, n: res.n };
}

/** A checkpoint after `step`: the run state, and the engine's state where the algorithm trains. */
async function checkpoint(run: OpenedRun, step: number, elapsed: number, final: boolean): Promise<void> {
  const { engine, files } = run;
  await writeCheckpoint(
    files.checkpointsDir,
    {
      version: CHECKPOINT_VERSION,
      step,
      elapsed,
      rng: run.rng.state(),
      cursor: run.cursor.save(),
      memory: run.memory.toJSON(),
      offsets: files.offsets(),
      counters: run.counters,
      final,
    },
    // An algorithm that trains nothing changes no weight: its checkpoints hold the run state only.
    !run.algo.trains || !engine
      ? (dir) => Promise.resolve(void mkdirSync(dir))
      : (dir) => engine.saveState(dir),
    run.cfg.checkpoint.keep,
  );
}

/**
 * The error a failed run ends with: status.json says "failed" (or why it could not be written), a
 * full or read-only disk is named as such (path, cause, code) rather than as a bug, and the message
 * says how to continue.
 */
function failed(
  e: unknown,
  done: number,
  step: number,
  runDir: string,
  status: (state: RunState, step: number, error?: string) => void,
  clear: () => void,
): UserError {
  const sys = e instanceof UserError ? null : systemUserError(e);
  const msg = sys ? sys.message : e instanceof Error ? e.message : String(e);
  let statusNote = "";
  try {
    status("failed", done, msg);
  } catch (se) {
    // The same full disk usually refuses status.json too: say so rather than hide the first error.
    statusNote = ` (status.json could not be updated either: ${systemUserError(se)?.message ?? String(se)})`;
  }
  clear();
  const hint = `the run directory is consistent; continue with: erl train --resume ${runDir}${statusNote}`;
  if (e instanceof UserError) return new UserError(`${e.message}\n(${hint})`, e.exitCode);
  const err = new UserError(`training failed during step ${step}: ${msg}\n(${hint})`, 1);
  (err as Error & { cause?: unknown }).cause = e;
  return err;
}
