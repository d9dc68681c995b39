/**
 * Time per training step, split into engine sampling, other engine calls (chat rendering, decoding,
 * distill re-scoring), engine training (forward-backward + optimiser), environment steps, and
 * everything else on the TypeScript side (loop, advantages, samples, run files). Every engine call
 * is timed at the client; the TypeScript share is step time minus the time during which at least
 * one engine call was in flight.
 *
 *   node --import tsx bench/step.ts [--model test/fixtures/tiny-model] [--steps 4] [--batch 4] [--env frozenlake]
 *
 * The first step is a warm-up and is left out of the means.
 */
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join } from "node:path";
import type { Engine } from "../src/engine/api.ts";
import { validateConfig } from "../src/train/config.ts";
import { runTraining } from "../src/train/runner.ts";
import { defaultDeps } from "../src/train/deps.ts";
import { Progress } from "../src/train/progress.ts";
import { STEPS_MAX } from "../src/train/limits.ts";
import { knownEnvs } from "../src/envs/registry.ts";
import { die, parseFlags } from "./args.ts";

const { values } = parseFlags({
  options: {
    model: { type: "string", default: "test/fixtures/tiny-model" },
    steps: { type: "string", default: "4" },
    batch: { type: "string", default: "4" },
    env: { type: "string", default: "frozenlake" },
    dtype: { type: "string", default: "auto" },
    tokens: { type: "string", default: "8" },
  },
  allowPositionals: false,
});
for (const [flag, v, max] of [
  ["--steps", values.steps, STEPS_MAX],
  ["--batch", values.batch, 4096],
  ["--tokens", values.tokens, 1 << 16],
] as const)
  if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > max)
    die(`${flag} must be an integer from 1 to ${max}, got "${v}"`);
if (!["auto", "float32", "bfloat16"].includes(values.dtype))
  die(`--dtype must be auto, float32 or bfloat16, got "${values.dtype}"`);
if (!existsSync(join(values.model, "config.json")))
  die(`--model ${values.model}: not a model directory (no config.json)`);
if (!knownEnvs().includes(values.env))
  die(`--env must be one of ${knownEnvs().join(", ")}, got "${values.env}"`);

/**
 * Busy time of overlapping calls: the loop keeps several engine calls in flight at once, so the
 * union of their intervals is measured (per group and overall), not the sum of their durations.
 */
class BusyClock {
  private inflight = new Map<string, { n: number; since: number }>();
  readonly busy = new Map<string, number>();
  on = false;
  enter(groups: string[]): void {
    const t = performance.now();
    for (const g of groups) {
      const e = this.inflight.get(g) ?? { n: 0, since: t };
      if (e.n === 0) e.since = t;
      e.n++;
      this.inflight.set(g, e);
    }
  }
  leave(groups: string[]): void {
    const t = performance.now();
    for (const g of groups) {
      const e = this.inflight.get(g)!;
      e.n--;
      if (e.n === 0 && this.on) this.busy.set(g, (this.busy.get(g) ?? 0) + (t - e.since) / 1000);
    }
  }
}

const GROUP: Record<string, string> = { sample: "sample", forwardBackward: "train", optimStep: "train" };

/** Wraps an engine so that every call's interval is recorded by `clock`. */
function timed(engine: Engine, clock: BusyClock): Engine {
  return new Proxy(engine, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== "function") return v;
      return async (...args: unknown[]) => {
        const groups = ["all", GROUP[String(prop)] ?? "other"];
        clock.enter(groups);
        try {
          return await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        } finally {
          clock.leave(groups);
        }
      };
    },
  });
}

const stepsN = Number(values.steps);
let chosen = values.dtype;
const rows: string[] = [];
for (const algo of ["erl", "rlvr"]) {
  const clock = new BusyClock();
  const deps = defaultDeps();
  const start = deps.startEngine;
  deps.startEngine = async (cfg, path) => {
    const engine = await start(cfg, path);
    const info = await engine.info();
    chosen = `${info.dtype}${info.dtypeReason ? `: ${info.dtypeReason}` : ""}; ${info.threads ?? "?"} thread(s)${info.threadsReason ? `: ${info.threadsReason}` : ""}`;
    return timed(engine, clock);
  };
  const config = validateConfig({
    env: values.env,
    model: { path: values.model, dtype: values.dtype },
    algo: {
      name: algo,
      maxTokensPerTurn: Number(values.tokens),
      maxReflectionTokens: 4 * Number(values.tokens),
      maxContextTokens: 640,
    },
    steps: stepsN,
    batchSize: Number(values.batch),
    eval: { every: 0, final: false, initial: false },
    checkpoint: { every: 1000, keep: 1 },
  });
  const dir = join(mkdtempSync(join(tmpdir(), "erl-bench-")), algo);
  // Count engine time only inside steps after the warm-up step; the runner's step lines mark them.
  let stepIdx = 0;
  const progress = new Progress({
    write: (t: string) => {
      if (t.startsWith("step ")) {
        stepIdx++;
        clock.on = stepIdx >= 1 && stepIdx < stepsN;
        if (stepIdx === 1) clock.busy.clear();
      }
    },
  });
  await runTraining({ config, runDir: dir, resume: false, deps, progress });
  const recs = readFileSync(join(dir, "metrics.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, number>)
    .filter((r) => (r.kind as unknown) === "train" && (r.step ?? 0) > 1);
  const n = recs.length;
  const sum = (k: string): number => recs.reduce((a, r) => a + (r[k] ?? 0), 0);
  const step = sum("time/step") / n;
  const b = (k: string): number => (clock.busy.get(k) ?? 0) / n;
  const sample = b("sample");
  const train = b("train");
  const otherEngine = b("other");
  const env = sum("time/env") / n;
  // Groups can overlap each other (a render while a sample is in flight); the overall union is exact.
  const ts = Math.max(0, step - b("all"));
  const pct = (x: number): string => `${((100 * x) / step).toFixed(1)}%`;
  rows.push(
    `| ${algo} | ${step.toFixed(2)} | ${b("all").toFixed(2)} (${pct(b("all"))}) | ${sample.toFixed(2)} (${pct(sample)}) | ${otherEngine.toFixed(2)} (${pct(otherEngine)}) | ${train.toFixed(2)} (${pct(train)}) | ${env.toFixed(3)} (${pct(env)}) | ${ts.toFixed(3)} (${pct(ts)}) |`,
  );
}
console.log(
  `env ${values.env}, model ${values.model} (dtype ${values.dtype} -> ${chosen}), ${values.batch} tasks/step, ${values.tokens} tokens/turn, mean of steps 2..${stepsN}; ${cpus()[0]?.model ?? "cpu"} × ${cpus().length}`,
);
console.log(
  "| algo | step s | engine busy (all calls) | engine sample | engine render/decode/score | engine train | env (TS) | TypeScript total (incl. env) |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) console.log(r);
