// In-context ERL (`algo.name: "erl-icl"`) end to end on FrozenLake with erl-tiny: attempts,
// reflections, retries and memory with no weight update; evaluation under the memory's rulebook next
// to the initial prompt (same seeds). Then the same loop with the policy behind an OpenAI-compatible
// endpoint (`erl engine serve --openai`), and `erl eval --policy openai:…` as a training-free baseline.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "../util/paths.ts";
import { spawnOpenAIServe, stopServe } from "../serve/spawn.ts";
import { validateConfig } from "./config.ts";
import { defaultDeps } from "./deps.ts";
import { Progress } from "./progress.ts";
import { runTraining } from "./runner.ts";
import { readLatestCheckpoint } from "./checkpoint.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";

const TINY = join(REPO_ROOT, "models", "erl-tiny");
const token = randomBytes(16).toString("hex");
const KEY_VAR = "ERL_TEST_ICL_KEY";
let serve: { child: ChildProcess; url: string };

before(async () => {
  serve = await spawnOpenAIServe(TINY, token);
  process.env[KEY_VAR] = token;
});
after(() => stopServe(serve.child));

const readJsonl = (f: string) => readJsonlTolerant<Record<string, unknown>>(f);

const quiet = () => new Progress({ write: () => undefined });

const base = {
  env: "frozenlake",
  algo: { name: "erl-icl", n: 2, profile: "compact", maxTokensPerTurn: 48, maxReflectionTokens: 384 },
  model: { path: TINY, dtype: "bfloat16", device: "cpu" },
  batchSize: 4,
  checkpoint: { every: 1, keep: 1 },
};

test("erl-icl on erl-tiny: memory grows, no weight changes, eval under memory keeps or beats the initial prompt", async () => {
  const config = validateConfig({
    ...base,
    seed: 1,
    steps: 2,
    data: { evalTasks: 12 },
    eval: { every: 0, final: true, initial: false, n: 1 },
  });
  const runDir = join(mkdtempSync(join(tmpdir(), "erl-icl-")), "run");
  await runTraining({ config, runDir, resume: false, deps: defaultDeps(), progress: quiet() });
  const metrics = readJsonl(join(runDir, "metrics.jsonl"));
  const train = metrics.filter((m) => m.kind === "train");
  assert.equal(train.length, 2);
  for (const m of train) {
    assert.equal(m["tokens/trained"], undefined, "nothing is trained");
    assert.equal(m["samples/distill"], 0);
  }
  const memory = readJsonl(join(runDir, "memory.jsonl"));
  assert.ok(memory.length > 0, "a second attempt succeeded, so memory holds a rulebook");
  const ckpt = readLatestCheckpoint(join(runDir, "checkpoints"))!;
  assert.deepEqual(readdirSync(join(ckpt.dir, "engine")), [], "no weights are saved: none changed");
  const ev = metrics.filter((m) => m.kind === "eval").at(-1)!;
  assert.equal(ev["eval/memory"], 1);
  const underMemory = ev["eval/reward"] as number;
  const initial = ev["eval/initial_reward"] as number;
  console.log(
    `erl-icl FrozenLake erl-tiny: eval under memory ${underMemory.toFixed(3)}, initial prompt ${initial.toFixed(3)}`,
  );
  assert.ok(underMemory >= initial, `under memory ${underMemory} < initial prompt ${initial}`);
  // The evaluated episodes ran under the last rulebook written.
  const evalRollouts = readJsonl(join(runDir, "rollouts.jsonl")).filter((r) => r.stage === "eval");
  assert.ok(evalRollouts.length > 0);
  for (const r of evalRollouts) assert.equal(r.system, memory.at(-1)!.rulebook);
});

test("erl-icl with the policy behind an OpenAI-compatible endpoint, and erl eval --policy openai:…", async () => {
  const config = validateConfig({
    ...base,
    seed: 2,
    steps: 1,
    batchSize: 2,
    policy: { kind: "openai", baseUrl: serve.url, model: "erl-tiny", apiKeyEnv: KEY_VAR, maxRetries: 0 },
    // Lengths of an API policy count characters.
    algo: { ...base.algo, maxContextTokens: 8192 },
    data: { evalTasks: 2 },
    eval: { every: 0, final: true, initial: false, n: 1 },
  });
  const runDir = join(mkdtempSync(join(tmpdir(), "erl-icl-api-")), "run");
  await runTraining({ config, runDir, resume: false, deps: defaultDeps(), progress: quiet() });
  const [m] = readJsonl(join(runDir, "metrics.jsonl")).filter((r) => r.kind === "train");
  assert.ok((m!["policy/calls"] as number) >= 4, JSON.stringify(m));
  assert.ok((m!["policy/completion_tokens"] as number) > 0);
  const firsts = readJsonl(join(runDir, "rollouts.jsonl")).filter((r) => r.stage === "first");
  assert.equal(firsts.length, 4);
  for (const r of firsts) assert.ok((r.trace as unknown[]).length > 0, "the endpoint's replies were played");

  const { run } = await import("../cli/eval.ts");
  const printed: string[] = [];
  const log = console.log;
  console.log = (s: string) => printed.push(String(s));
  try {
    const code = await run([
      "--policy",
      "openai:erl-tiny",
      "--base-url",
      serve.url,
      "--api-key-env",
      KEY_VAR,
      "--env",
      "frozenlake",
      "--tasks",
      "2",
      "--n",
      "1",
      "--set",
      "algo.maxContextTokens=8192",
    ]);
    assert.equal(code, 0);
  } finally {
    console.log = log;
  }
  assert.match(
    printed.join("\n"),
    /frozenlake test: 2 tasks × 1 {2}mean reward \d\.\d{3} {2}pass@1 \d\.\d{3}/,
  );
  await assert.rejects(run(["--policy", "gpt", "--env", "frozenlake"]), /expected openai:<model>/);
  await assert.rejects(run(["--policy", "openai:x", "--model", "m"]), /either --model or --policy/);
});
