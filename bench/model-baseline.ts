/**
 * A model's first-attempt baseline from `erl eval --out` rollout files: for each file, the success
 * rate (HotpotQA: exact match), mean reward, mean F1 (HotpotQA), the parse rate (the share of replies
 * the environment could read as an action, a tool call or a \boxed{} answer) and how episodes ended.
 * Prints one markdown table.
 *
 *   node --import tsx bench/model-baseline.ts runs/baseline/frozenlake-paper.jsonl ...
 *
 * bench/smollm2-baseline.sh runs the evaluations for SmolLM2-135M-Instruct and then this.
 */
import { existsSync } from "node:fs";
import { readJsonl } from "../src/util/jsonl.ts";
import { die, guard } from "./args.ts";
import { basename } from "node:path";

interface Rec {
  env: string;
  success: boolean;
  reward: number;
  stopReason: string;
  trace: { valid: boolean; info?: Record<string, unknown> }[];
  sampledTokens: number;
  system: string;
}

function pct(x: number): string {
  return `${(100 * x).toFixed(1)}%`;
}

const rows: string[] = [
  "| file | env | episodes | success (HotpotQA: EM) | mean reward | F1 | parse rate (replies) | replies | end reasons |",
  "|---|---|---|---|---|---|---|---|---|",
];
const files = process.argv.slice(2);
if (files.length === 0) die("give one or more rollout files (`erl eval --out`)");
for (const f of files) {
  if (f.startsWith("-")) die(`unknown option ${f} (this script takes only rollout files)`);
  if (!existsSync(f)) die(`${f}: no such file`);
}
await guard(() => {
  for (const file of files) {
    const recs = readJsonl<Rec>(file);
    if (recs.length === 0) {
      rows.push(`| ${basename(file)} | – | 0 | | | | | | |`);
      continue;
    }
    const n = recs.length;
    const success = recs.filter((r) => r.success).length / n;
    const reward = recs.reduce((a, r) => a + r.reward, 0) / n;
    const steps = recs.flatMap((r) => r.trace);
    const parsed = steps.filter((s) => s.valid).length;
    const f1s = recs.map((r) => {
      const last = r.trace[r.trace.length - 1];
      const f1 = last?.info?.f1;
      return typeof f1 === "number" ? f1 : 0;
    });
    const isHotpot = recs[0]!.env === "hotpotqa";
    const ends = new Map<string, number>();
    for (const r of recs) ends.set(r.stopReason, (ends.get(r.stopReason) ?? 0) + 1);
    rows.push(
      `| ${basename(file)} | ${recs[0]!.env} | ${n} | ${pct(success)} | ${reward.toFixed(3)} | ${
        isHotpot ? (f1s.reduce((a, b) => a + b, 0) / n).toFixed(3) : "–"
      } | ${steps.length ? pct(parsed / steps.length) : "–"} | ${steps.length} | ${[...ends]
        .map(([k, v]) => `${k} ${v}`)
        .join(", ")} |`,
    );
  }
  console.log(rows.join("\n"));
});
