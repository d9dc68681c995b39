// Drives the real engine child process (stdio) through the TypeScript client with the tiny fixture:
// tokenizer round trips, forward vs a direct PyTorch computation, sample vs forward, training calls,
// bad input that must not stop the engine, and a clear error when the engine dies.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { startEngine, type EngineClient } from "./client.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import { EngineError } from "./protocol.ts";
import type { ChatMessage, Datum } from "./api.ts";

const FIXTURE = join(REPO_ROOT, "test", "fixtures", "tiny-model");
let engine: EngineClient;

before(async () => {
  engine = await startEngine();
  await engine.loadModel({ path: FIXTURE, dtype: "float32", device: "cpu", seed: 0 });
});
after(async () => {
  await engine.close();
});

/** Log-probs of targets computed by plain transformers + torch in a separate Python process. */
function directLogprobs(datums: Datum[]): number[][] {
  const script = `
import json, sys, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
out = []
for d in json.loads(sys.argv[2]):
    with torch.no_grad():
        logits = m(torch.tensor([d["inputIds"]])).logits[0].double()
    tgt = d["targetIds"]
    out.append(torch.log_softmax(logits, -1)[torch.arange(len(tgt)), torch.tensor(tgt)].tolist())
print(json.dumps(out))`;
  const r = spawnSync(defaultPython(), ["-c", script, FIXTURE, JSON.stringify(datums)], {
    encoding: "utf8",
    env: { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_VERBOSITY: "error" },
  });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout.trim().split("\n").pop() ?? "[]") as number[][];
}

test("info reports the loaded model", async () => {
  const info = await engine.info();
  assert.equal(info.model?.vocabSize, 105);
  assert.deepEqual(info.model?.eosTokenIds, [2]);
  assert.equal(info.parameters.total, info.parameters.trainable);
  assert.ok(info.parameters.total > 50_000);
});

test("encode/decode round-trip and the chat template renders incrementally", async () => {
  const text = "Go left.\tThen √2!\n";
  const ids = await engine.encode(text);
  assert.equal(ids.length, [...text].length);
  assert.equal(await engine.decode(ids), text);
  const msgs: ChatMessage[] = [
    { role: "system", content: "rules" },
    { role: "user", content: "state A" },
    { role: "assistant", content: "move up" },
    { role: "tool", content: '{"ok":true}' },
    { role: "user", content: "state B" },
  ];
  const full = await engine.renderChat(msgs);
  let prefix: number[] = [];
  for (let k = 1; k <= msgs.length; k++) {
    const part = await engine.renderChat(msgs.slice(0, k));
    assert.deepEqual(
      part.slice(0, prefix.length),
      prefix,
      `render of ${k} messages extends the render of ${k - 1}`,
    );
    prefix = part;
  }
  assert.deepEqual(prefix, full);
  // A generation prompt followed by the assistant's tokens and the end-of-turn token is the render
  // of the conversation with that assistant message.
  const withPrompt = await engine.renderChat(msgs.slice(0, 2), { addGenerationPrompt: true });
  const reply = [...(await engine.encode("move up")), 2];
  assert.deepEqual([...withPrompt, ...reply], await engine.renderChat(msgs.slice(0, 3)));
});

test("renderChats and decodeMany equal one renderChat / decode each; EngineBackend batches a turn's calls", async () => {
  const chats = [
    { messages: [{ role: "user", content: "state A" }] as ChatMessage[], addGenerationPrompt: true },
    {
      messages: [
        { role: "system", content: "rules" },
        { role: "user", content: "state B" },
      ] as ChatMessage[],
    },
  ];
  const batched = await engine.renderChats(chats);
  assert.deepEqual(batched, [
    await engine.renderChat(chats[0]!.messages, { addGenerationPrompt: true }),
    await engine.renderChat(chats[1]!.messages),
  ]);
  const texts = await engine.decodeMany([batched[0]!, batched[1]!, []], { skipSpecialTokens: true });
  assert.deepEqual(texts, [
    await engine.decode(batched[0]!, { skipSpecialTokens: true }),
    await engine.decode(batched[1]!, { skipSpecialTokens: true }),
    "",
  ]);
  await assert.rejects(engine.decodeMany([[1, 999]]), /params\.seqs\[0\]\[1\]: token id 999/);

  const { EngineBackend } = await import("../agent/backend.ts");
  const backend = await EngineBackend.create(engine);
  const many = await Promise.all(
    chats.map((c) => backend.renderChat(c.messages, { addGenerationPrompt: !!c.addGenerationPrompt })),
  );
  assert.deepEqual(many, batched);
  assert.deepEqual(await Promise.all(batched.map((ids) => backend.decode(ids))), texts.slice(0, 2));
  assert.equal(backend.renders!.batches, 1);
  assert.equal(backend.decodes!.batches, 1);
});

test("forward log-probs equal a direct PyTorch computation", async () => {
  const ids = await engine.renderChat([{ role: "user", content: "hello there" }], {
    addGenerationPrompt: true,
  });
  const datum: Datum = {
    inputIds: ids.slice(0, -1),
    targetIds: ids.slice(1),
    weights: ids.slice(1).map(() => 1),
  };
  const short: Datum = { inputIds: [4, 50], targetIds: [50, 60], weights: [1, 0] };
  const [lp, lpShort] = await engine.forward([datum, short]);
  const [want = [], wantShort = []] = directLogprobs([datum, short]);
  assert.equal(lp?.length, want.length);
  assert.equal(lpShort?.length, 2);
  want.forEach((w, i) =>
    assert.ok(Math.abs((lp?.[i] ?? NaN) - w) < 1e-4, `position ${i}: ${lp?.[i]} vs ${w}`),
  );
  wantShort.forEach((w, i) => assert.ok(Math.abs((lpShort?.[i] ?? NaN) - w) < 1e-4));
});

test("sampled log-probs equal forward's, and the same seed gives the same tokens", async () => {
  const prompts = [
    await engine.renderChat([{ role: "user", content: "hi" }], { addGenerationPrompt: true }),
    [5],
  ];
  const req = { prompts, n: 3, maxTokens: 12, temperature: 1, seed: 7 };
  const seqs = await engine.sample(req);
  assert.equal(seqs.length, 6);
  assert.deepEqual(
    seqs.map((s) => s.promptIndex),
    [0, 0, 0, 1, 1, 1],
  );
  const again = await engine.sample(req);
  assert.deepEqual(
    again.map((s) => s.tokens),
    seqs.map((s) => s.tokens),
  );
  const datums: Datum[] = seqs.map((s) => {
    const p = prompts[s.promptIndex] ?? [];
    const all = [...p, ...s.tokens];
    return { inputIds: all.slice(0, -1), targetIds: all.slice(1), weights: all.slice(1).map(() => 1) };
  });
  const fwd = await engine.forward(datums);
  seqs.forEach((s, k) => {
    const p = prompts[s.promptIndex] ?? [];
    const tail = (fwd[k] ?? []).slice(p.length - 1);
    assert.equal(tail.length, s.logprobs.length);
    s.logprobs.forEach((l, i) => assert.ok(Math.abs(l - (tail[i] ?? NaN)) < 1e-4, `seq ${k} token ${i}`));
    if (s.stopReason === "stop") assert.equal(s.tokens.at(-1), 2);
    else assert.equal(s.tokens.length, 12);
  });
});

test("forwardBackward + optimStep lower the cross-entropy of a repeated example", async () => {
  const ids = await engine.encode("abcabcabcabc");
  const datum: Datum = {
    inputIds: ids.slice(0, -1),
    targetIds: ids.slice(1),
    weights: ids.slice(1).map(() => 1),
  };
  const first = await engine.forwardBackward([datum], { name: "cross_entropy" });
  assert.ok(first.metrics.grad_norm! > 0);
  const step = await engine.optimStep({ lr: 1e-2, gradClip: 1.0 });
  assert.ok(step.gradNorm > 0);
  for (let i = 0; i < 3; i++) {
    await engine.forwardBackward([datum], { name: "cross_entropy" });
    await engine.optimStep({ lr: 1e-2, gradClip: 1.0 });
  }
  const last = await engine.forwardBackward([datum], { name: "cross_entropy" });
  assert.ok(last.loss < first.loss, `loss ${last.loss} should be below ${first.loss}`);
  await engine.optimStep({ lr: 0 });
});

test("bad input is a clear error and the engine keeps serving", async () => {
  const cases: [() => Promise<unknown>, RegExp][] = [
    [
      () => engine.forward([{ inputIds: [1, 2], targetIds: [2], weights: [1] }]),
      /datums\[0\]\.targetIds: has 1 values but inputIds has 2/,
    ],
    [
      () => engine.forward([{ inputIds: [1, 2], targetIds: [2, 999], weights: [1, 1] }]),
      /targetIds\[1\]: token id 999 is outside/,
    ],
    [
      () =>
        engine.forwardBackward(
          [
            {
              inputIds: [1, 2],
              targetIds: [2, 3],
              weights: [1, 1],
              advantages: [NaN, 1],
              oldLogprobs: [0, 0],
            },
          ],
          {
            name: "ppo",
          },
        ),
      /advantages\[0\]: NaN is not allowed/,
    ],
    [
      () =>
        engine.forwardBackward([{ inputIds: [1], targetIds: [2], weights: [1] }], { name: "dpo" as "ppo" }),
      /params\.loss\.name: expected one of/,
    ],
    [
      () => engine.loadModel({ path: "/no/such/model", dtype: "float32", device: "cpu", seed: 0 }),
      /model directory not found: \/no\/such\/model/,
    ],
  ];
  for (const [call, re] of cases) {
    await assert.rejects(call, (e: unknown) => {
      assert.ok(e instanceof EngineError, String(e));
      assert.match(e.message, re);
      return true;
    });
  }
  // Still serving, with the same model.
  assert.equal((await engine.info()).model?.vocabSize, 105);
});

test("when the engine dies, calls fail with its last stderr lines (runs last: kills the engine)", async () => {
  const transport = engine.transport as unknown as { child: { pid: number } };
  const pending = engine.sample({ prompts: [[5]], n: 64, maxTokens: 900, temperature: 1, seed: 1 });
  process.kill(transport.child.pid, "SIGKILL");
  await assert.rejects(pending, (e: unknown) => {
    assert.ok(e instanceof EngineError);
    assert.equal(e.code, "engine_exited");
    assert.match(
      e.message,
      /engine sample: the engine process was killed by SIGKILL; its last stderr lines:/,
    );
    assert.match(e.message, /erl-engine .* ready \(stdio/);
    return true;
  });
  await assert.rejects(engine.info(), /engine info: the engine process was killed by SIGKILL/);
});
