/**
 * One writer per run directory. The writer holds `<run>/writer.lock`, created with O_EXCL (so of two
 * processes that try at once exactly one succeeds) and holding the owner's pid, host and process
 * start time. A lock whose process is gone — or whose pid now belongs to another process, as after a
 * reboot (the start time or boot id differ) — is stale and is taken over; taking over is itself
 * serialised by a second O_EXCL file, so two processes that both find the same stale lock cannot
 * both win. A lock this host cannot judge (another host, or no /proc) is only broken on request
 * (`erl train --resume <run> --break-lock`).
 */
import { closeSync, openSync, readFileSync, statSync, unlinkSync, writeSync, fsyncSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import { processAlive } from "../util/process.ts";

export const LOCK_FILE = "writer.lock";

export interface LockOwner {
  pid: number;
  host: string;
  /** "<boot id>:<start time in clock ticks>" from /proc, or null where /proc is not available. */
  start: string | null;
  since: string;
  command: string;
}

/** This host's boot id and a process's start time, or null when /proc cannot tell. */
export function processStart(pid: number): string | null {
  try {
    const boot = readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 22 (starttime); fields after the parenthesised command name, which may contain spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const start = fields[19];
    return start ? `${boot}:${start}` : null;
  } catch {
    return null;
  }
}

/**
 * Whether the lock's owner is still running: "alive", "dead" (stale for sure) or "unknown" (another
 * host, or a live pid whose start time cannot be checked).
 */
export function ownerState(owner: LockOwner): "alive" | "dead" | "unknown" {
  if (owner.host !== hostname()) return "unknown";
  if (owner.pid === process.pid)
    return owner.start === null || owner.start === processStart(process.pid) ? "alive" : "dead";
  if (!processAlive(owner.pid)) return "dead";
  if (owner.start === null) return "unknown";
  const now = processStart(owner.pid);
  if (now === null) return "unknown";
  return now === owner.start ? "alive" : "dead"; // a different process now has this pid
}

function readRaw(file: string): string | null {
  try {
    return readFileSync(file, "utf8");
  } catch {
    return null;
  }
}

function parseOwner(raw: string): LockOwner | null {
  try {
    const v = JSON.parse(raw) as LockOwner;
    return typeof v === "object" && v !== null && typeof v.pid === "number" ? v : null;
  } catch {
    return null; // being written this instant, or torn by a crash
  }
}

function readOwner(file: string): LockOwner | null {
  const raw = readRaw(file);
  return raw === null ? null : parseOwner(raw);
}

function ageMs(file: string): number {
  try {
    return Date.now() - statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function createExclusive(file: string, content: string): boolean {
  let fd: number;
  try {
    fd = openSync(file, "wx");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  }
  try {
    writeSync(fd, content);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return true;
}

function describe(owner: LockOwner): string {
  return `process ${owner.pid} on ${owner.host} (since ${owner.since}: ${owner.command})`;
}

export class RunLock {
  private released = false;
  private constructor(
    readonly file: string,
    private readonly content: string,
  ) {}

  /**
   * Takes the run directory's writer lock (the directory must exist). Throws a `UserError` naming the
   * holder when another live process has it. `breakLock` takes over a lock whose holder cannot be
   * checked from here (another host, no /proc) or that is believed live.
   */
  static acquire(runDir: string, opts: { breakLock?: boolean; command?: string } = {}): RunLock {
    const file = join(runDir, LOCK_FILE);
    const me: LockOwner = {
      pid: process.pid,
      host: hostname(),
      start: processStart(process.pid),
      since: new Date().toISOString(),
      command: opts.command ?? process.argv.slice(1).join(" "),
    };
    const content = JSON.stringify(me) + "\n";
    for (let attempt = 0; attempt < 40; attempt++) {
      if (createExclusive(file, content)) return new RunLock(file, content);
      const raw = readRaw(file);
      if (raw === null) continue; // removed just now: try again
      const owner = parseOwner(raw);
      if (owner === null) {
        // Empty or half-written: its creator is writing it this instant, or was killed doing so.
        if (opts.breakLock || ageMs(file) > 2000) RunLock.takeOver(file, raw);
        else sleepSync(100);
        continue;
      }
      const state = ownerState(owner);
      if (state === "alive" && !opts.breakLock)
        throw new UserError(
          `${runDir}: this run is being written by ${describe(owner)}; a run has one writer. Wait for it, or stop it first`,
        );
      if (state === "unknown" && !opts.breakLock)
        throw new UserError(
          `${runDir}: locked by ${describe(owner)}, which cannot be checked from this machine; if no process is training this run, take it over with --break-lock`,
        );
      RunLock.takeOver(file, raw);
    }
    throw new UserError(`${file}: could not take the run's lock (it keeps changing hands)`);
  }

  /** Removes a stale lock, but only the one that was judged: another process may have taken it since. */
  private static takeOver(file: string, judged: string): void {
    const breaker = `${file}.break`;
    const mine = JSON.stringify({ pid: process.pid, start: processStart(process.pid) });
    if (!createExclusive(breaker, mine)) {
      // Someone else is breaking it right now, or died doing so: clear a dead breaker, then retry.
      const b = readOwner(breaker);
      const dead = b
        ? ownerState({ ...b, host: hostname(), since: "", command: "" } as LockOwner) === "dead"
        : ageMs(breaker) > 2000; // torn by a crash while it was being written
      if (dead) unlinkQuiet(breaker);
      else sleepSync(20);
      return;
    }
    try {
      if (readRaw(file) === judged) unlinkQuiet(file);
    } finally {
      unlinkQuiet(breaker);
    }
  }

  /** Whether the lock file still holds this process's claim. */
  held(): boolean {
    try {
      return !this.released && readFileSync(this.file, "utf8") === this.content;
    } catch {
      return false;
    }
  }

  release(): void {
    if (this.released) return;
    if (this.held()) unlinkQuiet(this.file);
    this.released = true;
  }
}

function unlinkQuiet(file: string): void {
  try {
    unlinkSync(file);
  } catch {
    /* already gone */
  }
}
