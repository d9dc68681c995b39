/**
 * `erl data stats <env> [--split train|test]`: what a split holds. For the grid games: task
 * count, grid sizes, and the histogram of optimal solution lengths from the BFS solvers. For
 * HotpotQA: question and corpus counts, and how often searching with the question text puts the gold
 * paragraphs in the top 5 results.
 */
import { UserError } from "../util/errors.ts";
import { getEnv, knownEnvs } from "../envs/registry.ts";
import type { EnvFamily, Split, Task } from "../envs/types.ts";
import { solveFrozenLake, type FrozenLakeTask } from "../envs/frozenlake.ts";
import { solveSokoban, type SokobanTask } from "../envs/sokoban.ts";
import { HotpotFamily, type HotpotTask } from "../envs/hotpotqa.ts";
import { envOptionsFromFlags, parseArgsOrExplain, parseSplit } from "./play.ts";

const HELP = `usage: erl data stats <env> [--split train|test] [--json] [--data-dir DIR] [--corpus FILE]
       erl data curriculum --out FILE [--docs N] [--seed N] [--mix real-lm|frozenlake] [--max-size N] [--large F]

Prints what a data split holds (both splits when --split is not given):
  frozenlake, sokoban  task count, grid sizes, histogram of optimal solution lengths (BFS)
  hotpotqa             question and corpus counts, question types, and the share of questions whose
                       gold paragraphs are in the top-5 search results when searching the question text

  --json          print one JSON object per split instead of text
  --data-dir DIR  read the environment's data from DIR instead of data/<env>
  --corpus FILE   HotpotQA: use this JSONL corpus ({id,title,text})

erl data curriculum writes erl-tiny's curriculum as chat JSONL for erl sft (docs/sft.md): play under
a rulebook, second attempts, rule-free play, reflections and binding drills on train-split boards, with
letters drawn per document.
  --out FILE      the chat JSONL to write
  --docs N        documents (default 2000)
  --seed N        default 0; document i depends only on (seed, i)
  --mix NAME      real-lm (both games, default) or frozenlake
  --max-size N    largest FrozenLake board side, 2-9 (default 9)
  --large F       share of FrozenLake documents on boards of side 5 and up (default 0.5)`;

export interface GridStats {
  env: string;
  split: Split;
  tasks: number;
  sizes: Record<string, number>;
  optimalLength: Record<string, number>;
  unsolvable: number;
}

export interface QaStats {
  env: string;
  split: Split;
  questions: number;
  corpus: number;
  types: Record<string, number>;
  /** Questions with known gold titles. */
  withGold: number;
  goldBothTop5: number;
  goldAnyTop5: number;
}

function count(map: Record<string, number>, key: string | number): void {
  map[key] = (map[key] ?? 0) + 1;
}

function sortedNumeric(map: Record<string, number>): [string, number][] {
  return Object.entries(map).sort((a, b) => parseFloat(a[0]) - parseFloat(b[0]));
}

export function gridStats(family: EnvFamily<Task>, split: Split): GridStats {
  const tasks = family.loadSplit(split);
  const stats: GridStats = {
    env: family.name,
    split,
    tasks: tasks.length,
    sizes: {},
    optimalLength: {},
    unsolvable: 0,
  };
  for (const t of tasks) {
    let path: unknown[] | null;
    let size: number;
    if (family.name === "frozenlake") {
      path = solveFrozenLake(t as FrozenLakeTask);
      size = (t as FrozenLakeTask).size;
    } else {
      path = solveSokoban(t as SokobanTask);
      size = (t as SokobanTask).size;
    }
    count(stats.sizes, `${size}x${size}`);
    if (path === null) stats.unsolvable++;
    else count(stats.optimalLength, path.length);
  }
  return stats;
}

export function qaStats(family: HotpotFamily, split: Split): QaStats {
  const tasks = family.loadSplit(split) as HotpotTask[];
  const index = family.index();
  const stats: QaStats = {
    env: family.name,
    split,
    questions: tasks.length,
    corpus: index.size,
    types: {},
    withGold: 0,
    goldBothTop5: 0,
    goldAnyTop5: 0,
  };
  for (const t of tasks) {
    count(stats.types, t.type ?? "unknown");
    if (!t.supportingTitles || t.supportingTitles.length === 0) continue;
    stats.withGold++;
    const found = new Set(index.search(t.question, 5).map((h) => h.title));
    const hits = t.supportingTitles.filter((title) => found.has(title)).length;
    if (hits === t.supportingTitles.length) stats.goldBothTop5++;
    if (hits > 0) stats.goldAnyTop5++;
  }
  return stats;
}

function bar(n: number, max: number): string {
  return "#".repeat(Math.max(n > 0 ? 1 : 0, Math.round((30 * n) / Math.max(1, max))));
}

function pct(n: number, d: number): string {
  return d === 0 ? "n/a" : `${n}/${d} (${((100 * n) / d).toFixed(1)}%)`;
}

export function formatGridStats(s: GridStats): string {
  const lines = [`${s.env} ${s.split}: ${s.tasks} tasks`];
  lines.push(
    "  grid sizes: " +
      sortedNumeric(s.sizes)
        .map(([k, v]) => `${k} ${v}`)
        .join(", "),
  );
  lines.push("  optimal solution length (moves):");
  const entries = sortedNumeric(s.optimalLength);
  const max = Math.max(...entries.map(([, v]) => v));
  for (const [k, v] of entries) lines.push(`    ${k.padStart(2)}: ${String(v).padStart(6)} ${bar(v, max)}`);
  if (s.unsolvable > 0) lines.push(`  unsolvable: ${s.unsolvable}`);
  return lines.join("\n");
}

export function formatQaStats(s: QaStats): string {
  const types = Object.entries(s.types)
    .sort()
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return [
    `${s.env} ${s.split}: ${s.questions} questions (${types}); corpus ${s.corpus} paragraphs`,
    `  gold paragraphs in the top-5 search results (query = question text):`,
    `    all gold paragraphs: ${pct(s.goldBothTop5, s.withGold)}`,
    `    at least one:        ${pct(s.goldAnyTop5, s.withGold)}`,
  ].join("\n");
}

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgsOrExplain({
    args,
    allowPositionals: true,
    options: {
      split: { type: "string" },
      json: { type: "boolean", default: false },
      "data-dir": { type: "string" },
      corpus: { type: "string" },
      out: { type: "string" },
      docs: { type: "string" },
      seed: { type: "string" },
      mix: { type: "string" },
      "max-size": { type: "string" },
      large: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const [sub, env, extra] = positionals;
  if (sub === "curriculum") return curriculum(values, positionals.slice(1));
  if (sub !== "stats")
    throw new UserError(`unknown data command "${sub ?? ""}"; expected "stats" or "curriculum" (see --help)`);
  if (!env) throw new UserError(`name an environment (known: ${knownEnvs().join(", ")})`);
  if (extra !== undefined) throw new UserError(`unexpected argument "${extra}"`);
  const family = getEnv(env, envOptionsFromFlags(env, values));
  const splits: Split[] = values.split === undefined ? ["train", "test"] : [parseSplit(values.split, "test")];
  for (const split of splits) {
    if (family instanceof HotpotFamily) {
      const s = qaStats(family, split);
      console.log(values.json ? JSON.stringify(s) : formatQaStats(s));
    } else if (family.name === "frozenlake" || family.name === "sokoban") {
      const s = gridStats(family, split);
      console.log(values.json ? JSON.stringify(s) : formatGridStats(s));
    } else {
      const tasks = family.loadSplit(split);
      console.log(
        values.json
          ? JSON.stringify({ env, split, tasks: tasks.length })
          : `${env} ${split}: ${tasks.length} tasks`,
      );
    }
  }
  return 0;
}

function intFlag(name: string, v: string | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max)
    throw new UserError(`--${name}: expected an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return n;
}

async function curriculum(values: Record<string, unknown>, rest: string[]): Promise<number> {
  const { CURRICULUM_MIXES, writeCurriculum } = await import("../pretrain/curriculum.ts");
  if (rest.length > 0) throw new UserError(`unexpected argument "${rest[0]}"`);
  const out = values.out as string | undefined;
  if (!out) throw new UserError("--out FILE is required (the chat JSONL to write)");
  const mixName = (values.mix as string | undefined) ?? "real-lm";
  const mix = Object.hasOwn(CURRICULUM_MIXES, mixName) ? CURRICULUM_MIXES[mixName] : undefined;
  if (!mix)
    throw new UserError(
      `--mix: unknown mix "${mixName}" (known: ${Object.keys(CURRICULUM_MIXES).join(", ")})`,
    );
  const largeText = values.large as string | undefined;
  const large = largeText === undefined ? 0.5 : Number(largeText);
  if (!Number.isFinite(large) || large < 0 || large > 1)
    throw new UserError(`--large: expected a share from 0 to 1, got ${JSON.stringify(largeText)}`);
  const spec = {
    seed: intFlag("seed", values.seed as string | undefined, 0, 0, 2 ** 31 - 1),
    docs: intFlag("docs", values.docs as string | undefined, 2000, 1, 10_000_000),
    mix,
    maxSize: intFlag("max-size", values["max-size"] as string | undefined, 9, 2, 9),
    large,
  };
  const counts = writeCurriculum(out, spec);
  const kinds = Object.entries(counts)
    .sort((a, b) => b[1] - a[1])
    .map(([k, n]) => `${k} ${n}`)
    .join(", ");
  console.log(`${out}: ${spec.docs} conversations (${kinds})`);
  return 0;
}
