/**
 * `erl compare`: trains each algorithm × seed on the same tasks under one stated budget, one run
 * after another, and writes report.md with the final table and SVG plots. Re-running the same
 * command skips finished runs and resumes unfinished ones.
 *
 *   erl compare --env frozenlake --algos erl,rlvr,erl-no-memory,erl-no-reflection --seeds 3
 */
import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { knownEnvs } from "../envs/registry.ts";
import { buildConfig, getAlgorithm, knownAlgorithms } from "../train/config.ts";
import { parseBudget, runComparison } from "../train/compare.ts";
import { checkSeed } from "../train/limits.ts";
import { defaultDeps } from "../train/deps.ts";

const HELP = `usage: erl compare --env <env> --algos erl,rlvr[,...] --seeds N
                   [--budget rollouts|attempts|time:<minutes>] [--config <file|preset>] [--set key=value ...]
                   [--runs-dir runs] [--out DIR] [--parallel N]

Runs every algorithm with every seed (one after another, or N side by side), on the same tasks, then writes
<out>/report.md with the final table (mean ± sd over seeds) and plots.

options:
  --env ENV          ${knownEnvs().join(", ")}
  --algos LIST       comma-separated algorithms:
${knownAlgorithms()
  .map((a) => `                       ${a.padEnd(18)} ${getAlgorithm(a).summary}`)
  .join("\n")}
  --seeds N|LIST     N seeds (0..N-1) or an explicit list such as 3,4,5 (default 3)
  --budget B         what is equalised (default rollouts):
                       rollouts   the paper's: 10 rollouts per task for RLVR, 4 first attempts
                                  (+ reflection and retry of failures) for ERL; same steps
                       attempts   the same first attempts per task for all; same steps
                       time:M     M minutes of wall-clock run time each (steps cap it)
  --config C         base config file or preset (default <env>-tiny)
  --set key=value    override a base config key (repeatable)
  --runs-dir DIR     where comparisons go (default runs)
  --out DIR          the comparison directory (default <runs-dir>/compare-<env>)
  --parallel N       train N runs side by side, each engine with cores/N threads (default 1)`;

/** `--parallel N`: runs side by side, 1 to 64. */
export function parseParallel(text: string | undefined): number {
  if (text === undefined) return 1;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1 || n > 64)
    throw new UserError(`--parallel: expected an integer from 1 to 64, got ${JSON.stringify(text)}`);
  return n;
}

/** Seeds of one comparison: each is a training run per algorithm, run one after another. */
export const COMPARE_SEEDS_MAX = 1000;

export function parseSeeds(text: string): number[] {
  if (/^\d+$/.test(text)) {
    const n = Number(text);
    if (n < 1) throw new UserError("--seeds must be at least 1");
    if (n > COMPARE_SEEDS_MAX)
      throw new UserError(
        `--seeds ${text}: ${n.toLocaleString("en-US")} seeds is over the limit of ${COMPARE_SEEDS_MAX} (each seed is a training run per algorithm, one after another)`,
      );
    return Array.from({ length: n }, (_, i) => i);
  }
  const list = text.split(",").map((s) => s.trim());
  if (list.some((s) => !/^\d+$/.test(s)))
    throw new UserError(`--seeds ${text}: expected a count or a list of integers`);
  const seeds = [...new Set(list.map(Number))];
  if (seeds.length > COMPARE_SEEDS_MAX)
    throw new UserError(`--seeds: ${seeds.length} seeds is over the limit of ${COMPARE_SEEDS_MAX}`);
  for (const s of seeds) checkSeed({ flags: { seed: "--seeds" } }, "seed", s);
  return seeds;
}

export function parseAlgos(text: string): string[] {
  const list = text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  for (const a of list)
    if (!knownAlgorithms().includes(a))
      throw new UserError(`--algos: unknown algorithm "${a}" (known: ${knownAlgorithms().join(", ")})`);
  if (list.length === 0) throw new UserError("--algos: give at least one algorithm");
  return [...new Set(list)];
}

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      env: { type: "string" },
      algos: { type: "string" },
      seeds: { type: "string" },
      budget: { type: "string" },
      config: { type: "string" },
      set: { type: "string", multiple: true },
      "runs-dir": { type: "string" },
      out: { type: "string" },
      parallel: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (!values.env || !knownEnvs().includes(values.env))
    throw new UserError(`--env is required: one of ${knownEnvs().join(", ")}\n\n${HELP}`);
  const env = values.env;
  if (!values.algos) throw new UserError(`--algos is required, e.g. --algos erl,rlvr\n\n${HELP}`);
  const algos = parseAlgos(values.algos);
  const seeds = parseSeeds(values.seeds ?? "3");
  const budget = parseBudget(values.budget ?? "rollouts");
  const { config } = buildConfig(values.config ?? `${env}-tiny`, [`env=${env}`, ...(values.set ?? [])]);
  const runsDir = values["runs-dir"] ?? config.runsDir;
  const dir = resolve(values.out ?? join(runsDir, `compare-${env}`));
  const command = ["erl compare", ...args].join(" ");
  const parallel = parseParallel(values.parallel);
  const result = await runComparison({
    env,
    algos,
    seeds,
    budget,
    base: config,
    dir,
    command,
    deps: defaultDeps(),
    parallel,
  });
  console.log(`\n${result.table}\n`);
  console.log(`report: ${result.report}`);
  console.log(`dashboard: npx erl dashboard ${resolve(runsDir)}`);
  return 0;
}
