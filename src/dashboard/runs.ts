/**
 * The dashboard's read-only view of a runs directory: finds run directories and comparison reports,
 * summarises each run (config, status, latest eval), and keeps incremental indexes of its JSONL files
 * (metrics, rollouts, memory) so that API requests read only what they need. Nothing here writes.
 *
 * Every file is reached through `RunsRoot`, so symbolic links that lead out of the runs directory are
 * ignored during discovery and refused when asked for.
 */
import { readdirSync, readFileSync, realpathSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { diffLines } from "diff";
import { JsonlIndex, type IndexEntry } from "./jsonl-index.ts";
import { RunsRoot } from "./safe-path.ts";
import { isPid, processAlive } from "../util/process.ts";

/**
 * "stopped": status.json still says running but the process that wrote it (its `pid`) is gone, i.e.
 * the run crashed or was killed without a chance to say so; `erl train --resume` continues it.
 */
export type RunState = "running" | "finished" | "failed" | "stopped" | "unknown";

export interface RunSummary {
  id: string;
  name: string;
  algo: string;
  env: string;
  model: string;
  seed: number | null;
  /** Runs that differ only by seed share a group (used for colours and seed spread). */
  group: string;
  state: RunState;
  step: number;
  totalSteps: number | null;
  updatedAt: string | null;
  error: string | null;
  /** The writing process recorded in status.json, when there is one. */
  pid: number | null;
  latestEval: { step: number; reward: number } | null;
  latestTrain: { step: number; reward: number | null; time: number } | null;
  files: { metrics: boolean; rollouts: boolean; memory: boolean };
  /** Problems reading this run (malformed config, damaged lines), shown in the page. */
  warnings: string[];
}

export interface ReportInfo {
  id: string;
  title: string;
  mtimeMs: number;
}

/** Numbers of one metrics kind, as columns: cheap to send and ready for the charts. */
export interface MetricColumns {
  step: number[];
  time: number[];
  cols: Record<string, (number | null)[]>;
}

export interface MetricsSlice {
  /** Index of the first record in this slice; pass `next` back as `since` for the records after it. */
  from: number;
  next: number;
  train: MetricColumns;
  eval: MetricColumns;
  problems: number;
}

export interface RolloutMeta {
  step: number;
  task: string;
  episode: string;
  stage: string;
  attempt: number;
  reward: number | null;
  success: boolean | null;
  stopReason: string | null;
  reflection: boolean;
  turns: number;
}

export interface RolloutListItem extends RolloutMeta {
  i: number;
}

export interface MemoryMeta {
  step: number;
  episode: string;
  task: string;
  worker: number | null;
}

export type DiffPart = { value: string; added?: boolean; removed?: boolean };

type Json = Record<string, unknown>;

function isObj(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
function str(v: unknown, fallback = ""): string {
  return typeof v === "string" ? v : typeof v === "number" ? String(v) : fallback;
}
function num(v: unknown): number | null {
  return typeof v === "number" && Number.isFinite(v) ? v : null;
}

/** Reads a small JSON file; on any problem returns null and records a warning instead of throwing. */
function readJsonFile(
  file: string,
  warnings: string[],
  label: string,
  guard: (f: string) => boolean,
): Json | null {
  let text: string;
  try {
    if (!guard(file)) return null;
    text = readFileSync(file, "utf8");
  } catch {
    return null;
  }
  try {
    const v: unknown = JSON.parse(text);
    if (isObj(v)) return v;
    warnings.push(`${label}: not a JSON object`);
  } catch (e) {
    warnings.push(`${label}: malformed JSON (${(e as Error).message})`);
  }
  return null;
}

/** Rounds to 6 significant digits: the charts need no more and the JSON gets much smaller. */
function round6(x: number): number {
  return x === 0 || !Number.isFinite(x) ? x : Number(x.toPrecision(6));
}

const RUN_MARKERS = ["config.json", "status.json", "metrics.jsonl"];
/** The longest metrics line the dashboard reads (a step's record is about a kilobyte). */
export const METRICS_LINE_BYTES = 1 << 20;
const SKIP_DIRS = new Set(["checkpoints", "node_modules", ".git"]);
const MAX_DEPTH = 5;

/** One run directory and its lazily built indexes. */
export class Run {
  private metricsIdx: JsonlIndex<Json> | null = null;
  private rolloutsIdx: JsonlIndex<RolloutMeta> | null = null;
  private memoryIdx: JsonlIndex<MemoryMeta> | null = null;
  /** Rollout entry numbers by step, and "step|task|attempt|stage" → entry number. */
  private byStep = new Map<number, number[]>();
  private byKey = new Map<string, number>();

  /** Whether a file's real path is inside the runs directory (a link in a run may point anywhere). */
  readonly guard: (file: string) => boolean;

  constructor(
    readonly id: string,
    readonly dir: string,
    root: RunsRoot,
  ) {
    this.guard = (file) => {
      try {
        return root.contains(realpathSync(file));
      } catch {
        return false;
      }
    };
  }

  private file(name: string): string {
    return join(this.dir, name);
  }

  /** The text of a small file of the run, or null when missing or outside the runs directory. */
  readText(name: string): string | null {
    const f = this.file(name);
    if (!this.guard(f)) return null;
    try {
      return readFileSync(f, "utf8");
    } catch {
      return null;
    }
  }

  private exists(name: string): boolean {
    try {
      if (!this.guard(this.file(name))) return false;
      return statSync(this.file(name)).isFile();
    } catch {
      return false;
    }
  }

  get metrics(): JsonlIndex<Json> {
    // Metrics records are kept whole (they are about a kilobyte); a longer line is not a metrics record.
    this.metricsIdx ??= new JsonlIndex<Json>(
      this.file("metrics.jsonl"),
      (r) => (isObj(r) ? r : null),
      undefined,
      undefined,
      this.guard,
      METRICS_LINE_BYTES,
    );
    return this.metricsIdx;
  }

  get rollouts(): JsonlIndex<RolloutMeta> {
    this.rolloutsIdx ??= new JsonlIndex<RolloutMeta>(
      this.file("rollouts.jsonl"),
      rolloutMeta,
      (entry, i) => {
        const m = entry.meta;
        let list = this.byStep.get(m.step);
        if (!list) this.byStep.set(m.step, (list = []));
        list.push(i);
        this.byKey.set(`${m.step}|${m.task}|${m.attempt}|${m.stage}`, i);
      },
      () => {
        this.byStep.clear();
        this.byKey.clear();
      },
      this.guard,
    );
    return this.rolloutsIdx;
  }

  get memory(): JsonlIndex<MemoryMeta> {
    this.memoryIdx ??= new JsonlIndex<MemoryMeta>(
      this.file("memory.jsonl"),
      (r) =>
        isObj(r)
          ? { step: num(r.step) ?? 0, episode: str(r.episode), task: str(r.task), worker: num(r.worker) }
          : null,
      undefined,
      undefined,
      this.guard,
    );
    return this.memoryIdx;
  }

  async summary(): Promise<RunSummary> {
    const warnings: string[] = [];
    const config = readJsonFile(this.file("config.json"), warnings, "config.json", this.guard) ?? {};
    const status = readJsonFile(this.file("status.json"), warnings, "status.json", this.guard) ?? {};
    const files = {
      metrics: this.exists("metrics.jsonl"),
      rollouts: this.exists("rollouts.jsonl"),
      memory: this.exists("memory.jsonl"),
    };
    let latestEval: RunSummary["latestEval"] = null;
    let latestTrain: RunSummary["latestTrain"] = null;
    let lastStep = 0;
    if (files.metrics) {
      const m = this.metrics;
      await m.refresh();
      for (let i = m.entries.length - 1; i >= 0 && (!latestEval || !latestTrain); i--) {
        const r = m.entries[i]!.meta;
        const step = num(r.step) ?? 0;
        lastStep = Math.max(lastStep, step);
        if (!latestEval && r.kind === "eval" && num(r["eval/reward"]) !== null)
          latestEval = { step, reward: num(r["eval/reward"])! };
        if (!latestTrain && r.kind !== "eval")
          latestTrain = {
            step,
            reward: num(r["reward/post_reflection"]) ?? num(r["reward/first"]),
            time: num(r.time) ?? 0,
          };
      }
      if (m.problemCount)
        warnings.push(`metrics.jsonl: ${m.problemCount} malformed or over-long line(s) skipped`);
    }
    const model = isObj(config.model) ? str(config.model.path) : str(config.model);
    const algo = algoName(config);
    const env = envName(config);
    const rawState = str(status.state);
    const pid = num(status.pid);
    let state: RunState =
      rawState === "running" || rawState === "finished" || rawState === "failed" || rawState === "stopped"
        ? rawState
        : "unknown";
    let error = typeof status.error === "string" ? status.error : null;
    // status.json can say "running" long after its process died (kill -9, a power cut); a value
    // that is not a pid is no evidence either way, and status.json is trusted.
    if (state === "running" && isPid(pid) && !processAlive(pid)) {
      state = "stopped";
      error ??= `the training process (pid ${pid}) is gone; status.json was last written ${str(status.updatedAt, "at an unknown time")}`;
    }
    return {
      id: this.id,
      name: str(config.name) || this.id,
      algo,
      env,
      model,
      seed: num(config.seed),
      group: groupKey(config, this.id),
      state,
      step: num(status.step) ?? lastStep,
      totalSteps: num(status.totalSteps) ?? num(config.steps),
      updatedAt: typeof status.updatedAt === "string" ? status.updatedAt : null,
      error,
      pid,
      latestEval,
      latestTrain,
      files,
      warnings,
    };
  }

  /** Metric records from number `since` on, as columns (only numeric keys; `keys` narrows them). */
  async metricsSlice(since: number, keys: readonly string[] | null): Promise<MetricsSlice> {
    const m = this.metrics;
    await m.refresh();
    const from = Math.max(0, Math.min(since, m.entries.length));
    const train: MetricColumns = { step: [], time: [], cols: {} };
    const evals: MetricColumns = { step: [], time: [], cols: {} };
    const wanted = keys ? new Set(keys) : null;
    for (let i = from; i < m.entries.length; i++) {
      const r = m.entries[i]!.meta;
      const step = num(r.step);
      if (step === null) continue;
      const target = r.kind === "eval" ? evals : train;
      const row = target.step.length;
      target.step.push(step);
      target.time.push(round6(num(r.time) ?? 0));
      for (const [k, v] of Object.entries(r)) {
        if (k === "step" || k === "time" || typeof v !== "number" || (wanted && !wanted.has(k))) continue;
        let col = target.cols[k];
        if (!col) {
          col = target.cols[k] = new Array<number | null>(row).fill(null);
        }
        while (col.length < row) col.push(null);
        col.push(round6(v));
      }
    }
    for (const t of [train, evals])
      for (const col of Object.values(t.cols)) while (col.length < t.step.length) col.push(null);
    return { from, next: m.entries.length, train, eval: evals, problems: m.problemCount };
  }

  /** Steps that have episodes, with counts by stage and mean reward of first attempts. */
  async rolloutSteps(): Promise<{
    total: number;
    steps: { step: number; n: number; first: number | null }[];
  }> {
    const r = this.rollouts;
    await r.refresh();
    const steps = [...this.byStep.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([step, list]) => {
        let sum = 0;
        let n = 0;
        for (const i of list) {
          const m = r.entries[i]!.meta;
          if (m.stage === "first" && m.reward !== null) {
            sum += m.reward;
            n++;
          }
        }
        return { step, n: list.length, first: n ? round6(sum / n) : null };
      });
    return { total: r.entries.length, steps };
  }

  /** A page of episodes, filtered by step, task and stage, in file order. */
  async rolloutPage(q: {
    step: number | null;
    task: string | null;
    stage: string | null;
    offset: number;
    limit: number;
  }): Promise<{ total: number; offset: number; items: RolloutListItem[]; tasks: string[] | null }> {
    const r = this.rollouts;
    await r.refresh();
    const pool: number[] =
      q.step !== null ? (this.byStep.get(q.step) ?? []) : r.entries.map((_e, i: number) => i);
    const tasks = q.step !== null ? [...new Set(pool.map((i) => r.entries[i]!.meta.task))].sort() : null;
    const matching =
      q.task || q.stage
        ? pool.filter((i) => {
            const m = r.entries[i]!.meta;
            return (!q.task || m.task === q.task) && (!q.stage || m.stage === q.stage);
          })
        : pool;
    const offset = Math.max(0, Math.min(q.offset, matching.length));
    const items = matching
      .slice(offset, offset + q.limit)
      .map((i): RolloutListItem => ({ i, ...r.entries[i]!.meta }));
    return { total: matching.length, offset, items, tasks };
  }

  /**
   * One episode in full, with its partner attempt (first ↔ second) when there is one, and the
   * reflection's rulebook diffed against the memory it started from.
   */
  async episode(i: number): Promise<{
    i: number;
    record: Json;
    partner: { i: number; record: Json } | null;
    reflectionDiff: DiffPart[] | null;
  } | null> {
    const r = this.rollouts;
    await r.refresh();
    const entry = r.entries[i];
    if (!entry) return null;
    const record = (await r.read(entry)) as Json;
    const m = entry.meta;
    const partnerStage = m.stage === "first" ? "second" : m.stage === "second" ? "first" : null;
    let partner: { i: number; record: Json } | null = null;
    if (partnerStage) {
      const j = this.byKey.get(`${m.step}|${m.task}|${m.attempt}|${partnerStage}`);
      if (j !== undefined) partner = { i: j, record: (await r.read(r.entries[j]!)) as Json };
    }
    const second = m.stage === "second" ? record : partner?.record;
    const refl = second && isObj(second.reflection) ? second.reflection : null;
    const reflectionDiff = refl ? lineDiff(str(refl.memoryBefore), str(refl.rulebook)) : null;
    return { i, record, partner, reflectionDiff };
  }

  /** A page of memory writes with each rulebook diffed against the one it replaced. */
  async memoryPage(q: { offset: number; limit: number; worker: number | null }): Promise<{
    total: number;
    offset: number;
    workers: number[];
    items: (MemoryMeta & {
      i: number;
      line: number;
      rulebook: string;
      previous: string | null;
      diff: DiffPart[];
    })[];
  }> {
    const idx = this.memory;
    await idx.refresh();
    const all = idx.entries;
    const workers = [...new Set(all.map((e) => e.meta.worker).filter((w): w is number => w !== null))].sort(
      (a, b) => a - b,
    );
    const pool: number[] = [];
    all.forEach((e, i) => {
      if (q.worker === null || e.meta.worker === q.worker) pool.push(i);
    });
    const offset = Math.max(0, Math.min(q.offset, pool.length));
    const chosen = pool.slice(offset, offset + q.limit);
    const records = await idx.readMany(chosen.map((i) => all[i]!));
    const items = chosen.map((i, k) => {
      const rec = records[k];
      const o: Json = isObj(rec) ? rec : {};
      const rulebook = str(o.rulebook);
      const previous = typeof o.previous === "string" ? o.previous : null;
      return {
        i,
        line: all[i]!.line,
        ...all[i]!.meta,
        rulebook,
        previous,
        diff: lineDiff(previous ?? "", rulebook),
      };
    });
    return { total: pool.length, offset, workers, items };
  }

  /** Sizes and modification times of the files that change while a run trains. */
  fingerprint(): string {
    const parts: string[] = [];
    for (const f of ["status.json", "metrics.jsonl", "rollouts.jsonl", "memory.jsonl"]) {
      try {
        const s = statSync(this.file(f));
        parts.push(`${s.size}:${s.mtimeMs}`);
      } catch {
        parts.push("-");
      }
    }
    return parts.join("|");
  }
}

function rolloutMeta(r: unknown): RolloutMeta | null {
  if (!isObj(r)) return null;
  return {
    step: num(r.step) ?? 0,
    task: str(r.task, "?"),
    episode: str(r.episode),
    stage: str(r.stage, "?"),
    attempt: num(r.attempt) ?? 0,
    reward: num(r.reward),
    success: typeof r.success === "boolean" ? r.success : null,
    stopReason: typeof r.stopReason === "string" ? r.stopReason : null,
    reflection: isObj(r.reflection),
    turns: Array.isArray(r.trace) ? r.trace.length : 0,
  };
}

/** Line diff with the package `diff`; keeps only the fields the page needs. */
export function lineDiff(before: string, after: string): DiffPart[] {
  const withNl = (s: string) => (s === "" || s.endsWith("\n") ? s : s + "\n");
  return diffLines(withNl(before), withNl(after)).map((c) => {
    const part: DiffPart = { value: c.value };
    if (c.added) part.added = true;
    if (c.removed) part.removed = true;
    return part;
  });
}

/** The algorithm's name: training writes `algo` as an object (`{"name": "erl", ...}`), older files as a string. */
export function algoName(config: Json): string {
  if (config.kind === "sft") return "sft";
  return isObj(config.algo) ? str(config.algo.name, "?") : str(config.algo, "?");
}

/** What a run trains on: its environment, or a fine-tuning run's data file. */
export function envName(config: Json): string {
  if (config.kind === "sft" && isObj(config.data))
    return str(config.data.train, "?").split(/[\\/]/).pop() ?? "?";
  return str(config.env, "?");
}

/** Runs that share every config key except name, seed and output paths belong to one seed group. */
function groupKey(config: Json, id: string): string {
  if (Object.keys(config).length === 0) return id;
  const skip = new Set([
    "name",
    "seed",
    "description",
    "runsDir",
    "outDir",
    "out",
    "runDir",
    "dir",
    "output",
    "resume",
    "createdAt",
  ]);
  const rest: Json = {};
  for (const k of Object.keys(config).sort()) if (!skip.has(k)) rest[k] = config[k];
  const algo = algoName(config);
  const env = envName(config);
  // A readable prefix plus a short hash of the remaining settings.
  let h = 0x811c9dc5;
  const text = JSON.stringify(rest);
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return `${env} · ${algo} · ${h.toString(16).padStart(8, "0").slice(0, 6)}`;
}

/** The runs directory: discovery (cached briefly) and the `Run` objects. */
export class RunStore {
  readonly root: RunsRoot;
  private runs = new Map<string, Run>();
  private reports = new Map<string, string>();
  private scannedAt = -Infinity;

  constructor(
    dir: string,
    /** How long a directory scan is reused, in milliseconds. */
    private readonly scanTtlMs = 1000,
  ) {
    this.root = new RunsRoot(dir);
  }

  /** Re-scans the runs directory for run directories and `report.md` files if the last scan is stale. */
  scan(force = false): void {
    const now = performance.now();
    if (!force && now - this.scannedAt < this.scanTtlMs) return;
    this.scannedAt = now;
    const found = new Map<string, string>();
    const reports = new Map<string, string>();
    const seen = new Set<string>();
    const walk = (dir: string, depth: number): void => {
      if (seen.has(dir)) return;
      seen.add(dir);
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        return;
      }
      const rel = relative(this.root.real, dir).split(sep).join("/");
      if (names.includes("report.md")) reports.set(rel || ".", dir);
      if (RUN_MARKERS.some((m) => names.includes(m)) && rel !== "") found.set(rel, dir);
      if (depth >= MAX_DEPTH) return;
      for (const name of names.sort()) {
        if (SKIP_DIRS.has(name) || name.startsWith(".")) continue;
        const child = this.root.tryResolve(rel ? `${rel}/${name}` : name);
        if (!child) continue; // missing, or a link leading out of the runs directory
        try {
          if (!statSync(child).isDirectory()) continue;
        } catch {
          continue;
        }
        walk(child, depth + 1);
      }
    };
    walk(this.root.real, 0);
    for (const id of [...this.runs.keys()]) if (!found.has(id)) this.runs.delete(id);
    for (const [id, dir] of found) if (!this.runs.has(id)) this.runs.set(id, new Run(id, dir, this.root));
    this.reports = reports;
  }

  list(): Run[] {
    this.scan();
    return [...this.runs.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  get(id: string): Run | null {
    this.scan();
    return this.runs.get(id) ?? null;
  }

  reportList(): ReportInfo[] {
    this.scan();
    const out: ReportInfo[] = [];
    for (const [id, dir] of this.reports) {
      try {
        const file = join(dir, "report.md");
        const text = this.reportText(id);
        if (text === null) continue;
        const heading = /^#\s+(.+)$/m.exec(text);
        out.push({ id, title: heading?.[1]?.trim() ?? id, mtimeMs: statSync(file).mtimeMs });
      } catch {
        // vanished between scan and read
      }
    }
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  /** The directory of a known report, or null. */
  reportDir(id: string): string | null {
    this.scan();
    return this.reports.get(id) ?? null;
  }

  /** The text of a known report, or null when missing or a link out of the runs directory. */
  reportText(id: string): string | null {
    const dir = this.reportDir(id);
    if (!dir) return null;
    const real = this.root.tryResolve(relative(this.root.real, join(dir, "report.md")).split(sep).join("/"));
    if (!real) return null;
    try {
      return readFileSync(real, "utf8");
    } catch {
      return null;
    }
  }
}

export type { IndexEntry };
