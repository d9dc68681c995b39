/**
 * Environment benchmark: loading, solving, generating, stepping and searching, timed with
 * performance.now(). Prints one table; figures go to docs/benchmarks.md with the machine and load.
 *
 *   node --import tsx bench/envs.ts
 */
import { cpus, loadavg } from "node:os";
import {
  FrozenLakeFamily,
  HotpotFamily,
  SokobanFamily,
  generateFrozenLakeTasks,
  generateSokobanTasks,
  solveFrozenLake,
  solveSokoban,
  type FrozenLakeTask,
} from "../src/envs/index.ts";
import { Rng } from "../src/util/rng.ts";
import { die } from "./args.ts";

if (process.argv.length > 2) die(`takes no arguments, got ${process.argv.slice(2).join(" ")}`);

const rows: [string, string][] = [];
function time<T>(label: string, fn: () => T, unit = "ms"): T {
  const t0 = performance.now();
  const out = fn();
  const ms = performance.now() - t0;
  rows.push([label, unit === "s" ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`]);
  return out;
}

const fl = new FrozenLakeFamily();
const sk = new SokobanFamily();
const flTrain = time("load FrozenLake train maps (10,000)", () => fl.loadSplit("train"));
time("BFS-solve all FrozenLake train maps", () => flTrain.forEach((t) => solveFrozenLake(t)));
const skTrain = time("load Sokoban train layouts (10,000)", () => sk.loadSplit("train"));
time("BFS-solve all Sokoban train layouts", () => skTrain.forEach((t) => solveSokoban(t)));
time("generate 1,000 FrozenLake tasks", () => generateFrozenLakeTasks(new Rng(1), 1000));
time("generate 1,000 Sokoban tasks", () => generateSokobanTasks(new Rng(1), 1000));
time("1,000 FrozenLake episodes replaying the solver's moves", () => {
  for (const task of flTrain.slice(0, 1000) as FrozenLakeTask[]) {
    const ep = fl.makeEpisode(task);
    for (const move of solveFrozenLake(task) ?? []) ep.step("```" + move + "```");
  }
});
const hq = new HotpotFamily();
const index = time("build the HotpotQA search index (4,858 paragraphs)", () => hq.index());
const questions = hq.loadSplit("train").map((t) => t.question);
time(`${questions.length} searches, top 5`, () => questions.forEach((q) => index.search(q, 5)));

const w = Math.max(...rows.map((r) => r[0].length));
console.log(
  `machine: ${cpus().length} × ${cpus()[0]?.model ?? "cpu"}; load average ${loadavg()[0]!.toFixed(1)}`,
);
for (const [label, value] of rows) console.log(`${label.padEnd(w)}  ${value}`);
