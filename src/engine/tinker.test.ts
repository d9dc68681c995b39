// The Tinker directions' checks that need no service: `engine.kind: "tinker"` in run configs, the
// bridge's start-up errors, and `erl engine serve --tinker`'s arguments. The SDK runs in
// test/tinker/*.itest.ts (scripts/test-tinker.sh).
import { test } from "node:test";
import assert from "node:assert/strict";
import { validateConfig } from "../train/config.ts";
import { UserError } from "../util/errors.ts";
import { startTinkerBridge } from "./tinker.ts";
import { run } from "../cli/engine.ts";

const userError = (re: RegExp) => (e: unknown) => e instanceof UserError && re.test(e.message);

const tinker = {
  engine: { kind: "tinker", baseModel: "Qwen/Qwen3-4B-Instruct-2507" },
  model: { lora: { rank: 32, alpha: 32, dropout: 0, targetModules: "all-linear" } },
  loss: { klCoef: 0, dualClip: null },
};

test('engine.kind "tinker": what a Tinker service cannot run is refused, naming the key', () => {
  const cfg = validateConfig(tinker);
  assert.equal(cfg.engine.kind, "tinker");
  assert.equal(cfg.engine.apiKeyEnv, "TINKER_API_KEY");
  assert.equal(validateConfig({}).engine.kind, "engine");
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ ...tinker, engine: { kind: "tinker" } }, /key "engine\.baseModel": is required/],
    [
      { ...tinker, model: { lora: null } },
      /key "model\.lora": must be set \(a Tinker service trains LoRA adapters\)/,
    ],
    [{ ...tinker, loss: { klCoef: 0.001, dualClip: null } }, /key "loss\.klCoef": must be 0/],
    [{ ...tinker, loss: { klCoef: 0 } }, /key "loss\.dualClip": must be null/],
    [
      { ...tinker, loss: { klCoef: 0, dualClip: null, temperature: 0.7 } },
      /key "loss\.temperature": must be 1/,
    ],
    [{ ...tinker, engine: { ...tinker.engine, sampler: "vllm" } }, /key "engine\.sampler": must be "engine"/],
    [{ ...tinker, engine: { ...tinker.engine, url: "http://x:1" } }, /key "engine\.url": must be null/],
    [
      { ...tinker, engine: { ...tinker.engine, baseUrl: "ftp://x" } },
      /key "engine\.baseUrl": must start with http/,
    ],
    [{ engine: { kind: "remote" } }, /key "engine\.kind": expected one of/],
  ];
  for (const [raw, re] of bad) assert.throws(() => validateConfig(raw), userError(re));
});

test("the bridge needs its API key variable before it starts", async () => {
  delete process.env.ERL_TEST_NO_SUCH_KEY;
  await assert.rejects(
    startTinkerBridge({ baseUrl: null, apiKeyEnv: "ERL_TEST_NO_SUCH_KEY", baseModel: "m" }),
    userError(
      /engine\.apiKeyEnv: the environment variable ERL_TEST_NO_SUCH_KEY \(the Tinker API key\) is not set/,
    ),
  );
});

test("erl engine serve --tinker: clear errors for bad arguments", async () => {
  const bad: [string[], RegExp][] = [
    [["serve", "--tinker"], /--model <model-dir> is required with --tinker/],
    [["serve", "--tinker", "--model", "/nonexistent/m", "--token", "tml-x"], /not an HF model directory/],
    [["serve", "--tinker", "--model", "models/erl-tiny", "--token", "abc"], /start with tml-/],
    [
      ["serve", "--tinker", "--model", "models/erl-tiny", "--token", "tml-x", "--host", "0.0.0.0"],
      /non-loopback/,
    ],
    [["serve", "--tinker", "--openai", "--model", "x"], /pick one/],
    [["serve", "--store", "x"], /--store is only for `erl engine serve --tinker`/],
  ];
  for (const [args, re] of bad) await assert.rejects(run(args), userError(re));
});
