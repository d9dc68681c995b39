// `erl engine` argument handling (the engine itself is exercised in src/engine/*.test.ts).
import { test } from "node:test";
import assert from "node:assert/strict";
import { run } from "./engine.ts";
import { UserError } from "../util/errors.ts";

test("erl engine: help, and clear errors for bad arguments", async () => {
  const log = console.log;
  const printed: string[] = [];
  console.log = (s: string) => printed.push(s);
  try {
    assert.equal(await run(["--help"]), 0);
    assert.equal(await run(["serve", "--help"]), 0);
  } finally {
    console.log = log;
  }
  assert.match(printed.join("\n"), /erl engine serve \[--host 127\.0\.0\.1\]/);
  const bad: [string[], RegExp][] = [
    [["info"], /--model <dir> is required/],
    [["info", "--model", "x", "--dtype", "fp16"], /--dtype must be auto, float32 or bfloat16/],
    [["serve", "--port", "70000"], /--port must be an integer in 0\.\.65535/],
    [["launch"], /unknown sub-command "launch"/],
    [["serve", "--openai"], /--model <model-dir\|run-dir> is required with --openai/],
    [["serve", "--model", "x"], /--model is only for `erl engine serve --openai`/],
    [["serve", "--openai", "--model", "x", "--host", "0.0.0.0"], /refusing to listen on non-loopback/],
    [["serve", "--openai", "--model", "/nonexistent/m"], /no such directory/],
    [["serve", "--openai", "--model", "x", "--dtype", "fp8"], /--dtype must be auto, float32 or bfloat16/],
  ];
  for (const [args, re] of bad) {
    await assert.rejects(run(args), (e: unknown) => e instanceof UserError && re.test(e.message));
  }
});
