/**
 * What one episode costs the TypeScript process, for the bounds of src/train/limits.ts: runs an ERL
 * step (first attempts that fill the context, reflections, second attempts, the distill scoring) and
 * an evaluation with a scripted model (src/agent/scripted.ts, one token per character) and measures
 * the heap the step's result holds and the JSON the run files get, per episode and per context token.
 *
 *   node --expose-gc --import tsx bench/limits-memory.ts [--context 256,1024,4096] [--tasks 8] [--n 4]
 *
 * Prints one table (bytes per episode and per context token, for each context length).
 */
import { erlStep } from "../src/algo/erl.ts";
import { evaluate } from "../src/algo/eval.ts";
import { createMemory } from "../src/algo/memory.ts";
import { ScriptedBackend } from "../src/testing/scripted.ts";
import { getEnv } from "../src/envs/registry.ts";
import { defaultConfig, evalOptionsFrom } from "../src/train/config.ts";
import { erlOptionsFrom } from "../src/train/algorithms/erl.ts";
import { Rng } from "../src/util/rng.ts";
import { parseFlags, positiveInts } from "./args.ts";

const { values } = parseFlags({
  options: {
    context: { type: "string", default: "256,1024,4096" },
    tasks: { type: "string", default: "8" },
    n: { type: "string", default: "4" },
  },
  allowPositionals: false,
});
const contexts = positiveInts("--context", values.context);
const tasksN = positiveInts("--tasks", values.tasks)[0]!;
const n = positiveInts("--n", values.n)[0]!;
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  console.error("bench/limits-memory.ts: run with node --expose-gc");
  process.exit(2);
}

function heap(): number {
  gc!();
  gc!();
  return process.memoryUsage().heapUsed;
}

// A reply that never ends on its own: random letters up to the turn limit (a failed, long episode).
const junk = ({ rng }: { rng: Rng }): string =>
  Array.from({ length: 20_000 }, () => String.fromCharCode(97 + rng.intBetween(0, 25))).join("");

const env = getEnv("frozenlake");
const tasks = env.loadSplit("train").slice(0, tasksN);
const rows: string[] = [];
for (const T of contexts) {
  const cfg = defaultConfig();
  cfg.algo.n = n;
  cfg.algo.maxContextTokens = T;
  cfg.algo.maxTokensPerTurn = T;
  cfg.algo.maxReflectionTokens = T;
  cfg.algo.contextOverflow = "shrink";
  const model = new ScriptedBackend(junk, { maxPositions: T });
  const before = heap();
  const result = await erlStep(
    { env, model, memory: createMemory({ kind: "global" }), rng: new Rng(1), step: 1 },
    tasks,
    erlOptionsFrom(cfg),
  );
  model.calls.length = 0;
  model.forwardCalls.length = 0;
  const held = heap() - before;
  const json = result.rollouts.reduce((a, r) => a + JSON.stringify(r).length + 1, 0);
  const episodes = result.rollouts.length;
  const sampleTokens = result.samples.reduce((a, x) => a + x.ids.length, 0);
  console.error(
    `context ${T}: ${episodes} episodes, ${result.samples.length} samples, mean ${Math.round(sampleTokens / Math.max(1, result.samples.length))} tokens per sample`,
  );
  const evBefore = heap();
  const ev = await evaluate({ env, model, rng: new Rng(2), step: 0 }, tasks, {
    ...evalOptionsFrom(cfg),
    n,
  });
  model.calls.length = 0;
  const evHeld = heap() - evBefore;
  const evJson = ev.rollouts.reduce((a, r) => a + JSON.stringify(r).length + 1, 0);
  const perTok = (b: number, eps: number) => (b / eps / T).toFixed(1);
  rows.push(
    `| ${T} | ${episodes} | ${Math.round(held / episodes)} | ${perTok(held, episodes)} | ${Math.round(json / episodes)} | ${perTok(json, episodes)} | ${ev.rollouts.length} | ${perTok(evHeld, ev.rollouts.length)} | ${perTok(evJson, ev.rollouts.length)} |`,
  );
  void result;
  void ev;
}
console.log(
  "| context tokens | ERL step episodes | heap bytes / episode | heap / context token | JSON bytes / episode | JSON / context token | eval episodes | eval heap / token | eval JSON / token |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of rows) console.log(r);
