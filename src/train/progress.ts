/**
 * Progress output for long work. On a terminal: one bar redrawn in place ("first 12/32 ███░░ 4.1s").
 * Otherwise (a log file, CI, a parent process reading our stdout): a plain line when a phase
 * starts, then at most one line per `plainEverySec`, and one when it ends — never carriage returns.
 * Also formats the one-line summary printed after each training step.
 */

export interface Sink {
  write(text: string): void;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

export class Progress {
  private label = "";
  private startedAt = 0;
  private lastPlain = 0;
  private drawn = false;

  constructor(
    private readonly out: Sink = process.stdout,
    private readonly plainEverySec = 10,
    private readonly now: () => number = () => performance.now() / 1000,
    private readonly quiet = false,
  ) {}

  get tty(): boolean {
    return Boolean(this.out.isTTY);
  }

  /** Reports `done` of `total` for a named piece of work; a new label starts a new bar. `note`
   * (e.g. "turn 3/8") says where the unfinished work is. */
  update(label: string, done: number, total: number, note?: string): void {
    if (this.quiet) return;
    const t = this.now();
    if (label !== this.label) {
      this.clear();
      this.label = label;
      this.startedAt = t;
      this.lastPlain = t;
    }
    const elapsed = t - this.startedAt;
    if (this.tty) {
      const width = Math.max(10, Math.min(30, (this.out.columns ?? 80) - label.length - 30));
      const filled = total > 0 ? Math.round((width * Math.min(done, total)) / total) : 0;
      const bar = "█".repeat(filled) + "░".repeat(width - filled);
      this.out.write(
        `\r\x1b[K${label} ${bar} ${done}/${total}${note ? ` ${note}` : ""} ${elapsed.toFixed(1)}s`,
      );
      this.drawn = true;
      if (done >= total) this.clear();
    } else if (
      t - this.lastPlain >= this.plainEverySec ||
      (done >= total && this.lastPlain > this.startedAt)
    ) {
      // Plain output stays quiet for short phases: a first line after `plainEverySec`, then one per
      // interval, and a closing line only for a phase that printed before.
      this.out.write(`${label}: ${done}/${total}${note ? `, ${note}` : ""} (${elapsed.toFixed(1)}s)\n`);
      this.lastPlain = t;
    }
  }

  /** Prints a whole line, first clearing a bar in progress. */
  line(text: string): void {
    if (this.quiet) return;
    this.clear();
    this.out.write(text + "\n");
  }

  /** Removes the bar from the terminal. */
  clear(): void {
    if (this.drawn) {
      this.out.write("\r\x1b[K");
      this.drawn = false;
    }
    this.label = "";
  }
}

const fmt = (v: number | string | undefined, digits = 2): string =>
  typeof v !== "number" || !Number.isFinite(v) ? "-" : v.toFixed(digits);

/** The one-line summary of a finished training step. */
export function stepSummary(step: number, total: number, m: Record<string, number>): string {
  const parts = [
    `step ${String(step).padStart(String(total).length)}/${total}`,
    `first ${fmt(m["reward/first"])}`,
  ];
  if (m["reward/post_reflection"] !== undefined) parts.push(`post ${fmt(m["reward/post_reflection"])}`);
  if (m["gate_rate"] !== undefined) parts.push(`gate ${fmt(m["gate_rate"])}`);
  if (m["memory/updates"] !== undefined) parts.push(`mem+${m["memory/updates"]}`);
  parts.push(`loss ${fmt(m["loss"], 4)}`);
  if (m["kl"] !== undefined) parts.push(`kl ${fmt(m["kl"], 4)}`);
  const phases = ["sample", "env", "train", "other"]
    .filter((k) => m[`time/${k}`] !== undefined)
    .map((k) => `${k} ${fmt(m[`time/${k}`], 1)}`)
    .join(" ");
  parts.push(`${fmt(m["time/step"], 1)}s${phases ? ` (${phases})` : ""}`);
  return parts.join("  ");
}

/** The one-line summary of an evaluation. */
export function evalSummary(step: number, m: Record<string, number | string>): string {
  return `eval @${step}  reward ${fmt(m["eval/reward"], 3)}  pass@1 ${fmt(m["eval/pass@1"], 3)}  pass@n ${fmt(m["eval/pass@n"], 3)}  n ${m["eval/n"] ?? "-"}  ${fmt(m["time/eval"], 1)}s`;
}
