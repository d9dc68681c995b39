/**
 * The comparison report: reads finished run directories, aggregates them over seeds and writes
 * `report.md` (the final table, the stated budget and settings) with SVG plots of eval reward and
 * of pre- vs post-reflection training reward, against steps and against wall-clock time.
 * "±" is the sample standard deviation over seeds; shaded bands span the lowest to highest seed.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { readJsonlTolerant } from "../util/jsonl.ts";
import { lineChart, PALETTE, type Series } from "./svg.ts";

type Rec = Record<string, unknown>;

export interface RunData {
  algo: string;
  seed: number;
  dir: string;
  train: Rec[];
  evals: Rec[];
}

export function loadRunData(algo: string, seed: number, dir: string): RunData {
  const recs = readJsonlTolerant<Rec>(join(dir, "metrics.jsonl"));
  return {
    algo,
    seed,
    dir,
    train: recs.filter((r) => r.kind === "train"),
    evals: recs.filter((r) => r.kind === "eval"),
  };
}

const num = (r: Rec | undefined, k: string): number | undefined => {
  const v = r?.[k];
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
};

export function mean(xs: readonly number[]): number {
  return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN;
}

/** Sample standard deviation (n − 1); 0 for a single value. */
export function std(xs: readonly number[]): number {
  if (xs.length < 2) return 0;
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
}

export interface AlgoSummary {
  algo: string;
  seeds: number[];
  finalEval: number[];
  finalPass: number[];
  /** Mean training reward over the last quarter of steps, per seed. */
  firstReward: number[];
  postReward: number[];
  steps: number[];
  /** Wall-clock minutes per run. */
  minutes: number[];
}

export function summarise(runs: readonly RunData[], algos: readonly string[]): AlgoSummary[] {
  return algos.map((algo) => {
    const mine = runs.filter((r) => r.algo === algo);
    const s: AlgoSummary = {
      algo,
      seeds: [],
      finalEval: [],
      finalPass: [],
      firstReward: [],
      postReward: [],
      steps: [],
      minutes: [],
    };
    for (const r of mine) {
      s.seeds.push(r.seed);
      const last = r.evals[r.evals.length - 1];
      const ev = num(last, "eval/reward");
      if (ev !== undefined) s.finalEval.push(ev);
      const pass = num(last, "eval/pass@1");
      if (pass !== undefined) s.finalPass.push(pass);
      const tail = r.train.slice(Math.floor(r.train.length * 0.75));
      const first = tail.map((t) => num(t, "reward/first")).filter((v): v is number => v !== undefined);
      const post = tail
        .map((t) => num(t, "reward/post_reflection"))
        .filter((v): v is number => v !== undefined);
      if (first.length) s.firstReward.push(mean(first));
      if (post.length) s.postReward.push(mean(post));
      s.steps.push(r.train.length);
      const times = [...r.train, ...r.evals].map((t) => num(t, "time") ?? 0);
      s.minutes.push(Math.max(0, ...times) / 60);
    }
    return s;
  });
}

export function pm(xs: readonly number[], digits = 3): string {
  if (xs.length === 0) return "–";
  const m = mean(xs).toFixed(digits);
  return xs.length > 1 ? `${m} ± ${std(xs).toFixed(digits)}` : m;
}

/** The final table as markdown. */
export function finalTable(summaries: readonly AlgoSummary[]): string {
  const rows = [
    "| algorithm | final eval reward | per seed | pass@1 | train reward, first attempt (last 25%) | post-reflection (last 25%) | steps | minutes per run |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ];
  for (const s of summaries)
    rows.push(
      `| ${s.algo} | ${pm(s.finalEval)} | ${s.finalEval.map((v) => v.toFixed(3)).join(", ") || "–"} | ${pm(s.finalPass)} | ${pm(s.firstReward)} | ${pm(s.postReward)} | ${pm(s.steps, 0)} | ${pm(s.minutes, 1)} |`,
    );
  return rows.join("\n");
}

/** A plain-text version of the table for the terminal. */
export function terminalTable(summaries: readonly AlgoSummary[]): string {
  const head = ["algorithm", "final eval", "pass@1", "first (train)", "post-refl (train)", "min/run"];
  const body = summaries.map((s) => [
    s.algo,
    pm(s.finalEval),
    pm(s.finalPass),
    pm(s.firstReward),
    pm(s.postReward),
    pm(s.minutes, 1),
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i]!.length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(widths[i]!)).join("  ");
  return [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n");
}

/** Mean over seeds at each step of `key` in `kind` records, with the mean time and min/max band. */
export function curve(
  runs: readonly RunData[],
  kind: "train" | "eval",
  key: string,
  x: "step" | "time",
): Series {
  const byStep = new Map<number, { ys: number[]; ts: number[] }>();
  for (const r of runs)
    for (const rec of kind === "train" ? r.train : r.evals) {
      const step = num(rec, "step");
      const y = num(rec, key);
      if (step === undefined || y === undefined) continue;
      const e = byStep.get(step) ?? { ys: [], ts: [] };
      e.ys.push(y);
      e.ts.push((num(rec, "time") ?? 0) / 60);
      byStep.set(step, e);
    }
  const steps = [...byStep.keys()].sort((a, b) => a - b);
  const xOf = (s: number): number => (x === "step" ? s : mean(byStep.get(s)!.ts));
  return {
    name: key,
    points: steps.map((s) => [xOf(s), mean(byStep.get(s)!.ys)] as const),
    band: steps.map((s) => [xOf(s), Math.min(...byStep.get(s)!.ys), Math.max(...byStep.get(s)!.ys)] as const),
  };
}

export interface ReportMeta {
  title: string;
  command: string;
  /** The budget sentence: what is equalised between algorithms. */
  budget: string;
  /** Settings lines (model, steps, batch, lr, eval set, ...). */
  settings: string[];
  algos: string[];
  seeds: number[];
  /** Runs not finished (listed so a partial report says so). */
  unfinished: string[];
}

/** Writes report.md and its SVG plots into `dir`; returns the summaries. */
export function writeReport(dir: string, meta: ReportMeta, runs: readonly RunData[]): AlgoSummary[] {
  const summaries = summarise(runs, meta.algos);
  const colour = (algo: string): string => PALETTE[meta.algos.indexOf(algo) % PALETTE.length]!;
  const plots: { file: string; caption: string }[] = [];
  for (const x of ["step", "time"] as const) {
    const xLabel = x === "step" ? "training step" : "wall-clock time (minutes, mean over seeds)";
    const evalSeries = meta.algos.map((a) => ({
      ...curve(
        runs.filter((r) => r.algo === a),
        "eval",
        "eval/reward",
        x,
      ),
      name: a,
      color: colour(a),
    }));
    const evalFile = `eval-reward-vs-${x}.svg`;
    writeFileSync(
      join(dir, evalFile),
      lineChart({
        title: "Evaluation reward (first attempt, no memory)",
        xLabel,
        integerX: x === "step",
        yLabel: "eval reward",
        series: evalSeries,
        yRange: [0, 1],
      }),
    );
    plots.push({
      file: evalFile,
      caption: `Eval reward against ${x === "step" ? "steps" : "wall-clock time"}`,
    });

    const trainSeries: Series[] = [];
    for (const a of meta.algos) {
      const mine = runs.filter((r) => r.algo === a);
      const post = curve(mine, "train", "reward/post_reflection", x);
      trainSeries.push({
        ...curve(mine, "train", "reward/first", x),
        name: `${a} first attempt`,
        color: colour(a),
        dashed: true,
        band: [],
      });
      if (post.points.length)
        trainSeries.push({ ...post, name: `${a} post-reflection`, color: colour(a), band: [] });
    }
    const trainFile = `train-reward-vs-${x}.svg`;
    writeFileSync(
      join(dir, trainFile),
      lineChart({
        title: "Training reward: pre- (dashed) vs post-reflection (solid)",
        xLabel,
        integerX: x === "step",
        yLabel: "mean reward in the batch",
        series: trainSeries,
        yRange: [0, 1],
      }),
    );
    plots.push({
      file: trainFile,
      caption: `Training reward before and after reflection against ${x === "step" ? "steps" : "wall-clock time"}`,
    });
  }

  const lines = [
    `# ${meta.title}`,
    "",
    `Command: \`${meta.command}\``,
    "",
    `**Budget.** ${meta.budget}`,
    "",
    "## Final results",
    "",
    `Final evaluation reward: first attempt, initial prompt, no memory; mean ± standard deviation over ${meta.seeds.length} seed(s) (${meta.seeds.join(", ")}). Training rewards are batch means over the last quarter of the steps.`,
    "",
    finalTable(summaries),
    "",
  ];
  if (meta.unfinished.length)
    lines.push(
      `**Incomplete:** these runs have not finished and are left out: ${meta.unfinished.join(", ")}.`,
      "",
    );
  lines.push(
    "## Curves",
    "",
    "Lines are means over seeds; shaded bands span the lowest to the highest seed.",
    "",
  );
  for (const p of plots) lines.push(`### ${p.caption}`, "", `![${p.caption}](${p.file})`, "");
  lines.push("## Settings", "", ...meta.settings.map((s) => `- ${s}`), "", "## Runs", "");
  for (const r of runs) lines.push(`- ${r.algo}, seed ${r.seed}: \`${r.dir}\``);
  lines.push("");
  writeFileSync(join(dir, "report.md"), lines.join("\n"));
  return summaries;
}
