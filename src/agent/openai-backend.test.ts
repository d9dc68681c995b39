// The OpenAI backend's reversible code of conversations: what the trajectory builder needs from a
// ModelBackend (incremental renders extend one-shot renders, the generation header, the end id),
// and that a rendered prompt decodes back into the same messages. No endpoint is needed here; the
// backend talks to a real server in src/train/reflector.test.ts and src/algo/icl.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import type { ChatMessage } from "../engine/api.ts";
import { OpenAIBackend, promptMessages, usageMetrics, emptyUsage } from "./openai-backend.ts";
import { TrajectoryBuilder } from "./trajectory.ts";

const backend = new OpenAIBackend({ baseUrl: "http://127.0.0.1:9/v1", model: "m", apiKey: "k" });

const message = fc.record({
  role: fc.constantFrom("system", "user", "assistant", "tool") as fc.Arbitrary<ChatMessage["role"]>,
  content: fc.string({ unit: "grapheme", maxLength: 40 }),
});

test("rendered prompts decode back into their messages (any Unicode text)", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(message, { maxLength: 6 }), async (msgs) => {
      const ids = await backend.renderChat(msgs, { addGenerationPrompt: true });
      assert.deepEqual(
        promptMessages(ids),
        msgs.map((m) => ({ role: m.role, content: m.content })),
      );
      const reply = msgs.map((m) => m.content).join("|");
      const encoded = (
        await backend.renderChat([{ role: "user", content: reply }], { addGenerationPrompt: false })
      ).slice(1, -1);
      assert.equal(await backend.decode(encoded), reply);
    }),
  );
});

test("message-by-message renders extend each other, as the trajectory builder requires", async () => {
  const b = await TrajectoryBuilder.start(backend, [
    { role: "system", content: "rules" },
    { role: "user", content: "board ☃" },
  ]);
  const reply = [
    ...(await backend.renderChat([{ role: "user", content: "left" }], { addGenerationPrompt: false })),
  ];
  const tokens = [...reply.slice(1, -1), backend.eosTokenIds[0]!];
  b.appendSampled(
    tokens,
    tokens.map(() => 0),
    "left",
  );
  await b.appendMessages([{ role: "user", content: "next board" }]);
  const whole = await backend.renderChat(
    [
      { role: "system", content: "rules" },
      { role: "user", content: "board ☃" },
      { role: "assistant", content: "left" },
      { role: "user", content: "next board" },
    ],
    { addGenerationPrompt: true },
  );
  assert.deepEqual(b.ids, whole);
  assert.throws(() => promptMessages(whole.slice(0, -1)), /generation header/);
});

test("scoring is refused with a message that says why", async () => {
  await assert.rejects(backend.forward([]), /cannot score tokens, so it cannot be trained/);
});

test("usage metrics are differences of snapshots; cost only when priced", () => {
  const a = emptyUsage();
  const b = { calls: 4, seconds: 2, promptTokens: 100, completionTokens: 40, cost: 0.5 };
  assert.deepEqual(usageMetrics("reflector", a, b, true), {
    "reflector/calls": 4,
    "reflector/seconds": 2,
    "reflector/prompt_tokens": 100,
    "reflector/completion_tokens": 40,
    "reflector/latency_s": 0.5,
    "reflector/cost": 0.5,
  });
  assert.equal(usageMetrics("x", a, b, false)["x/cost"], undefined);
  assert.equal(usageMetrics("x", b, b, false)["x/latency_s"], undefined);
});
