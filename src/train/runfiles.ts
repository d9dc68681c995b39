/**
 * The files of a run directory (docs/run-format.md) and the few operations training does on them:
 * create, append whole records, write status.json atomically, measure and truncate the JSONL files
 * to a checkpoint's byte offsets on resume.
 */
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  ftruncateSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { appendJsonl, writeFileAtomic } from "../util/jsonl.ts";
import { UserError } from "../util/errors.ts";
import type { EngineInfo } from "../engine/api.ts";

export const JSONL_FILES = ["metrics", "rollouts", "memory"] as const;
export type JsonlName = (typeof JSONL_FILES)[number];
export type Offsets = Record<JsonlName, number>;

/** "stopped": interrupted by SIGINT or SIGTERM (Ctrl-C); the last checkpoint stands and --resume continues. */
export type RunState = "running" | "finished" | "failed" | "stopped";

export interface RunStatus {
  state: RunState;
  /** Steps completed. */
  step: number;
  totalSteps: number;
  updatedAt: string;
  error?: string;
  pid?: number;
}

/**
 * Whether a folder is a run directory rather than a model directory (both hold a config.json): a run
 * also has a status, metrics or checkpoints folder from the moment it is created.
 */
export function isRunDirectory(dir: string): boolean {
  return (
    existsSync(join(dir, "config.json")) &&
    ["status.json", "metrics.jsonl", "checkpoints"].some((f) => existsSync(join(dir, f)))
  );
}

export class RunFiles {
  constructor(readonly dir: string) {}

  path(name: JsonlName): string {
    return join(this.dir, `${name}.jsonl`);
  }
  get configFile(): string {
    return join(this.dir, "config.json");
  }
  get statusFile(): string {
    return join(this.dir, "status.json");
  }
  get engineFile(): string {
    return join(this.dir, "engine.json");
  }
  get checkpointsDir(): string {
    return join(this.dir, "checkpoints");
  }

  /** Creates the directory and empty JSONL files (the run must not exist yet). */
  create(config: unknown): void {
    mkdirSync(this.checkpointsDir, { recursive: true });
    for (const n of JSONL_FILES) writeFileAtomic(this.path(n), "");
    writeFileAtomic(this.configFile, JSON.stringify(config, null, 2) + "\n");
  }

  /** Removes what `create` wrote (a new run whose model did not load, in a folder that existed). */
  remove(): void {
    for (const f of [
      this.configFile,
      this.statusFile,
      this.engineFile,
      ...JSONL_FILES.map((n) => this.path(n)),
    ])
      rmSync(f, { force: true });
    rmSync(this.checkpointsDir, { recursive: true, force: true });
  }

  /** Replaces config.json (a resume that repairs engine.url, engine.python or model.path). */
  writeConfig(config: unknown): void {
    writeFileAtomic(this.configFile, JSON.stringify(config, null, 2) + "\n");
  }

  exists(): boolean {
    return existsSync(this.configFile);
  }

  readConfig(): unknown {
    try {
      return JSON.parse(readFileSync(this.configFile, "utf8"));
    } catch (e) {
      throw new UserError(`${this.configFile}: cannot read the run's config (${(e as Error).message})`);
    }
  }

  readStatus(): RunStatus | null {
    if (!existsSync(this.statusFile)) return null;
    try {
      return JSON.parse(readFileSync(this.statusFile, "utf8")) as RunStatus;
    } catch {
      return null; // status.json is only ever replaced atomically; unreadable means absent
    }
  }

  writeStatus(status: Omit<RunStatus, "updatedAt">): void {
    writeFileAtomic(
      this.statusFile,
      JSON.stringify({ ...status, updatedAt: new Date().toISOString() }) + "\n",
    );
  }

  /**
   * Records the engine a (re)start of the run got: its device, the dtype and thread count it chose and
   * why, its CPU. engine.json keeps one entry per start, newest last (a resumed run may land on another
   * machine); it is replaced atomically and never truncated on resume.
   */
  recordEngine(step: number, info: EngineInfo): void {
    let starts: unknown[] = [];
    if (existsSync(this.engineFile)) {
      try {
        const old = JSON.parse(readFileSync(this.engineFile, "utf8")) as { starts?: unknown };
        if (Array.isArray(old.starts)) starts = old.starts;
      } catch {
        starts = []; // replaced atomically; unreadable means absent
      }
    }
    const entry = {
      at: new Date().toISOString(),
      step,
      device: info.device,
      dtype: info.dtype,
      ...(info.dtypeReason !== undefined ? { dtypeReason: info.dtypeReason } : {}),
      ...(info.threads !== undefined ? { threads: info.threads } : {}),
      ...(info.threadsReason !== undefined ? { threadsReason: info.threadsReason } : {}),
      ...(info.cpu !== undefined ? { cpu: info.cpu } : {}),
      engineVersion: info.engineVersion,
      torch: info.torch,
    };
    writeFileAtomic(this.engineFile, JSON.stringify({ starts: [...starts, entry] }, null, 2) + "\n");
  }

  append(name: JsonlName, records: readonly unknown[]): void {
    appendJsonl(this.path(name), records);
  }

  /** Current byte sizes of the JSONL files (missing files count as empty). */
  offsets(): Offsets {
    const size = (n: JsonlName): number => (existsSync(this.path(n)) ? statSync(this.path(n)).size : 0);
    return { metrics: size("metrics"), rollouts: size("rollouts"), memory: size("memory") };
  }

  /**
   * Cuts every JSONL file back to `offsets`, dropping whatever a crashed process appended after the
   * checkpoint (whole records or a torn last line). A file shorter than its offset means the run
   * directory was damaged from outside: that is an error, not something to paper over.
   */
  truncateTo(offsets: Offsets): void {
    for (const n of JSONL_FILES) {
      const file = this.path(n);
      if (!existsSync(file)) {
        if (offsets[n] === 0) {
          writeFileAtomic(file, "");
          continue;
        }
        throw new UserError(`${file}: missing, but the checkpoint expects ${offsets[n]} bytes`);
      }
      const size = statSync(file).size;
      if (size < offsets[n])
        throw new UserError(
          `${file}: ${size} bytes, shorter than the checkpoint's ${offsets[n]}; the run directory is damaged`,
        );
      if (size === offsets[n]) continue;
      const fd = openSync(file, "r+");
      try {
        ftruncateSync(fd, offsets[n]);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
  }
}

/**
 * The run that `--resume DIR` names, for `erl train` and `erl sft`: refuses a `--set` on any key but
 * `settable` (where the engine and model are found: that repairs a run whose engine.url or model.path
 * was wrong, and changes nothing the run computes) and a directory that holds no run.
 */
export function runFilesForResume(
  dir: string,
  sets: readonly string[],
  settable: readonly string[],
): RunFiles {
  const bad = sets.find((s) => !settable.includes(s.slice(0, s.indexOf("=")).trim()));
  if (bad !== undefined)
    throw new UserError(
      `--set ${bad}: with --resume only ${settable.join(", ")} may be set (the run keeps its own config)`,
    );
  const files = new RunFiles(resolve(dir));
  if (!files.exists()) throw new UserError(`--resume ${dir}: not a run directory (no config.json)`);
  return files;
}
