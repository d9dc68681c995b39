/**
 * A comparison: every algorithm × seed trained one after another (the machine has few cores), or
 * `parallel` at a time with the cores shared out (each engine gets cores / parallel threads), on
 * the same tasks — the data order depends only on the seed — under one stated, equalised budget,
 * then a report. Runs live in the comparison directory; running the same comparison again skips
 * finished runs and resumes unfinished ones, so an interrupted comparison loses at most the steps
 * since a run's last checkpoint.
 */
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { cpus } from "node:os";
import { UserError } from "../util/errors.ts";
import { writeFileAtomic } from "../util/jsonl.ts";
import {
  checkModelPath,
  evalSamplesPerTask,
  getAlgorithm,
  validateConfig,
  type RunConfig,
} from "./config.ts";
import { erlAlgoConfig } from "./algorithms/erl.ts";
import { runTraining } from "./runner.ts";
import type { TrainDeps } from "./deps.ts";
import { checkRunLimits, readModelShape } from "./limits.ts";
import { RunFiles } from "./runfiles.ts";
import { Progress } from "./progress.ts";
import { loadRunData, terminalTable, writeReport, type AlgoSummary, type RunData } from "./report.ts";
import { makeDirs } from "../util/dirs.ts";

export type Budget = { kind: "rollouts" } | { kind: "attempts" } | { kind: "time"; minutes: number };

export function parseBudget(text: string): Budget {
  if (text === "rollouts") return { kind: "rollouts" };
  if (text === "attempts") return { kind: "attempts" };
  const m = /^time:(\d+(?:\.\d+)?)$/.exec(text);
  if (m && Number(m[1]) > 0) return { kind: "time", minutes: Number(m[1]) };
  throw new UserError(`--budget ${text}: expected "rollouts" (the paper's), "attempts" or "time:<minutes>"`);
}

export function runName(algo: string, seed: number): string {
  return `${algo}-seed${seed}`;
}

/** The config of one run of the comparison. */
export function plannedConfig(
  base: RunConfig,
  algo: string,
  seed: number,
  budget: Budget,
  dir: string,
): RunConfig {
  // "attempts": every algorithm samples as many first attempts per task as the base config's own
  // algorithm; "rollouts": each algorithm its own default (the paper's: RLVR 10, ERL 4).
  const n =
    budget.kind === "attempts"
      ? (base.algo.n ?? getAlgorithm(base.algo.name).attemptsPerTask)
      : getAlgorithm(algo).attemptsPerTask;
  const cfg: RunConfig = {
    ...base,
    name: runName(algo, seed),
    runsDir: dir,
    seed,
    algo: { ...base.algo, name: algo, n },
    timeBudget: budget.kind === "time" ? budget.minutes * 60 : null,
  };
  return validateConfig(cfg);
}

/** The sentence the report states as the budget. */
export function budgetStatement(base: RunConfig, budget: Budget, algos: readonly string[]): string {
  const same = `Every run uses the same tasks in the same order for a given seed (${base.batchSize} tasks per step)`;
  const retrying = algos.filter((a) => getAlgorithm(a).retries);
  const perTask =
    budget.kind === "attempts"
      ? `every algorithm samples ${base.algo.n ?? getAlgorithm(base.algo.name).attemptsPerTask} first attempts per task${retrying.length ? ` (${retrying.join(", ")} then add a reflection and a second attempt for each failed one)` : ""}`
      : `equal rollouts per task as in the paper: ${algos
          .map((a) => {
            const n = getAlgorithm(a).attemptsPerTask;
            return getAlgorithm(a).retries
              ? `${a} samples ${n} first attempts per task and, for each failed one, a reflection and a second attempt (at most ${2 * n} episodes and ${n} reflections per task)`
              : `${a} samples ${n} first attempts per task`;
          })
          .join("; ")}`;
  const length =
    budget.kind === "time"
      ? `equal wall-clock time: each run trains for ${budget.minutes} minutes of run time (engine start-up and evaluations included) and stops after the step that crosses it, at most ${base.steps} steps`
      : `equal steps: ${base.steps} training steps per run`;
  return `${same}; ${perTask}; ${length}.`;
}

export interface CompareOptions {
  env: RunConfig["env"];
  algos: string[];
  seeds: number[];
  budget: Budget;
  base: RunConfig;
  dir: string;
  command: string;
  deps: TrainDeps;
  progress?: Progress;
  /**
   * Runs trained side by side (default 1). Each local engine then gets cores / parallel threads (at
   * least 1), and each run's progress lines carry its name. On a small model, where a second thread
   * buys little, two runs side by side finish in about the time of one.
   */
  parallel?: number;
}

export interface CompareResult {
  dir: string;
  report: string;
  summaries: AlgoSummary[];
  table: string;
  ran: string[];
  skipped: string[];
}

export async function runComparison(o: CompareOptions): Promise<CompareResult> {
  const progress = o.progress ?? new Progress();
  const dir = resolve(o.dir);
  const base = validateConfig({ ...o.base, env: o.env });
  checkModelPath(base);
  // Every run's sizes within their limits before the first one starts (src/train/limits.ts).
  const shape = base.policy.kind === "engine" ? readModelShape(resolve(base.model.path)) : null;
  for (const seed of o.seeds)
    for (const algo of o.algos) checkRunLimits(plannedConfig(base, algo, seed, o.budget, dir), { shape });
  makeDirs(dir);
  const plan = { env: o.env, algos: o.algos, seeds: o.seeds, budget: o.budget, base };
  const planFile = join(dir, "compare.json");
  if (existsSync(planFile)) {
    const old = JSON.parse(readFileSync(planFile, "utf8")) as { algos?: string[] };
    // Adding algorithms or seeds to a comparison is fine; its runs must match the stored configs below.
    plan.algos = [...new Set([...(old.algos ?? []), ...o.algos])] as string[];
  }
  writeFileAtomic(planFile, JSON.stringify(plan, null, 2) + "\n");

  const ran: string[] = [];
  const skipped: string[] = [];
  const total = o.algos.length * o.seeds.length;
  const parallel = Math.max(1, Math.min(o.parallel ?? 1, total));
  const threads = parallel > 1 ? Math.max(1, Math.floor(cpus().length / parallel)) : undefined;
  const jobs: (() => Promise<void>)[] = [];
  let k = 0;
  for (const seed of o.seeds)
    for (const algo of o.algos) {
      k++;
      const at = `[${k}/${total}] ${algo} seed ${seed}`;
      const cfg = plannedConfig(base, algo, seed, o.budget, dir);
      const runDir = join(dir, runName(algo, seed));
      const files = new RunFiles(runDir);
      let resume = false;
      if (files.exists()) {
        const stored = validateConfig(files.readConfig(), { file: files.configFile });
        const differ = configDifferences(stored, cfg);
        if (differ.length > 0)
          throw new UserError(
            `${runDir} was trained with a different config than this comparison asks for (${differ
              .slice(0, 3)
              .join(", ")}); use a new --out directory (or delete that run)`,
          );
        if (files.readStatus()?.state === "finished") {
          progress.line(`${at}: finished before, skipped`);
          skipped.push(runDir);
          continue;
        }
        resume = true;
      }
      jobs.push(async () => {
        progress.line(
          `${at}${resume ? " (resuming)" : ""}${threads ? `, ${threads} engine thread${threads > 1 ? "s" : ""}` : ""}`,
        );
        const deps: TrainDeps =
          threads === undefined
            ? o.deps
            : { ...o.deps, startEngine: (c, p, opts) => o.deps.startEngine(c, p, { threads, ...opts }) };
        const runProgress = parallel > 1 ? prefixedProgress(`${algo}/${seed}`) : progress;
        await runTraining({ config: cfg, runDir, resume, deps, progress: runProgress });
        ran.push(runDir);
      });
    }
  // A pool of `parallel` workers over the runs in order; the first failure stops the others' next runs.
  let next = 0;
  let failed: unknown = null;
  await Promise.all(
    Array.from({ length: Math.min(parallel, jobs.length) }, async () => {
      while (failed === null && next < jobs.length) {
        const job = jobs[next++]!;
        try {
          await job();
        } catch (e) {
          failed ??= e;
        }
      }
    }),
  );
  if (failed !== null) throw failed;

  const runs: RunData[] = [];
  const unfinished: string[] = [];
  for (const seed of o.seeds)
    for (const algo of o.algos) {
      const runDir = join(dir, runName(algo, seed));
      if (new RunFiles(runDir).readStatus()?.state !== "finished") unfinished.push(runDir);
      else runs.push(loadRunData(algo, seed, runDir));
    }
  const c = cpus();
  const meta = {
    title: `${o.algos.join(" vs ")} on ${o.env}`,
    command: o.command,
    budget: budgetStatement(base, o.budget, o.algos),
    settings: [
      `model: \`${base.model.path}\` (${base.model.dtype}, ${base.model.device}${base.model.lora ? `, LoRA rank ${base.model.lora.rank}` : ", full fine-tuning"})`,
      `steps ${base.steps}, ${base.batchSize} tasks per step, AdamW lr ${base.optim.lr}, weight decay ${base.optim.weightDecay}, grad clip ${base.optim.gradClip ?? "none"}`,
      `loss: PPO clip ${base.loss.clipLow}/${base.loss.clipHigh}, dual clip ${base.loss.dualClip ?? "none"}, KL ${base.loss.klCoef}, ${base.loss.aggregation}`,
      `sampling: attempts T=${base.algo.attemptSampling.temperature}, reflections T=${erlAlgoConfig(base).reflectionSampling.temperature} top-p ${erlAlgoConfig(base).reflectionSampling.topP}; prompt profile ${base.algo.profile}; memory ${erlAlgoConfig(base).memory}`,
      `evaluation: ${base.data.evalTasks ?? "all"} tasks of the ${base.data.evalSplit} split, n = ${evalSamplesPerTask(base)} per task, T=${base.eval.sampling.temperature} top-p ${base.eval.sampling.topP} top-k ${base.eval.sampling.topK ?? "none"}, every ${base.eval.every || "—"} steps and at the end`,
      `machine: ${c[0]?.model ?? "unknown CPU"}, ${c.length} logical cores; ${parallel > 1 ? `${parallel} runs side by side, ${threads} engine thread${threads === 1 ? "" : "s"} each` : "runs one after another"}`,
    ],
    algos: o.algos,
    seeds: o.seeds,
    unfinished,
  };
  const summaries = writeReport(dir, meta, runs);
  const table = terminalTable(summaries);
  return { dir, report: join(dir, "report.md"), summaries, table, ran, skipped };
}

/**
 * Keys (dotted paths) whose values differ between two configs, with both values. The free-text
 * `description` is not a setting and is ignored, so editing a preset's description does not orphan
 * finished runs.
 */
export function configDifferences(a: unknown, b: unknown, path = ""): string[] {
  if (path === "description") return [];
  const isObj = (x: unknown): x is Record<string, unknown> =>
    typeof x === "object" && x !== null && !Array.isArray(x);
  if (isObj(a) && isObj(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => configDifferences(a[k], b[k], path ? `${path}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b)
    ? []
    : [`${path || "(config)"}: ${JSON.stringify(a)} in the run, ${JSON.stringify(b)} asked`];
}

/** Progress for one of several runs side by side: plain lines, each starting with the run's name. */
function prefixedProgress(name: string): Progress {
  return new Progress({
    write: (text: string) => {
      const lines = text.split("\n");
      const last = lines.pop();
      process.stdout.write(lines.map((l) => `[${name}] ${l}\n`).join("") + (last ? `[${name}] ${last}` : ""));
    },
    isTTY: false,
  });
}
