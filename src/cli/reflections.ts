/**
 * `erl reflections <run-dir>`: what ERL's reflections did in a run — retry success, role-claim
 * accuracy (FrozenLake), examples that helped and misled, and the memory's evolution — as Markdown.
 */
import { parseArgs } from "node:util";
import { writeFileSync } from "node:fs";
import { reflectionsMarkdown, summarizeReflections } from "../train/reflections.ts";
import { UserError } from "../util/errors.ts";

const HELP = `usage: erl reflections <run-dir> [--examples N] [--json] [--out FILE]

Summarises a run's reflections from its rollouts.jsonl and memory.jsonl: second-attempt success by
step, role claims checked against the reference letters (FrozenLake), examples of reflections that
helped and that misled, and the memory writes. Prints Markdown (or --json) to stdout or --out.
`;

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      examples: { type: "string", default: "3" },
      json: { type: "boolean", default: false },
      out: { type: "string" },
      help: { type: "boolean", default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (positionals.length !== 1) throw new UserError(`expected one run directory\n\n${HELP}`);
  const n = Number(values.examples);
  if (!Number.isInteger(n) || n < 0)
    throw new UserError(`--examples: expected a non-negative integer, got "${values.examples}"`);
  const dir = positionals[0]!;
  const s = summarizeReflections(dir, n);
  const text = values.json ? JSON.stringify(s, null, 1) + "\n" : reflectionsMarkdown(s, dir);
  if (values.out) writeFileSync(values.out, text);
  else process.stdout.write(text);
  return 0;
}
