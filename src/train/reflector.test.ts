// An external reflector end to end: a short ERL run on erl-tiny (its own engine) whose reflections
// are written by a second engine behind `erl engine serve --openai`, reached with the official
// `openai` client. Checks that reflections come from the endpoint and are not trained, that first
// attempts, second attempts and memory work as before, and that latency, tokens and cost are
// recorded. Plus the config's errors for the reflector and policy blocks.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { REPO_ROOT } from "../util/paths.ts";
import { spawnOpenAIServe, stopServe } from "../serve/spawn.ts";
import { validateConfig } from "./config.ts";
import { defaultDeps } from "./deps.ts";
import { Progress } from "./progress.ts";
import { runTraining } from "./runner.ts";
import { UserError } from "../util/errors.ts";
import { readJsonlTolerant } from "../util/jsonl.ts";

const token = randomBytes(16).toString("hex");
const KEY_VAR = "ERL_TEST_REFLECTOR_KEY";
let serve: { child: ChildProcess; url: string };

before(async () => {
  serve = await spawnOpenAIServe(join(REPO_ROOT, "models", "erl-tiny"), token);
  process.env[KEY_VAR] = token;
});
after(() => stopServe(serve.child));

const readJsonl = (f: string) => readJsonlTolerant<Record<string, unknown>>(f);

test("ERL on erl-tiny with a second engine's OpenAI endpoint as reflector", async () => {
  const config = validateConfig({
    env: "frozenlake",
    seed: 3,
    model: { path: join(REPO_ROOT, "models", "erl-tiny"), dtype: "bfloat16", device: "cpu" },
    algo: { n: 2, profile: "compact", maxTokensPerTurn: 48, maxReflectionTokens: 384 },
    reflector: {
      kind: "openai",
      baseUrl: serve.url,
      model: "erl-tiny",
      apiKeyEnv: KEY_VAR,
      maxTokens: 200,
      timeout: 120,
      maxRetries: 0,
      pricePerInputToken: 1e-6,
      pricePerOutputToken: 2e-6,
    },
    steps: 2,
    batchSize: 1,
    data: { evalTasks: 1 },
    eval: { every: 0, final: false, initial: false, n: 1 },
    checkpoint: { every: 1, keep: 1 },
  });
  const runDir = join(mkdtempSync(join(tmpdir(), "erl-reflector-")), "run");
  const summary = await runTraining({
    config,
    runDir,
    resume: false,
    deps: defaultDeps(),
    progress: new Progress({ write: () => undefined }),
  });
  assert.equal(summary.steps, 2);
  const train = readJsonl(join(runDir, "metrics.jsonl")).filter((m) => m.kind === "train");
  assert.equal(train.length, 2);
  let retried = 0;
  for (const m of train) {
    const second = m["samples/second"] as number;
    retried += second;
    // Reflections are used but not trained: no reflection samples, ever.
    assert.equal(m["samples/reflection"], 0);
    assert.equal(m["samples/first"], 2);
    // One API call per reflection.
    assert.equal(m["reflector/calls"], second > 0 ? second : 0, JSON.stringify(m));
    if (second > 0) {
      assert.ok((m["reflector/prompt_tokens"] as number) > 0);
      assert.ok((m["reflector/completion_tokens"] as number) > 0);
      assert.ok((m["reflector/latency_s"] as number) > 0);
      const cost =
        (m["reflector/prompt_tokens"] as number) * 1e-6 + (m["reflector/completion_tokens"] as number) * 2e-6;
      assert.ok(Math.abs((m["reflector/cost"] as number) - cost) < 1e-12);
    }
    // The policy still trains on first and second attempts.
    assert.ok((m["tokens/trained"] as number) > 0, JSON.stringify(m));
  }
  assert.ok(retried > 0, "erl-tiny fails some first attempts, so some are retried");
  const seconds = readJsonl(join(runDir, "rollouts.jsonl")).filter((r) => r.stage === "second");
  assert.equal(seconds.length, retried);
  for (const r of seconds) {
    const refl = r.reflection as { text: string; rulebook: string };
    assert.ok(refl.text.length > 0, "the endpoint wrote a reflection");
    assert.equal(r.system, refl.rulebook, "the second attempt ran under Δ");
  }
  // Memory writes (if any second attempt succeeded) are Δs the endpoint wrote.
  const memory = readJsonl(join(runDir, "memory.jsonl"));
  const deltas = new Set(seconds.map((r) => (r.reflection as { rulebook: string }).rulebook));
  for (const w of memory) assert.ok(deltas.has(w.rulebook as string));

  // The trained run, served: `erl engine serve --openai --model <run>` loads its newest checkpoint.
  const served = await spawnOpenAIServe(runDir, token);
  try {
    const client = new OpenAI({ baseURL: served.url, apiKey: token, maxRetries: 0 });
    const models = await client.models.list();
    assert.deepEqual(
      models.data.map((m) => m.id),
      ["run@step-2"],
    );
    const reply = await client.chat.completions.create({
      model: "run@step-2",
      messages: [{ role: "user", content: "P _\n_ G" }],
      max_tokens: 8,
      seed: 1,
    });
    assert.ok((reply.usage?.completion_tokens ?? 0) > 0);
  } finally {
    await stopServe(served.child);
  }
});

test("reflector and policy blocks: clear errors", async () => {
  const bad: [unknown, RegExp][] = [
    [{ reflector: { kind: "openai" } }, /reflector\.baseUrl.*required when reflector\.kind is "openai"/],
    [
      { reflector: { kind: "openai", baseUrl: "localhost:8000", model: "m" } },
      /reflector\.baseUrl.*must start with http/,
    ],
    [{ reflector: { kind: "claude" } }, /reflector\.kind/],
    [
      { reflector: { kind: "openai", baseUrl: "http://x/v1", model: "m", maxRetries: -1 } },
      /reflector\.maxRetries/,
    ],
    [
      { policy: { kind: "openai", baseUrl: "http://x/v1", model: "m" } },
      /policy\.kind.*cannot be trained.*erl-icl/,
    ],
    [{ algo: { name: "erl-icl", memory: "perWorker" } }, /algo\.memory.*global/],
  ];
  for (const [cfg, re] of bad)
    assert.throws(
      () => validateConfig(cfg, { file: "x.json" }),
      (e: unknown) => e instanceof UserError && re.test(e.message) && e.message.includes("x.json"),
      String(re),
    );
  // --set overrides are cross-checked once all are in, so their order does not matter.
  const { applyOverrides, defaultConfig } = await import("./config.ts");
  const set = applyOverrides(defaultConfig(), [
    "reflector.kind=openai",
    "reflector.baseUrl=http://127.0.0.1:8000/v1",
    "reflector.model=erl-tiny",
  ]);
  assert.equal(set.reflector.kind, "openai");
  assert.throws(
    () => applyOverrides(defaultConfig(), ["reflector.kind=openai"]),
    /--set.*reflector\.baseUrl/,
  );
  // The key's variable must be set when the run starts.
  const cfg = validateConfig({
    reflector: {
      kind: "openai",
      baseUrl: "http://127.0.0.1:9/v1",
      model: "m",
      apiKeyEnv: "ERL_TEST_NO_SUCH_KEY",
    },
  });
  const { reflectorFor } = await import("./deps.ts");
  await assert.rejects(
    reflectorFor(cfg),
    /reflector\.apiKeyEnv: the API key is read from \$ERL_TEST_NO_SUCH_KEY/,
  );
});
