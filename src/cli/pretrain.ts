/**
 * `erl pretrain --recipe tiny`: the erl-tiny recipe end to end — write the synthetic corpus shards
 * (TypeScript generator), fit the tokenizer, train in the engine package's Python loop (bf16 on CPU),
 * export the HF directory. Every stage skips work already done in the work directory, so a stopped
 * run continues with `--resume`. `--ci` is the same recipe at toy size (seconds).
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { UserError } from "../util/errors.ts";
import { COUNT_MAX, SEED_MAX, STEPS_MAX } from "../train/limits.ts";

/** A year: the training loop's time limit (`--minutes`). */
const MINUTES_MAX = 525_600;
import { CONSOLIDATE_AT, DEFAULT_SHARDS, SOKOBAN_AT, shardPath, writeShard } from "../pretrain/generate.ts";
import { measureAcceptance } from "../pretrain/acceptance.ts";
import { makeDirs } from "../util/dirs.ts";
import { defaultPython } from "../util/paths.ts";

const HELP = `erl pretrain --recipe tiny [options]

Builds erl-tiny: synthetic corpus → tokenizer → bf16 training → HF export.

Options:
  --recipe NAME         tiny (the only recipe)
  --out DIR             exported model directory (default models/erl-tiny)
  --work DIR            corpus, tokenizer, checkpoints and logs (default runs/pretrain-tiny)
  --seed N              corpus and initialisation seed (default 1)
  --resume              continue from the work directory's checkpoint
  --ci                  toy size: a few shards, a 2-layer model, a few steps (seconds)
  --stage NAME          corpus | tokenizer | train | export | all (default all), or
                        eval: measure S0 / S_rule / S_refl of --out on the FrozenLake test split
                        and S0 / S_rule on Sokoban's, through the engine; writes <out>/acceptance.json
  --limit N             eval: only the first N test tasks
  --modes LIST          eval: greedy,sampled (default both)
  --shards N            corpus shards (default ${DEFAULT_SHARDS}; --ci 2), split 1:1:2:1:1 into copy,
                        look-up, games, consolidation and Sokoban; the last two restart the LR schedule
  --docs-per-shard N    documents per shard (default 400; --ci 40)
  --minutes M           stop training after M minutes (a checkpoint is written; resume later)
  --until-shard N       stop training before shard N, with a checkpoint (default: the start of
                        the Sokoban phase, shard 500 of 600 — the shipped models/erl-tiny; 0: every
                        shard — continue with --resume --until-shard 0 --out models/erl-tiny-sokoban)
  --steps N             optimizer steps planned before consolidation (the first cosine; default 9000; --ci 3)
  --phase-steps N       steps of the LR cosine restarted at consolidation and at Sokoban
                        (default 5000 each, about a phase's 100 shards)
  --threads N           torch threads for training and eval (default 1; 2 is faster on an otherwise idle 2-core machine)
  --python PATH         Python with torch + transformers (default $ERL_PYTHON, else .venv/bin/python)
`;

/** The bound of each integer flag and what it comes from (src/train/limits.ts for the shared ones). */
const INT_FLAGS: Record<string, [number, string]> = {
  seed: [SEED_MAX, "seeds are taken modulo 2^32 by the corpus generator's random generator"],
  shards: [100_000, "a file and a tokenizer pass per shard"],
  "docs-per-shard": [1_000_000, "a shard is generated in memory"],
  steps: [STEPS_MAX * 10, "a count this large is a mistake"],
  "phase-steps": [STEPS_MAX * 10, "a count this large is a mistake"],
  threads: [1024, "torch threads"],
  "until-shard": [100_000, "at most --shards"],
  limit: [COUNT_MAX, "a count this large is a mistake"],
};

function int(name: string, v: string | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0)
    throw new UserError(`--${name}: expected a non-negative integer, got "${v}"`);
  const bound = Object.hasOwn(INT_FLAGS, name) ? INT_FLAGS[name] : undefined;
  if (bound && n > bound[0])
    throw new UserError(`--${name}: ${n} is over the limit of ${Math.floor(bound[0])} (${bound[1]})`);
  return n;
}

export async function run(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      recipe: { type: "string" },
      out: { type: "string" },
      work: { type: "string" },
      seed: { type: "string" },
      resume: { type: "boolean", default: false },
      ci: { type: "boolean", default: false },
      stage: { type: "string", default: "all" },
      shards: { type: "string" },
      "docs-per-shard": { type: "string" },
      minutes: { type: "string" },
      steps: { type: "string" },
      "phase-steps": { type: "string" },
      "until-shard": { type: "string" },
      threads: { type: "string" },
      python: { type: "string" },
      limit: { type: "string" },
      modes: { type: "string" },
      help: { type: "boolean", default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (values.recipe !== "tiny")
    throw new UserError(`--recipe: expected "tiny", got ${JSON.stringify(values.recipe)}`);
  const stages = ["corpus", "tokenizer", "train", "export", "all", "eval"];
  if (!stages.includes(values.stage)) throw new UserError(`--stage: expected one of ${stages.join(", ")}`);
  const ci = values.ci;
  const seed = int("seed", values.seed, 1);
  const work = resolve(values.work ?? (ci ? "runs/pretrain-tiny-ci" : "runs/pretrain-tiny"));
  const out = resolve(values.out ?? (ci ? join(work, "model") : "models/erl-tiny"));
  const shards = int("shards", values.shards, ci ? 2 : DEFAULT_SHARDS);
  const docs = int("docs-per-shard", values["docs-per-shard"], ci ? 40 : 400);
  const steps = int("steps", values.steps, ci ? 3 : 9000);
  const python = values.python ?? defaultPython();
  if (!existsSync(python)) throw new UserError(`--python: ${python} not found (run scripts/setup.sh first)`);
  const corpus = join(work, "corpus");
  const tokDir = join(work, "tokenizer");
  const want = (s: string) => values.stage === "all" || values.stage === s;

  if (want("corpus")) {
    let made = 0;
    for (let i = 0; i < shards; i++) {
      if (existsSync(shardPath(corpus, i))) continue;
      writeShard(corpus, { seed, index: i, total: shards, docs });
      made++;
    }
    console.log(`corpus: ${shards} shards in ${corpus} (${made} written now)`);
  }
  const py = (argv: string[]) => {
    const r = spawnSync(python, ["-m", "erl_engine.pretrain", ...argv], {
      stdio: "inherit",
      env: { ...process.env, PYTHONPATH: resolve("engine") },
    });
    if (r.status !== 0)
      throw new UserError(`pretraining step failed: erl_engine.pretrain ${argv[0]} (exit ${r.status})`);
  };
  if (want("tokenizer") && !existsSync(join(tokDir, "tokenizer.json"))) {
    if (!existsSync(corpus) || readdirSync(corpus).length === 0)
      throw new UserError(`${corpus}: no corpus yet (run --stage corpus)`);
    py([
      "tokenizer",
      "--corpus",
      corpus,
      "--out",
      tokDir,
      "--vocab",
      ci ? "600" : "2048",
      "--shards",
      ci ? "2" : "4",
      // The last shards before consolidation, so that adding consolidation shards left the shipped
      // tokenizer (fitted on shards 396–399) unchanged.
      "--end",
      String(Math.round(shards * CONSOLIDATE_AT)),
    ]);
  }
  if (want("train")) {
    const argv = ["train", "--corpus", corpus, "--work", work, "--tokenizer", tokDir, "--seed", String(seed)];
    argv.push("--preset", ci ? "ci" : "tiny", "--total-steps", String(steps));
    // Consolidation and Sokoban each restart the LR schedule when their first shard is read (peak
    // 3e-4, a third of the first).
    const restarts = [CONSOLIDATE_AT, SOKOBAN_AT]
      .map((f) => Math.round(shards * f))
      .filter((s) => s > 0 && s < shards);
    if (restarts.length > 0)
      argv.push(
        "--restart-shard",
        restarts.join(","),
        "--restart-lr",
        "3e-4",
        "--restart-steps",
        String(int("phase-steps", values["phase-steps"], 5000)),
      );
    const threads = int("threads", values.threads, 1);
    if (threads < 1) throw new UserError(`--threads: expected at least 1, got ${threads}`);
    argv.push("--threads", String(threads));
    if (ci)
      argv.push("--max-steps", String(steps), "--warmup", "1", "--batch-tokens", "4096", "--log-every", "1");
    if (values.resume) argv.push("--resume");
    if (values.minutes) {
      const m = Number(values.minutes);
      if (!(m > 0 && m <= MINUTES_MAX))
        throw new UserError(
          `--minutes: expected a number of minutes from 0 to ${MINUTES_MAX}, got "${values.minutes}"`,
        );
      argv.push("--minutes", values.minutes);
    }
    // By default the run stops where the shipped models/erl-tiny stopped, before the Sokoban phase
    // (decision 0005); --until-shard 0 trains through it.
    const until = int("until-shard", values["until-shard"], Math.round(shards * SOKOBAN_AT));
    if (until > 0 && until < shards) argv.push("--until-shard", String(until));
    py(argv);
  }
  if (want("export")) py(["export", "--work", work, "--tokenizer", tokDir, "--out", out]);
  if (values.stage === "eval") {
    if (!existsSync(join(out, "config.json")))
      throw new UserError(`${out}: no exported model (config.json) to evaluate`);
    const modes = (values.modes ?? "greedy,sampled").split(",");
    for (const m of modes)
      if (m !== "greedy" && m !== "sampled")
        throw new UserError(`--modes: expected greedy and/or sampled, got "${m}"`);
    const report = await measureAcceptance({
      modelDir: out,
      limit: values.limit === undefined ? undefined : int("limit", values.limit, 100),
      seed,
      modes: modes as ("greedy" | "sampled")[],
      threads: Math.max(1, int("threads", values.threads, 1)),
      log: (line) => console.log(line),
    });
    const file =
      values.limit === undefined ? join(out, "acceptance.json") : join(work, "acceptance-quick.json");
    makeDirs(dirname(file));
    writeFileSync(file, JSON.stringify(report, null, 1) + "\n");
    console.log(`wrote ${file}`);
  }
  return 0;
}
