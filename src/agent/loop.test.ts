import { test } from "node:test";
import assert from "node:assert/strict";
import { FrozenLakeFamily, type FrozenLakeTask } from "../envs/frozenlake.ts";
import type { EnvFamily, Episode, StepResult, Task, TraceStep } from "../envs/types.ts";
import { Rng } from "../util/rng.ts";
import { replayWithSystem, runEpisodes, sampleReplies, type LoopSettings } from "./loop.ts";
import { FrozenLakePolicy, INVALID_MOVE_REPLY } from "../testing/scripted-policy.ts";
import {
  ScriptedBackend,
  TOK_FENCE,
  TOK_TURN_END,
  fakeEncode,
  fakeLogprob,
  fakeParseChat,
  fakeRenderChat,
} from "../testing/scripted.ts";
import { TrajectoryBuilder } from "./trajectory.ts";

const SETTINGS: LoopSettings = {
  maxTokensPerTurn: 200,
  maxContextTokens: 100_000,
  contextOverflow: "stop",
  turnTokenLimit: "step",
};

const env = new FrozenLakeFamily();
const tasks = env.loadSplit("test").slice(0, 4) as FrozenLakeTask[];

function trainedTokens(t: { ids: number[]; mask: (0 | 1)[] }): number[] {
  return t.ids.filter((_, i) => t.mask[i] === 1);
}

test("incremental trajectory equals a one-shot render, and trained tokens are the sampled ones", async () => {
  const policy = new FrozenLakePolicy({ key: "KEY" });
  const model = new ScriptedBackend(policy.script);
  const outs = await runEpisodes(
    tasks.map((task, i) => ({ id: `e${i}`, task, system: "KEY rules", sampling: { temperature: 0.7 } })),
    { env, model, rng: new Rng(1), settings: SETTINGS },
  );
  for (const o of outs) {
    assert.equal(o.success, true, "the keyed policy solves every map");
    assert.equal(o.stopReason, "goal");
    assert.deepEqual(o.trajectory.ids, fakeRenderChat(o.messages, false));
    assert.deepEqual(
      trainedTokens(o.trajectory),
      o.turns.flatMap((t) => t.tokens),
    );
    const lps = o.trajectory.logprobs.filter((_, i) => o.trajectory.mask[i] === 1);
    assert.deepEqual(
      lps,
      o.turns.flatMap((t) => t.logprobs),
    );
    // Each sampled reply ends with the model's own end-of-turn token, which is trained.
    for (const t of o.turns) assert.equal(t.tokens.at(-1), TOK_TURN_END);
    assert.equal(o.trace.length, o.turns.length);
  }
});

test("non-canonical sampled tokens are kept as sampled, never re-tokenised", async () => {
  const policy = new FrozenLakePolicy({ key: "KEY" });
  const model = new ScriptedBackend(policy.script, { charwise: true });
  const [o] = await runEpisodes([{ id: "e", task: tasks[0]!, system: "KEY", sampling: { temperature: 1 } }], {
    env,
    model,
    rng: new Rng(2),
    settings: SETTINGS,
  });
  const trained = trainedTokens(o!.trajectory);
  assert.deepEqual(
    trained,
    o!.turns.flatMap((t) => t.tokens),
  );
  assert.ok(!trained.includes(TOK_FENCE), "the sampler emitted backticks one by one");
  const oneShot = fakeRenderChat(o!.messages, false);
  assert.notDeepEqual(o!.trajectory.ids, oneShot, "a re-render would have merged the fences");
  assert.ok(oneShot.includes(TOK_FENCE));
  // Everything but the replies is still exactly the template's tokens.
  assert.deepEqual(fakeParseChat(o!.trajectory.ids), o!.messages);
});

test("one sample call per turn for all running episodes, one per sampling setting", async () => {
  const policy = new FrozenLakePolicy({ key: "KEY" });
  const model = new ScriptedBackend(policy.script);
  const requests = tasks.map((task, i) => ({
    id: `e${i}`,
    task,
    system: "no rules",
    sampling: { temperature: i % 2 === 0 ? 0.7 : 0.3, topP: 0.9 },
  }));
  const turns: string[] = [];
  const outs = await runEpisodes(requests, {
    env,
    model,
    rng: new Rng(3),
    settings: SETTINGS,
    onTurn: (turn, max, done, total) => void turns.push(`${turn}/${max} ${done}/${total}`),
  });
  // Progress sees every turn start, though no episode ends before the budget.
  assert.deepEqual(
    turns,
    Array.from({ length: env.maxTurns }, (_, i) => `${i + 1}/${env.maxTurns} 0/${requests.length}`),
  );
  // Failing episodes use the whole budget: 8 turns × 2 settings.
  assert.equal(model.calls.length, 2 * env.maxTurns);
  for (const call of model.calls) {
    assert.equal(call.request.prompts.length, 2);
    assert.equal(call.request.n, 1);
    assert.deepEqual(call.request.stopTokenIds, [TOK_TURN_END]);
    for (const conv of call.conversations) assert.equal(conv[0]!.content, "no rules");
  }
  assert.deepEqual(model.calls.map((c) => c.request.temperature).slice(0, 2), [0.7, 0.3]);
  for (const o of outs) {
    assert.equal(o.stopReason, "budget");
    assert.equal(o.reward, 0);
    assert.ok(o.turns.every((t) => t.text === INVALID_MOVE_REPLY));
  }
  // Full history: the last call shows every earlier reply and board.
  const last = model.calls.at(-1)!.conversations[0]!;
  assert.equal(last.filter((m) => m.role === "assistant").length, env.maxTurns - 1);
});

test("the same seed gives the same episodes", async () => {
  const run = async () => {
    const rngScript = (input: { rng: Rng }) => (input.rng.next() < 0.5 ? "```\nleft\n```" : "```\nup\n```");
    const model = new ScriptedBackend(rngScript);
    const outs = await runEpisodes(
      tasks.map((task, i) => ({ id: `e${i}`, task, system: "s", sampling: { temperature: 1 } })),
      { env, model, rng: new Rng(99), settings: SETTINGS },
    );
    return outs.map((o) => o.trajectory.ids);
  };
  assert.deepEqual(await run(), await run());
});

test("context overflow: stop ends the episode; shrink lowers the turn's token limit", async () => {
  const policy = new FrozenLakePolicy({ key: "KEY" });
  const system = "no rules";
  // Measure the prompt of the second turn, then allow 20 tokens beyond it.
  const probe = new ScriptedBackend(policy.script);
  await runEpisodes([{ id: "p", task: tasks[0]!, system, sampling: { temperature: 1 } }], {
    env,
    model: probe,
    rng: new Rng(4),
    settings: SETTINGS,
  });
  const secondPrompt = probe.calls[1]!.request.prompts[0]!.length;
  const settings = { ...SETTINGS, maxTokensPerTurn: 40, maxContextTokens: secondPrompt + 20 };
  const stopModel = new ScriptedBackend(policy.script);
  const [stopped] = await runEpisodes([{ id: "a", task: tasks[0]!, system, sampling: { temperature: 1 } }], {
    env,
    model: stopModel,
    rng: new Rng(4),
    settings,
  });
  assert.equal(stopped!.stopReason, "context");
  assert.equal(stopped!.turns.length, 1);
  assert.match(stopped!.feedback, /stopped/);

  const shrinkModel = new ScriptedBackend(policy.script);
  const [shrunk] = await runEpisodes([{ id: "b", task: tasks[0]!, system, sampling: { temperature: 1 } }], {
    env,
    model: shrinkModel,
    rng: new Rng(4),
    settings: { ...settings, contextOverflow: "shrink" },
  });
  const limits = shrinkModel.calls.map((c) => c.request.maxTokens);
  assert.equal(limits[0], 40);
  assert.deepEqual(limits.slice(0, 2), [40, 20]);
  assert.equal(shrunk!.stopReason, "context");
  assert.ok(shrunk!.turns.length >= 2);
});

test("turn token limit: 'step' passes the cut reply to the env, 'stop' ends the episode", async () => {
  const long = () => "x".repeat(50) + "\n```\nup\n```";
  const stepModel = new ScriptedBackend(long);
  const [stepped] = await runEpisodes(
    [{ id: "a", task: tasks[1]!, system: "s", sampling: { temperature: 1 } }],
    {
      env,
      model: stepModel,
      rng: new Rng(5),
      settings: { ...SETTINGS, maxTokensPerTurn: 20 },
    },
  );
  assert.equal(stepped!.turns[0]!.stop, "length");
  assert.equal(stepped!.turns[0]!.tokens.length, 20);
  assert.equal(stepped!.trace[0]!.result.valid, false, "a cut reply has no action");
  assert.equal(stepped!.stopReason, "budget");
  // The cut reply is closed by the template's end-of-turn tokens, which are not trained.
  const firstEnd = stepped!.trajectory.ids.indexOf(TOK_TURN_END, stepped!.trajectory.mask.indexOf(1));
  assert.equal(stepped!.trajectory.mask[firstEnd], 0);

  const stopModel = new ScriptedBackend(long);
  const [stopped] = await runEpisodes(
    [{ id: "b", task: tasks[1]!, system: "s", sampling: { temperature: 1 } }],
    {
      env,
      model: stopModel,
      rng: new Rng(5),
      settings: { ...SETTINGS, maxTokensPerTurn: 20, turnTokenLimit: "stop" },
    },
  );
  assert.equal(stopped!.stopReason, "context");
  assert.equal(stopped!.trace.length, 0);
});

/** A stand-in tool environment: `<call>q</call>` returns a tool message; any other reply answers. */
class ToolEpisode implements Episode {
  readonly initialObservation = "Question: what is 2+2?";
  done = false;
  trace: TraceStep[] = [];
  totalReward = 0;
  success = false;
  private last = this.initialObservation;
  async step(action: string): Promise<StepResult> {
    await new Promise((r) => setTimeout(r, 1)); // tools may be asynchronous
    const isCall = action.includes("<call>");
    const correct = !isCall && action.includes("4");
    const result: StepResult = {
      observation: isCall ? `results for ${action}` : "",
      observationRole: "tool",
      reward: correct ? 1 : 0,
      done: !isCall,
      stopReason: isCall ? null : "answered",
      effective: true,
      valid: true,
      comment: isCall ? "searched" : "answered",
    };
    this.trace.push({ observation: this.last, action, result });
    this.last = result.observation;
    this.totalReward += result.reward;
    this.success = correct;
    this.done = result.done;
    return result;
  }
  feedback(): string {
    return this.success ? "correct" : "incorrect";
  }
}

const toolEnv: EnvFamily & { stopStrings: string[] } = {
  name: "toy-tool",
  maxTurns: 5,
  stopStrings: ["</call>"],
  loadSplit: () => [],
  makeEpisode: () => new ToolEpisode(),
  prompt: () => ({ taskDescription: "Answer.", formatReminder: "Use <call>q</call> to search." }),
};

test("tool calls run between turns, with stop strings and tool-role messages", async () => {
  const script = ({ messages }: { messages: { role: string }[] }) =>
    messages.some((m) => m.role === "tool") ? "It is 4." : "<call>sum</call> and more text";
  const model = new ScriptedBackend(script);
  const task: Task = { id: "q1", env: "toy-tool" };
  const [o] = await runEpisodes([{ id: "t", task, system: "sys", sampling: { temperature: 0 } }], {
    env: toolEnv,
    model,
    rng: new Rng(6),
    settings: SETTINGS,
    stopStrings: toolEnv.stopStrings,
  });
  assert.deepEqual(model.calls[0]!.request.stopStrings, ["</call>"]);
  assert.equal(o!.turns[0]!.text, "<call>sum</call>", "generation stopped at the stop string");
  assert.deepEqual(
    o!.messages.map((m) => m.role),
    ["system", "user", "assistant", "tool", "assistant"],
  );
  assert.equal(o!.reward, 1);
  assert.equal(o!.stopReason, "answered");
  assert.deepEqual(o!.trajectory.ids, fakeRenderChat(o!.messages, false));
});

test("replay under another system prompt keeps the sampled tokens and re-renders the rest", async () => {
  const policy = new FrozenLakePolicy({ key: "KEY" });
  const model = new ScriptedBackend(policy.script, { charwise: true });
  const [o] = await runEpisodes(
    [{ id: "e", task: tasks[2]!, system: "KEY rulebook", sampling: { temperature: 1 } }],
    {
      env,
      model,
      rng: new Rng(7),
      settings: SETTINGS,
    },
  );
  const replay = await replayWithSystem(model, o!, "initial prompt");
  assert.deepEqual(trainedTokens(replay), trainedTokens(o!.trajectory));
  const messages = [{ role: "system" as const, content: "initial prompt" }, ...o!.messages.slice(1)];
  assert.deepEqual(fakeParseChat(replay.ids), messages);
  assert.ok(
    replay.logprobs.every((x) => x === 0),
    "old log-probs are recomputed later",
  );
});

test("sampleReplies batches single replies and keeps their tokens", async () => {
  const model = new ScriptedBackend(({ messages }) => `echo ${messages[1]!.content}`);
  const replies = await sampleReplies(
    ["a", "b", "c"].map((x) => ({
      messages: [
        { role: "system" as const, content: "s" },
        { role: "user" as const, content: x },
      ],
      sampling: { temperature: 0.5, topP: 0.9 },
      maxTokens: 50,
    })),
    { model, rng: new Rng(8), maxContextTokens: 10_000 },
  );
  assert.equal(model.calls.length, 1);
  assert.equal(model.calls[0]!.request.topP, 0.9);
  assert.deepEqual(
    replies.map((r) => r.text),
    ["echo a", "echo b", "echo c"],
  );
  const r = replies[1]!;
  assert.deepEqual(trainedTokens(r.trajectory), [...fakeEncode("echo b"), TOK_TURN_END]);
  const start = r.trajectory.mask.indexOf(1);
  assert.equal(r.trajectory.logprobs[start], fakeLogprob(r.trajectory.ids[start]!, start));
});

test("a template that rewrites earlier turns is refused", async () => {
  const model = new ScriptedBackend(() => "hi");
  // Rendering that drops the system message once a conversation has more than three messages.
  const broken = Object.assign(Object.create(model) as ScriptedBackend, {
    renderChat: async (
      messages: { role: "system" | "user" | "assistant" | "tool"; content: string }[],
      o: { addGenerationPrompt: boolean },
    ) => fakeRenderChat(messages.length > 3 ? messages.slice(1) : messages, o.addGenerationPrompt),
  });
  const b = await TrajectoryBuilder.start(broken, [
    { role: "system", content: "s" },
    { role: "user", content: "u" },
  ]);
  b.appendSampled([...fakeEncode("hi"), TOK_TURN_END], [0, 0, 0], "hi");
  await assert.rejects(b.appendMessages([{ role: "user", content: "again" }]), /earlier turns/);
});

test("HotpotQA through the loop: a search turn, a tool message, then a boxed answer", async () => {
  const { getEnv } = await import("../envs/registry.ts");
  const { envStopStrings } = await import("../algo/attempts.ts");
  const hotpot = getEnv("hotpotqa");
  const task = hotpot.loadSplit("test")[0]! as Task & { answer: string; question: string };
  const script = ({ messages }: { messages: { role: string }[] }) =>
    messages.some((m) => m.role === "tool")
      ? `The answer is \\boxed{${task.answer}}.`
      : `<tool_call>{"name": "search", "arguments": {"query": "${task.question.slice(0, 40).replace(/"/g, "")}"}}</tool_call> then more`;
  const model = new ScriptedBackend(script);
  const stopStrings = envStopStrings(hotpot);
  assert.deepEqual(stopStrings, ["</tool_call>"]);
  const [o] = await runEpisodes([{ id: "h", task, system: "sys", sampling: { temperature: 0 } }], {
    env: hotpot,
    model,
    rng: new Rng(9),
    settings: SETTINGS,
    stopStrings,
  });
  assert.ok(o!.turns[0]!.text.endsWith("</tool_call>"), "generation stopped after the call");
  assert.deepEqual(
    o!.messages.map((m) => m.role),
    ["system", "user", "assistant", "tool", "assistant"],
  );
  assert.equal(o!.reward, 1);
  assert.equal(o!.success, true);
  assert.equal(o!.stopReason, "answered");
  assert.deepEqual(o!.trajectory.ids, fakeRenderChat(o!.messages, false));
});
