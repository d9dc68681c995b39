// The HTTP transport end to end: `spawnHttpEngine` (what `erl engine serve` runs) on 127.0.0.1 with a
// random port, the client by URL, the bearer token, and protocol-version mismatches.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { connectEngine, openEngine, type EngineClient } from "./client.ts";
import { REPO_ROOT } from "../util/paths.ts";
import { EngineError } from "./protocol.ts";
import { spawnHttpEngine, type HttpServerHandle } from "./serve.ts";

const FIXTURE = join(REPO_ROOT, "test", "fixtures", "tiny-model");
const token = randomBytes(16).toString("hex");
let server: HttpServerHandle;
let engine: EngineClient;

before(async () => {
  server = await spawnHttpEngine({ host: "127.0.0.1", port: 0, token });
  engine = await connectEngine(server.url, { token });
});
after(async () => {
  await engine.close();
  await server.stop();
});

test("serves on loopback with a random port", () => {
  assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.notEqual(server.url, "http://127.0.0.1:0");
});

test("the client by URL loads, samples, scores and trains", async () => {
  const info = await engine.loadModel({ path: FIXTURE, dtype: "float32", device: "cpu", seed: 0 });
  assert.equal(info.model?.vocabSize, 105);
  const prompt = await engine.renderChat([{ role: "user", content: "go" }], { addGenerationPrompt: true });
  const [seq] = await engine.sample({ prompts: [prompt], n: 1, maxTokens: 6, temperature: 1, seed: 3 });
  assert.ok(seq && seq.tokens.length > 0);
  const all = [...prompt, ...seq.tokens];
  const datum = { inputIds: all.slice(0, -1), targetIds: all.slice(1), weights: all.slice(1).map(() => 1) };
  const [lp] = await engine.forward([datum]);
  const tail = (lp ?? []).slice(prompt.length - 1);
  seq.logprobs.forEach((l, i) => assert.ok(Math.abs(l - (tail[i] ?? NaN)) < 1e-4));
  const fb = await engine.forwardBackward(
    [{ ...datum, advantages: datum.weights.map(() => 1), oldLogprobs: lp ?? [] }],
    { name: "ppo", clipLow: 0.2, clipHigh: 0.28, dualClip: 3 },
  );
  assert.ok(Math.abs((fb.metrics.ratio_mean ?? 0) - 1) < 1e-4);
  const step = await engine.optimStep({ lr: 1e-3, gradClip: 1 });
  assert.ok(step.gradNorm > 0);
});

test("a wrong or missing token is refused", async () => {
  await assert.rejects(connectEngine(server.url, { token: "nope" }), (e: unknown) => {
    assert.ok(e instanceof EngineError);
    assert.equal(e.code, "unauthorized");
    return true;
  });
  await assert.rejects(openEngine({ url: server.url, token: "" }), /needs a bearer token/);
});

test("a protocol version mismatch is a clear error", async () => {
  await assert.rejects(connectEngine(server.url, { token, protocolVersion: 99 }), (e: unknown) => {
    assert.ok(e instanceof EngineError);
    assert.equal(e.code, "protocol_version");
    assert.match(e.message, /protocol version/);
    return true;
  });
});

test("an unreachable URL is a clear error", async () => {
  await assert.rejects(
    connectEngine("http://127.0.0.1:9", { token }),
    /cannot reach the engine at http:\/\/127\.0\.0\.1:9/,
  );
  await assert.rejects(connectEngine("ftp://x", { token }), /must start with http/);
});
