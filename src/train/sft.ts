/**
 * A supervised fine-tuning run (`erl sft`): chat JSONL → token-exact sequences (sft-render.ts) →
 * cross-entropy on the trained tokens → AdamW with a learning-rate schedule, in a run directory
 * like `erl train`'s (config.json, metrics.jsonl, status.json, checkpoints/, one writer).
 *
 * ALGORITHM
 *   order    each epoch a seeded permutation of the train conversations; step s takes the next
 *            `batchSize` of the concatenated epochs, so the data of a step is a function of s alone
 *   loss     token mean of −log p(target) over the step's trained tokens (one normalizer for the
 *            whole step, however the engine splits it into micro-batches)
 *   update   AdamW at learningRate(schedule, s) (lr-schedule.ts), global grad-norm clip
 *   eval     the same token-mean loss on the held-out conversations, no update
 *
 * BOOKKEEPING
 *   Crash safety is the RL runner's: metrics.jsonl is only appended, a checkpoint (engine weights,
 *   optimizer and RNG; the step) records its byte size, and --resume cuts it back and redoes the
 *   steps after the checkpoint. The data files' checksums are kept in data.json: a resume on other
 *   data is refused, so a resumed run is the run it would have been.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import type { ModelBackend } from "../agent/backend.ts";
import type { Datum, Engine, EngineInfo } from "../engine/api.ts";
import { inputError, systemUserError, UserError } from "../util/errors.ts";
import { writeFileAtomic } from "../util/jsonl.ts";
import { Rng } from "../util/rng.ts";
import {
  checkpointCandidates,
  CHECKPOINT_VERSION,
  writeCheckpoint,
  type RunCheckpoint,
} from "./checkpoint.ts";
import { learningRate, type Schedule } from "./lr-schedule.ts";
import { Progress } from "./progress.ts";
import { engineSummary } from "./runner.ts";
import { lockRunDir, pickCheckpoint } from "./run-open.ts";
import type { RunFiles } from "./runfiles.ts";
import type { RunLock } from "./runlock.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";
import type { SftConfig } from "./sft-config.ts";
import { readChatFile, type ChatExample } from "./sft-data.ts";
import { renderExample, type SftSequence } from "./sft-render.ts";

export interface SftDeps {
  /** Starts an engine with the run's model loaded. */
  startEngine(cfg: SftConfig, modelPath: string): Promise<Engine>;
  makeBackend(engine: Engine): Promise<ModelBackend>;
}

export interface SftOptions {
  config: SftConfig;
  runDir: string;
  resume: boolean;
  breakLock?: boolean;
  deps: SftDeps;
  progress?: Progress;
  clock?: () => number;
}

export interface SftSummary {
  runDir: string;
  steps: number;
  totalSteps: number;
  elapsed: number;
  finalEvalLoss: number | null;
  alreadyFinished: boolean;
}

export function defaultSftRunName(cfg: SftConfig, date = new Date()): string {
  const stamp = date.toISOString().replace(/[-:]/g, "").replace("T", "-").slice(0, 15);
  const data = basename(cfg.data.train)
    .replace(/\.jsonl?$/i, "")
    .replace(/[^\w.-]+/g, "_");
  return `sft-${data}-seed${cfg.seed}-${stamp}`;
}

// ---------------------------------------------------------------------------------------------
// Data: splits, tokens, the order of steps

/** Held-out split: `fraction` of the conversations, drawn with the seed (at least one when > 0). */
export function splitHeldOut(
  examples: readonly ChatExample[],
  fraction: number,
  seed: number,
): { train: ChatExample[]; held: ChatExample[] } {
  if (fraction <= 0 || examples.length < 2) return { train: [...examples], held: [] };
  const k = Math.min(examples.length - 1, Math.max(1, Math.round(examples.length * fraction)));
  const idx = new Rng(`${seed}/sft/held-out`).shuffle(examples.map((_, i) => i));
  const held = new Set(idx.slice(0, k));
  return {
    train: examples.filter((_, i) => !held.has(i)),
    held: examples.filter((_, i) => held.has(i)),
  };
}

/** Optimizer steps of a run: ceil(epochs × conversations / batch), capped by `steps`. */
export function plannedSteps(cfg: SftConfig, conversations: number): number {
  const all = Math.max(1, Math.ceil((cfg.epochs * conversations) / cfg.batchSize));
  return cfg.steps === null ? all : Math.min(cfg.steps, all);
}

/**
 * The conversations of step s (1-based): positions [(s−1)B, sB) of the epochs' seeded permutations
 * laid end to end. Also the epoch and position the step starts at (for progress and checkpoints).
 */
export function stepIndices(
  n: number,
  batch: number,
  seed: number,
  step: number,
): { indices: number[]; epoch: number; index: number } {
  const indices: number[] = [];
  let pos = (step - 1) * batch;
  const start = { epoch: Math.floor(pos / n), index: pos % n };
  let epoch = -1;
  let order: number[] = [];
  for (let k = 0; k < batch; k++, pos++) {
    const e = Math.floor(pos / n);
    if (e !== epoch) {
      epoch = e;
      order = new Rng(`${seed}/sft/epoch/${e}`).shuffle(Array.from({ length: n }, (_, i) => i));
    }
    indices.push(order[pos % n]!);
  }
  return { indices, ...start };
}

/** The datum of a sequence: inputs, next-token targets, their loss mask. */
export function sftDatum(seq: SftSequence): Datum {
  return {
    inputIds: seq.ids.slice(0, -1),
    targetIds: seq.ids.slice(1),
    weights: seq.mask.slice(1),
  };
}

function trainedTokens(d: Datum): number {
  let n = 0;
  for (const w of d.weights) if (w !== 0) n++;
  return n;
}

/**
 * Packing or padding, by measurement: a forward pass over `probe` (the next step's batch) each way,
 * twice, interleaved; the faster best time wins (a tie goes to padding, which changes nothing).
 */
export async function choosePacking(
  engine: Pick<Engine, "forward">,
  probe: Datum[],
  clock: () => number,
): Promise<{ pack: boolean; reason: string }> {
  const best = { pad: Infinity, pack: Infinity };
  for (let rep = 0; rep < 2; rep++)
    for (const pack of [false, true]) {
      const t = clock();
      await engine.forward(probe, { pack });
      const dt = clock() - t;
      if (pack) best.pack = Math.min(best.pack, dt);
      else best.pad = Math.min(best.pad, dt);
    }
  const pack = best.pack < best.pad * 0.95;
  return {
    pack,
    reason: `${pack ? "packing" : "padding"} (forward over ${probe.length} conversations, best of 2: padded ${best.pad.toFixed(2)} s, packed ${best.pack.toFixed(2)} s)`,
  };
}

/** Mean −log p over the trained tokens of `datums` (forward only). */
async function heldOutLoss(
  engine: Engine,
  datums: Datum[],
  pack: boolean,
): Promise<{ loss: number; tokens: number }> {
  let sum = 0;
  let tokens = 0;
  const chunk = 64;
  for (let i = 0; i < datums.length; i += chunk) {
    const part = datums.slice(i, i + chunk);
    const lps = await engine.forward(part, { pack });
    part.forEach((d, j) => {
      const lp = lps[j]!;
      d.weights.forEach((w, t) => {
        if (w !== 0) {
          sum -= lp[t]!;
          tokens++;
        }
      });
    });
  }
  return { loss: tokens > 0 ? sum / tokens : NaN, tokens };
}

interface Tokenised {
  seqs: SftSequence[];
  tooLong: number[];
}

async function tokenise(
  model: ModelBackend,
  examples: readonly ChatExample[],
  file: string,
  cfg: SftConfig,
  maxTokens: number,
  progress: Progress,
  label: string,
): Promise<Tokenised> {
  const seqs: SftSequence[] = [];
  const tooLong: number[] = [];
  const chunk = 64;
  for (let i = 0; i < examples.length; i += chunk) {
    progress.update(label, i, examples.length);
    const part = await Promise.all(
      examples.slice(i, i + chunk).map((ex) => renderExample(model, ex, file, cfg.data.trainOn)),
    );
    for (const s of part) {
      if (s.ids.length > maxTokens) {
        if (cfg.data.tooLong === "error")
          throw inputError(
            { file, line: s.line },
            `the conversation is ${s.ids.length} tokens, longer than data.maxTokens ${maxTokens} (set data.tooLong "skip" to leave such lines out)`,
          );
        tooLong.push(s.line);
        continue;
      }
      seqs.push(s);
    }
  }
  progress.update(label, examples.length, examples.length);
  return { seqs, tooLong };
}

function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

function lineList(lines: readonly number[]): string {
  const shown = lines.slice(0, 8).join(", ");
  return lines.length > 8 ? `${shown}, … (${lines.length} in all)` : shown;
}

// ---------------------------------------------------------------------------------------------
// The run

export async function runSft(opts: SftOptions): Promise<SftSummary> {
  const { files, lock, createdDir } = lockRunDir({ ...opts, command: "erl sft" });
  try {
    return await runLocked(opts, files, lock, createdDir);
  } finally {
    lock.release();
  }
}

interface DataRecord {
  train: { file: string; sha256: string };
  eval: { file: string; sha256: string } | null;
}

async function runLocked(
  opts: SftOptions,
  files: RunFiles,
  lock: RunLock,
  createdDir: boolean,
): Promise<SftSummary> {
  const cfg = opts.config;
  const clock = opts.clock ?? (() => performance.now() / 1000);
  const progress = opts.progress ?? new Progress();
  const dataFile = join(opts.runDir, "data.json");

  // --- the data, read and checked before anything expensive
  const trainFile = readChatFile(cfg.data.train);
  const evalFile = cfg.data.eval !== null ? readChatFile(cfg.data.eval) : null;
  const record: DataRecord = {
    train: { file: cfg.data.train, sha256: sha256(cfg.data.train) },
    eval: cfg.data.eval !== null ? { file: cfg.data.eval, sha256: sha256(cfg.data.eval) } : null,
  };
  if (opts.resume && existsSync(dataFile)) {
    const before = JSON.parse(readFileSync(dataFile, "utf8")) as DataRecord;
    for (const k of ["train", "eval"] as const)
      if ((before[k]?.sha256 ?? null) !== (record[k]?.sha256 ?? null))
        throw new UserError(
          `${record[k]?.file ?? before[k]?.file}: the ${k} data changed since the run started (sha256 differs); a resumed run must read the same data`,
        );
  }
  if (trainFile.skippedNoTarget.length > 0)
    progress.line(
      `${cfg.data.train}: ${trainFile.skippedNoTarget.length} conversations have no assistant message of weight 1 and train nothing (lines ${lineList(trainFile.skippedNoTarget)})`,
    );
  const split =
    evalFile !== null
      ? { train: trainFile.examples, held: evalFile.examples }
      : splitHeldOut(trainFile.examples, cfg.data.evalFraction, cfg.seed);
  const held = cfg.data.evalMax !== null ? split.held.slice(0, cfg.data.evalMax) : split.held;

  // --- the engine and the checkpoint to start from
  let engine: Engine | null = null;
  let ckpt: { dir: string; state: RunCheckpoint } | null = null;
  try {
    progress.line(`starting the engine and loading ${cfg.model.path}`);
    engine = await opts.deps.startEngine(cfg, resolve(cfg.model.path));
    const candidates = opts.resume ? checkpointCandidates(files.checkpointsDir) : [];
    const picked = await pickCheckpoint(engine, candidates, files, progress);
    ckpt = picked ? { dir: picked.dir, state: picked.state } : null;
  } catch (e) {
    if (engine) await engine.close().catch(() => undefined);
    const msg = e instanceof Error ? e.message : String(e);
    if (!opts.resume) {
      lock.release();
      if (createdDir) rmSync(opts.runDir, { recursive: true, force: true });
      throw new UserError(
        `${msg}\n(nothing was written for ${opts.runDir}; fix this and run the same command again)`,
      );
    }
    throw new UserError(
      `${msg}\n(the run directory is unchanged; continue with: erl sft --resume ${opts.runDir})`,
    );
  }

  const eng = engine;
  const clear = (): void => void eng.close().catch(() => undefined);
  let finishedAt = ckpt?.state.step ?? 0;
  let checkpointed = finishedAt;
  const onSignal = (signal: NodeJS.Signals): void => {
    files.writeStatus({ state: "stopped", step: finishedAt, totalSteps: 0, pid: process.pid });
    progress.clear();
    process.stderr.write(
      `\n${signal}: ${opts.runDir} stopped after step ${finishedAt} (last checkpoint: step ${checkpointed}); continue with: erl sft --resume ${opts.runDir}\n`,
    );
    lock.release();
    process.exit(signal === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  let totalSteps = 0;
  const elapsedBefore = ckpt?.state.elapsed ?? 0;
  const t0 = clock();
  const elapsed = (): number => elapsedBefore + (clock() - t0);
  try {
    const info: EngineInfo = await eng.info();
    const model = await opts.deps.makeBackend(eng);
    const maxTokens = cfg.data.maxTokens ?? info.model?.maxPositions ?? 2048;
    const train = await tokenise(
      model,
      split.train,
      cfg.data.train,
      cfg,
      maxTokens,
      progress,
      "tokenise train",
    );
    const heldSeqs = await tokenise(
      model,
      held,
      cfg.data.eval ?? cfg.data.train,
      cfg,
      maxTokens,
      progress,
      "tokenise held-out",
    );
    for (const [name, t] of [
      ["train", train],
      ["held-out", heldSeqs],
    ] as const)
      if (t.tooLong.length > 0)
        progress.line(
          `${name}: ${t.tooLong.length} conversations longer than ${maxTokens} tokens were skipped (lines ${lineList(t.tooLong)})`,
        );
    if (train.seqs.length === 0)
      throw new UserError(`${cfg.data.train}: no conversation fits ${maxTokens} tokens`);
    const datums = train.seqs.map(sftDatum);
    const heldDatums = heldSeqs.seqs.map(sftDatum);
    totalSteps = plannedSteps(cfg, datums.length);
    const trainedTotal = datums.reduce((a, d) => a + trainedTokens(d), 0);
    const tokensTotal = datums.reduce((a, d) => a + d.inputIds.length, 0);

    if (!opts.resume) {
      files.create(cfg);
      writeFileAtomic(dataFile, JSON.stringify(record, null, 2) + "\n");
    } else {
      if (!existsSync(dataFile)) writeFileAtomic(dataFile, JSON.stringify(record, null, 2) + "\n");
      files.truncateTo(ckpt ? ckpt.state.offsets : { metrics: 0, rollouts: 0, memory: 0 });
    }
    files.recordEngine(finishedAt, info);
    for (const line of engineSummary(info)) progress.line(line);
    progress.line(
      `data: ${datums.length} conversations (${tokensTotal} tokens, ${trainedTotal} trained) for ${totalSteps} steps of ${cfg.batchSize}` +
        `; held-out ${heldDatums.length}` +
        (ckpt ? `; resuming after step ${ckpt.state.step}` : ""),
    );
    const status = (state: "running" | "finished", step: number): void =>
      files.writeStatus({ state, step, totalSteps, pid: process.pid });
    status("running", finishedAt);

    const schedule: Schedule = {
      name: cfg.optim.schedule,
      lr: cfg.optim.lr,
      warmupSteps: cfg.optim.warmupSteps,
      minLrRatio: cfg.optim.minLrRatio,
      totalSteps,
    };
    let pack = cfg.packing === "on";
    if (cfg.packing === "auto" && finishedAt < totalSteps) {
      const probe = stepIndices(datums.length, cfg.batchSize, cfg.seed, finishedAt + 1).indices.map(
        (i) => datums[i]!,
      );
      progress.update("  packing or padding", 0, 1);
      const choice = await choosePacking(eng, probe, clock);
      pack = choice.pack;
      progress.line(`packing: ${choice.reason}`);
    }
    const runEval = async (step: number): Promise<number | null> => {
      if (heldDatums.length === 0) return null;
      const te = clock();
      progress.update("  held-out loss", 0, 1);
      const r = await heldOutLoss(eng, heldDatums, pack);
      progress.update("  held-out loss", 1, 1);
      files.append("metrics", [
        {
          kind: "eval",
          step,
          time: elapsed(),
          "eval/loss": r.loss,
          "eval/tokens": r.tokens,
          "time/eval": clock() - te,
        },
      ]);
      progress.line(`eval ${step}: held-out loss ${r.loss.toFixed(4)} (${r.tokens} tokens)`);
      return r.loss;
    };

    let finalEvalLoss: number | null = null;
    if (finishedAt === 0 && cfg.eval.initial) finalEvalLoss = await runEval(0);
    let seen = ckpt?.state.counters["tokens/seen"] ?? 0;
    // The ETA counts from here: the start-up, the packing probe and the initial eval happen once.
    const loopStart = clock();
    const loopFrom = finishedAt;
    for (let step = finishedAt + 1; step <= totalSteps && ckpt?.state.final !== true; step++) {
      const ts = clock();
      const { indices, epoch, index } = stepIndices(datums.length, cfg.batchSize, cfg.seed, step);
      const batch = indices.map((i) => datums[i]!);
      const trained = batch.reduce((a, d) => a + trainedTokens(d), 0);
      const tokens = batch.reduce((a, d) => a + d.inputIds.length, 0);
      const lr = learningRate(schedule, step);
      progress.update(`  step ${step}/${totalSteps}`, 0, 1);
      const fb = await eng.forwardBackward(
        batch,
        { name: "cross_entropy", aggregation: "token-mean", normalizer: Math.max(1, trained) },
        { pack },
      );
      const opt = await eng.optimStep({
        lr,
        betas: [cfg.optim.beta1, cfg.optim.beta2],
        eps: cfg.optim.eps,
        weightDecay: cfg.optim.weightDecay,
        ...(cfg.optim.gradClip !== null ? { gradClip: cfg.optim.gradClip } : {}),
      });
      seen += tokens;
      const dt = clock() - ts;
      const m: Record<string, number> = {
        loss: fb.loss,
        lr,
        grad_norm: opt.gradNorm,
        epoch: (step * cfg.batchSize) / datums.length,
        "tokens/step": tokens,
        "tokens/trained": trained,
        "tokens/seen": seen,
        tokens_per_s: tokens / dt,
        "time/step": dt,
      };
      for (const [k, v] of Object.entries(fb.metrics))
        if (k.startsWith("microbatch") || k === "packing") m[`engine/${k}`] = v;
      files.append("metrics", [{ kind: "train", step, time: elapsed(), ...m }]);
      progress.line(
        `step ${step}/${totalSteps}  loss ${fb.loss.toFixed(4)}  lr ${lr.toExponential(2)}  |g| ${opt.gradNorm.toFixed(2)}  ` +
          `${Math.round(tokens / dt)} tok/s  epoch ${m.epoch!.toFixed(2)}  ETA ${formatEta(step, loopFrom, clock() - loopStart, totalSteps)}`,
      );
      const last = step === totalSteps;
      if ((cfg.eval.every > 0 && step % cfg.eval.every === 0) || (last && cfg.eval.final))
        finalEvalLoss = await runEval(step);
      if (step % cfg.checkpoint.every === 0 || last) {
        await writeCheckpoint(
          files.checkpointsDir,
          {
            version: CHECKPOINT_VERSION,
            step,
            elapsed: elapsed(),
            rng: new Rng(`${cfg.seed}/sft`).state(),
            cursor: { epoch, index },
            memory: null,
            offsets: files.offsets(),
            counters: { "tokens/seen": seen },
            final: last,
          },
          (dir) => eng.saveState(dir),
          cfg.checkpoint.keep,
        );
        checkpointed = step;
      }
      finishedAt = step;
      status(last ? "finished" : "running", step);
    }
    if (ckpt?.state.final === true) {
      status("finished", finishedAt);
      const evals = readJsonlTolerant<Record<string, unknown>>(files.path("metrics")).filter(
        (r) => r.kind === "eval",
      );
      return {
        runDir: opts.runDir,
        steps: finishedAt,
        totalSteps,
        elapsed: elapsed(),
        finalEvalLoss: evals.length ? Number(evals[evals.length - 1]!["eval/loss"]) : null,
        alreadyFinished: true,
      };
    }
    return {
      runDir: opts.runDir,
      steps: finishedAt,
      totalSteps,
      elapsed: elapsed(),
      finalEvalLoss,
      alreadyFinished: false,
    };
  } catch (e) {
    const sys = e instanceof UserError ? null : systemUserError(e);
    const msg = sys ? sys.message : e instanceof Error ? e.message : String(e);
    try {
      if (files.exists()) files.writeStatus({ state: "failed", step: finishedAt, totalSteps, error: msg });
    } catch {
      /* informational */
    }
    progress.clear();
    if (!files.exists() && createdDir) {
      lock.release();
      rmSync(opts.runDir, { recursive: true, force: true });
      throw e instanceof UserError ? e : new UserError(msg, 1);
    }
    const hint = `the run directory is consistent; continue with: erl sft --resume ${opts.runDir}`;
    if (e instanceof UserError) throw new UserError(`${e.message}\n(${hint})`, e.exitCode);
    const err = new UserError(`fine-tuning failed after step ${finishedAt}: ${msg}\n(${hint})`, 1);
    (err as Error & { cause?: unknown }).cause = e;
    throw err;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    clear();
  }
}

/** Remaining time from this session's pace (steps done since the start or the resume). */
function formatEta(step: number, from: number, spent: number, total: number): string {
  const done = step - from;
  if (done <= 0) return "?";
  const s = Math.round(((total - step) * spent) / done);
  const h = Math.floor(s / 3600);
  const min = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(min).padStart(2, "0")}m` : `${min}m${String(s % 60).padStart(2, "0")}s`;
}
