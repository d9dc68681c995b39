/**
 * Crash-safe checkpoints of a training run. A checkpoint is a directory
 * `checkpoints/step-NNNNNN/` holding the engine's state (`engine/`, written by `engine.saveState`)
 * and the run's own state (`run.json`: memory, RNG, data cursor, elapsed time and the byte offsets
 * of the JSONL files). It is assembled in a temporary directory and renamed into place, and only
 * then is `checkpoints/latest` replaced atomically, so `latest` always names a complete checkpoint
 * whatever moment a `kill -9` hits.
 */
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  openSync,
  fsyncSync,
  closeSync,
} from "node:fs";
import { join } from "node:path";
import type { RngState } from "../util/rng.ts";
import { writeFileAtomic } from "../util/jsonl.ts";
import { UserError } from "../util/errors.ts";
import type { Offsets } from "./runfiles.ts";
import type { CursorState } from "./data.ts";

export const CHECKPOINT_VERSION = 1;

export interface RunCheckpoint {
  version: number;
  /** Steps completed when the checkpoint was taken. */
  step: number;
  /** Seconds of run time so far (cumulative over resumes). */
  elapsed: number;
  rng: RngState;
  cursor: CursorState;
  /** The algorithm's memory (`MemoryStore.toJSON()`), or null for algorithms without one. */
  memory: unknown;
  offsets: Offsets;
  /** Counters kept across resumes (e.g. total memory updates). */
  counters: Record<string, number>;
  /** Set on the run's last checkpoint (steps or time budget reached): nothing is left to do. */
  final?: boolean;
}

export function checkpointName(step: number): string {
  return `step-${String(step).padStart(6, "0")}`;
}

function fsyncDir(dir: string): void {
  // Makes the rename durable; some file systems refuse to open directories, which is harmless here.
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    /* best effort */
  }
}

/**
 * Writes a checkpoint. `saveEngine` receives a directory that does not exist yet and must create it.
 * Keeps the newest `keep` checkpoints.
 */
export async function writeCheckpoint(
  checkpointsDir: string,
  state: RunCheckpoint,
  saveEngine: (dir: string) => Promise<void>,
  keep: number,
): Promise<string> {
  mkdirSync(checkpointsDir, { recursive: true });
  const name = checkpointName(state.step);
  const tmp = join(checkpointsDir, `.tmp-${name}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  try {
    await saveEngine(join(tmp, "engine"));
    writeFileAtomic(join(tmp, "run.json"), JSON.stringify(state) + "\n");
    fsyncDir(tmp);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true }); // a full disk: free what was written
    throw e;
  }
  const final = join(checkpointsDir, name);
  // A directory of this name can only be left over from a crash before `latest` named it.
  rmSync(final, { recursive: true, force: true });
  renameSync(tmp, final);
  fsyncDir(checkpointsDir);
  writeFileAtomic(join(checkpointsDir, "latest"), name + "\n");
  prune(checkpointsDir, name, keep);
  return final;
}

function prune(checkpointsDir: string, latest: string, keep: number): void {
  const names = readdirSync(checkpointsDir)
    .filter((n) => /^step-\d+$/.test(n))
    .sort();
  const keepSet = new Set(names.slice(-keep));
  keepSet.add(latest);
  for (const n of names)
    if (!keepSet.has(n)) rmSync(join(checkpointsDir, n), { recursive: true, force: true });
  for (const n of readdirSync(checkpointsDir))
    if (n.startsWith(".tmp-")) rmSync(join(checkpointsDir, n), { recursive: true, force: true });
}

/** The newest complete checkpoint, or null when the run has none yet. */
export function readLatestCheckpoint(checkpointsDir: string): { dir: string; state: RunCheckpoint } | null {
  const pointer = join(checkpointsDir, "latest");
  if (!existsSync(pointer)) return null;
  const name = readFileSync(pointer, "utf8").trim();
  const dir = join(checkpointsDir, name);
  const runFile = join(dir, "run.json");
  if (!/^step-\d+$/.test(name) || !existsSync(runFile))
    throw new UserError(
      `${pointer}: names "${name}", which is not a complete checkpoint; the run directory is damaged`,
    );
  let state: RunCheckpoint;
  try {
    state = JSON.parse(readFileSync(runFile, "utf8")) as RunCheckpoint;
  } catch (e) {
    throw new UserError(`${runFile}: unreadable (${(e as Error).message})`);
  }
  if (state.version !== CHECKPOINT_VERSION)
    throw new UserError(
      `${runFile}: checkpoint version ${state.version}, this build reads ${CHECKPOINT_VERSION}`,
    );
  return { dir, state };
}

/** A checkpoint's run state, or the reason it cannot be used. */
export function readCheckpointDir(dir: string): { dir: string; state: RunCheckpoint } {
  const runFile = join(dir, "run.json");
  if (!existsSync(runFile)) throw new UserError(`${runFile}: missing; the checkpoint is incomplete`);
  let state: RunCheckpoint;
  try {
    state = JSON.parse(readFileSync(runFile, "utf8")) as RunCheckpoint;
  } catch (e) {
    throw new UserError(`${runFile}: unreadable (${(e as Error).message})`);
  }
  if (typeof state !== "object" || state === null || typeof state.step !== "number")
    throw new UserError(`${runFile}: not a checkpoint's run state`);
  if (state.version !== CHECKPOINT_VERSION)
    throw new UserError(
      `${runFile}: checkpoint version ${state.version}, this build reads ${CHECKPOINT_VERSION}`,
    );
  return { dir, state };
}

/**
 * The checkpoint directories to try on resume, best first: the one `latest` names, then the older
 * complete ones, newest first (a damaged latest checkpoint falls back to the previous one). When
 * `latest` is missing or names nothing usable, every `step-*` directory is a candidate.
 */
export function checkpointCandidates(checkpointsDir: string): string[] {
  if (!existsSync(checkpointsDir)) return [];
  const steps = readdirSync(checkpointsDir)
    .filter((n) => /^step-\d+$/.test(n))
    .sort()
    .reverse();
  const pointer = join(checkpointsDir, "latest");
  let latest: string | null = null;
  if (existsSync(pointer)) {
    try {
      const name = readFileSync(pointer, "utf8").trim();
      if (/^step-\d+$/.test(name)) latest = name;
    } catch {
      latest = null;
    }
  }
  const older = latest ? steps.filter((n) => n < latest) : steps;
  return [...(latest ? [latest] : []), ...older].map((n) => join(checkpointsDir, n));
}
