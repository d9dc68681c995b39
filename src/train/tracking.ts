/**
 * Experiment tracking: a run's metrics records also go to TensorBoard and/or Weights & Biases when
 * its config asks (`tracking`), through the official Python libraries in a small child process
 * (engine/erl_engine/tracking.py; it loads no model). metrics.jsonl stays the source of truth: the
 * tracker gets each record after it is appended there, and a tracker that dies mid-run costs a
 * warning line, never the run.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { basename, join } from "node:path";
import { UserError } from "../util/errors.ts";
import { lineSplitter } from "../util/lines.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import type { RunConfig } from "./config.ts";

export interface Tracker {
  /** Sends one metrics record (its numeric keys become scalars at `step`). */
  log(record: Record<string, unknown>): void;
  /** Ends the stream and waits for the child to flush and exit. */
  close(): Promise<void>;
}

/** The child's command line for a config, or null when the config tracks nothing. */
export function trackingArgs(cfg: RunConfig, runDir: string, configFile: string): string[] | null {
  const t = cfg.tracking;
  if (!t.tensorboard && t.wandb === "off") return null;
  return [
    "-m",
    "erl_engine.tracking",
    "--run-dir",
    runDir,
    ...(t.tensorboard ? ["--tensorboard"] : []),
    ...(t.wandb !== "off"
      ? [
          "--wandb",
          t.wandb,
          "--project",
          t.wandbProject,
          "--name",
          basename(runDir),
          "--config-json",
          configFile,
        ]
      : []),
  ];
}

/**
 * Starts the tracker of a run (null when its config tracks nothing); refuses with a UserError when
 * the libraries are missing. `warn` gets one line if the tracker dies later.
 */
export async function startTracker(
  cfg: RunConfig,
  runDir: string,
  warn: (line: string) => void,
): Promise<Tracker | null> {
  const configFile = join(runDir, "config.json");
  const args = trackingArgs(cfg, runDir, configFile);
  if (!args) return null;
  const python = cfg.tracking.python ?? defaultPython();
  const child = spawn(python, args, {
    cwd: join(REPO_ROOT, "engine"),
    stdio: ["pipe", "pipe", "pipe"],
    env: { ...process.env, PYTHONPATH: join(REPO_ROOT, "engine") },
  });
  const stderr: string[] = [];
  child.stderr!.setEncoding("utf8").on(
    "data",
    lineSplitter((l) => stderr.push(l) > 20 && stderr.shift()),
  );
  const exited = new Promise<number | null>((resolve) => {
    child.on("error", (e) => {
      stderr.push(`cannot start ${python}: ${e.message}`);
      resolve(null);
    });
    child.on("exit", (code) => resolve(code));
  });
  const ready = new Promise<boolean>((resolve) => {
    child.stdout!.setEncoding("utf8").on(
      "data",
      lineSplitter((l) => l.includes('"ready"') && resolve(true)),
    );
    void exited.then(() => resolve(false));
  });
  if (!(await ready))
    throw new UserError(
      `tracking: ${stderr.at(-1) ?? `${python} -m erl_engine.tracking exited`}` +
        " (install the tracking libraries into the engine's Python, or set tracking.python)",
    );
  return new ProcessTracker(child, exited, warn, stderr);
}

class ProcessTracker implements Tracker {
  private dead = false;
  constructor(
    private readonly child: ChildProcess,
    private readonly exited: Promise<number | null>,
    private readonly warn: (line: string) => void,
    private readonly stderr: string[],
  ) {
    void exited.then(() => {
      if (!this.closing) this.died();
    });
    child.stdin!.on("error", () => this.died());
  }
  private closing = false;

  private died(): void {
    if (this.dead) return;
    this.dead = true;
    this.warn(
      `tracking stopped (${this.stderr.at(-1) ?? "the tracker exited"}); metrics.jsonl has every record`,
    );
  }

  log(record: Record<string, unknown>): void {
    if (this.dead) return;
    const { step, kind: _kind, ...metrics } = record;
    this.child.stdin!.write(`${JSON.stringify({ step, metrics })}\n`);
  }

  async close(): Promise<void> {
    this.closing = true;
    if (!this.dead) this.child.stdin!.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 60_000);
    const code = await this.exited;
    clearTimeout(timer);
    if (code !== 0 && !this.dead) this.died();
  }
}
