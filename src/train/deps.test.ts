import { test } from "node:test";
import assert from "node:assert/strict";
import { engineProgressLine } from "./deps.ts";

test("the engine's thread and attention verdicts and ignored settings become progress lines; other stderr does not", () => {
  assert.equal(
    engineProgressLine("erl engine: threads 2 -> 1 (1 thread 1.2 ms, 2 threads 18.8 ms)"),
    "engine: threads 2 -> 1 (1 thread 1.2 ms, 2 threads 18.8 ms)",
  );
  assert.equal(
    engineProgressLine(
      "erl engine: attention for training at up to 128 tokens: fp32: bf16 35.7 ms, fp32 11.2 ms",
    ),
    "engine: attention for training at up to 128 tokens: fp32: bf16 35.7 ms, fp32 11.2 ms",
  );
  assert.equal(engineProgressLine("Loading weights: 100%"), null);
  assert.equal(
    engineProgressLine("erl engine: ignoring ERL_ENGINE_THREADS='x' (not a positive integer)"),
    "engine: ignoring ERL_ENGINE_THREADS='x' (not a positive integer)",
  );
  assert.equal(engineProgressLine("Traceback (most recent call last):"), null);
});
