/**
 * A refactor's safety net: dumps what a refactor must not change, and compares two dumps.
 *
 *   node --import tsx scripts/refactor-check.ts dump <dir>        # every preset's built config + two seeded runs
 *   node --import tsx scripts/refactor-check.ts compare <a> <b>   # exit 1 and name each difference
 *
 * The dump holds `erl train --config <preset> --print-config` for every preset in configs/, and the
 * run files of two seeded 2-step erl-tiny runs on frozenlake-tiny (ERL and RLVR, 2 tasks per step,
 * float32, one engine thread): metrics.jsonl without its clock-dependent keys, rollouts.jsonl and
 * memory.jsonl. Run it with ERL_ENGINE_THREADS=1 (the script sets it for its runs).
 */
import { spawnSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
  existsSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;

/** Keys of a metrics record that depend on the clock (or on the engine's measured speed). */
const CLOCK = (k: string): boolean => k === "time" || k.startsWith("time/") || k === "tokens_per_s";

function erl(args: string[]): string {
  const r = spawnSync(process.execPath, [join(ROOT, "bin/erl.mjs"), ...args], {
    cwd: ROOT,
    encoding: "utf8",
    env: { ...process.env, ERL_ENGINE_THREADS: "1" },
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`erl ${args.join(" ")} failed (${r.status}):\n${r.stderr}`);
  return r.stdout;
}

const RUN_SETS = [
  "steps=2",
  "batchSize=2",
  "model.dtype=float32",
  "data.evalTasks=2",
  "eval.n=1",
  "eval.every=0",
  "eval.initial=false",
  "checkpoint.every=2",
];

function dump(out: string): void {
  mkdirSync(join(out, "configs"), { recursive: true });
  for (const p of readdirSync(join(ROOT, "configs"))
    .filter((f) => f.endsWith(".json"))
    .map((f) => f.slice(0, -5)))
    writeFileSync(join(out, "configs", `${p}.json`), erl(["train", "--config", p, "--print-config"]));
  const runs = mkdtempSync(join(tmpdir(), "erl-refactor-check-"));
  try {
    for (const algo of ["erl", "rlvr"]) {
      const sets = [...RUN_SETS, `algo.name=${algo}`].flatMap((s) => ["--set", s]);
      erl(["train", "--config", "frozenlake-tiny", ...sets, "--runs-dir", runs, "--name", algo]);
      const dir = join(runs, algo);
      const metrics = readFileSync(join(dir, "metrics.jsonl"), "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) =>
          JSON.stringify(Object.fromEntries(Object.entries(JSON.parse(l)).filter(([k]) => !CLOCK(k)))),
        );
      mkdirSync(join(out, algo), { recursive: true });
      writeFileSync(join(out, algo, "metrics.jsonl"), metrics.join("\n") + "\n");
      for (const f of ["rollouts.jsonl", "memory.jsonl"])
        writeFileSync(join(out, algo, f), readFileSync(join(dir, f)));
    }
  } finally {
    rmSync(runs, { recursive: true, force: true });
  }
  console.log(`dumped to ${out}`);
}

function files(dir: string, sub = ""): string[] {
  return readdirSync(join(dir, sub), { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(dir, join(sub, e.name)) : [join(sub, e.name)],
  );
}

/** Dotted keys whose values differ between two JSON values. */
function jsonDiff(a: unknown, b: unknown, path = ""): string[] {
  const isObj = (x: unknown): x is Record<string, unknown> =>
    typeof x === "object" && x !== null && !Array.isArray(x);
  if (isObj(a) && isObj(b))
    return [...new Set([...Object.keys(a), ...Object.keys(b)])].flatMap((k) =>
      jsonDiff(a[k], b[k], path ? `${path}.${k}` : k),
    );
  return JSON.stringify(a) === JSON.stringify(b)
    ? []
    : [`${path}: ${JSON.stringify(a)} -> ${JSON.stringify(b)}`];
}

function compare(a: string, b: string): number {
  const names = [...new Set([...files(a), ...files(b)])].sort();
  let bad = 0;
  for (const n of names) {
    const [pa, pb] = [join(a, n), join(b, n)];
    if (!existsSync(pa) || !existsSync(pb)) {
      console.log(`${n}: only in ${existsSync(pa) ? a : b}`);
      bad++;
      continue;
    }
    const [ta, tb] = [readFileSync(pa, "utf8"), readFileSync(pb, "utf8")];
    if (ta === tb) continue;
    // A JSON file whose values are all equal differs only in key order, which no reader depends on.
    if (n.endsWith(".json") && jsonDiff(JSON.parse(ta), JSON.parse(tb)).length === 0) continue;
    bad++;
    if (n.endsWith(".json"))
      for (const d of jsonDiff(JSON.parse(ta), JSON.parse(tb))) console.log(`${n}: ${d}`);
    else {
      const [la, lb] = [ta.split("\n"), tb.split("\n")];
      const i = la.findIndex((l, k) => l !== lb[k]);
      console.log(`${n}: first difference on line ${i + 1}`);
      if (la[i] && lb[i])
        for (const d of jsonDiff(JSON.parse(la[i]), JSON.parse(lb[i])).slice(0, 5)) console.log(`  ${d}`);
    }
  }
  console.log(bad === 0 ? "identical" : `${bad} file(s) differ`);
  return bad === 0 ? 0 : 1;
}

const [cmd, x, y] = process.argv.slice(2);
if (cmd === "dump" && x) dump(x);
else if (cmd === "compare" && x && y) process.exitCode = compare(x, y);
else {
  console.error("usage: refactor-check.ts dump <dir> | compare <a> <b>");
  process.exitCode = 2;
}
