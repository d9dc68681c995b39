/**
 * A scripted policy drives the real ERL step on real FrozenLake tasks: it fails unless its system
 * prompt holds the key rulebook (or the test marks a first attempt lucky), and its reflections are
 * good or tag-less as the test decides. Every expected value below follows from that by hand.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { ChatMessage } from "../engine/api.ts";
import { FrozenLakeFamily, type FrozenLakeTask } from "../envs/frozenlake.ts";
import { FrozenLakePolicy, INVALID_MOVE_REPLY } from "../testing/scripted-policy.ts";
import { ScriptedBackend, fakeForwardLogprob, fakeParseChat } from "../testing/scripted.ts";
import { getPromptProfile } from "../agent/prompts.ts";
import { Rng } from "../util/rng.ts";
import { erlStep } from "./erl.ts";
import { evaluate } from "./eval.ts";
import { RulebookMemory, createMemory } from "./memory.ts";
import { rlvrStep } from "./rlvr.ts";
import { applyOverrides, defaultConfig, evalOptionsFrom } from "../train/config.ts";
import { erlOptionsFrom } from "../train/algorithms/erl.ts";
import { rlvrOptionsFrom } from "../train/algorithms/rlvr.ts";
import {
  type AlgoContext,
  type ErlOptions,
  type MemoryMode,
  type StepResult,
  type TrainSample,
} from "./types.ts";

const KEY = "RULEBOOK-KEY";
const env = new FrozenLakeFamily();
const tasks: FrozenLakeTask[] = env.loadSplit("test").slice(0, 3);
const [t0, t1, t2] = tasks.map((t) => t.id) as [string, string, string];
const parts = env.prompt();
const initialPrompt = getPromptProfile("paper").initialSystemPrompt(parts);
// The run config's defaults (the one table), with the `paper` prompt profile the scripted policy is
// written for and a context that holds its long prompts (the fake tokenizer spends a token a character).
const CONFIG = applyOverrides(defaultConfig(), ["algo.profile=paper", "algo.maxContextTokens=8192"]);
const RLVR = rlvrOptionsFrom(applyOverrides(CONFIG, ["algo.name=rlvr"]));
const A = 1 / Math.sqrt(2) / (1 + 1e-6 * Math.sqrt(2)); // GRPO advantage of a [1, 0] group: 0.5 / (std 0.7071 + 1e-6)

/** Scenario: first call's prompts 0, 1 (task 0) and 2 (task 1, attempt 0) are lucky; reflections alternate good, bad, good. */
const lucky = (call: number, prompt: number) => call === 0 && prompt <= 2;
const alternate = (k: number) => k % 2 === 0;

function setup(opts: { memory?: MemoryMode; erl?: Partial<ErlOptions>; seed?: number } = {}) {
  const policy = new FrozenLakePolicy({ key: KEY, lucky, goodReflection: alternate });
  const model = new ScriptedBackend(policy.script);
  const memoryMode = opts.memory ?? { kind: "global" };
  const memory = createMemory(memoryMode);
  const ctx: AlgoContext = { env, model, memory, rng: new Rng(opts.seed ?? 7), step: 1 };
  const options: ErlOptions = { ...erlOptionsFrom(CONFIG), n: 2, memory: memoryMode, ...opts.erl };
  return { policy, model, memory, ctx, options };
}

function chat(s: TrainSample): ChatMessage[] {
  return fakeParseChat(s.ids);
}
function trained(s: { ids: number[]; mask: (0 | 1)[] }): number[] {
  return s.ids.filter((_, i) => s.mask[i] === 1);
}
function byStage(r: StepResult, stage: TrainSample["stage"]): TrainSample[] {
  return r.samples.filter((s) => s.stage === stage);
}
function near(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) < 1e-9, `${what}: ${actual} vs ${expected}`);
}
function deltaOf(rulebookIndex: number, policy: FrozenLakePolicy): string {
  return `${policy.rulebooks[rulebookIndex]}\n\n${parts.formatReminder.trim()}`;
}

test("ERL step: gating, sample kinds, contexts, rewards, groups and advantages", async () => {
  const { policy, model, memory, ctx, options } = setup();
  const r = await erlStep(ctx, tasks, options);

  // Gate: successes (task 0 both, task 1 attempt 0) are not retried.
  const firstRecs = r.rollouts.filter((x) => x.stage === "first");
  const secondRecs = r.rollouts.filter((x) => x.stage === "second");
  assert.deepEqual(
    firstRecs.map((x) => x.reward),
    [1, 1, 1, 0, 0, 0],
  );
  assert.deepEqual(
    secondRecs.map((x) => [x.task, x.attempt, x.reward]),
    [
      [t1, 1, 1],
      [t2, 0, 0],
      [t2, 1, 1],
    ],
  );
  assert.deepEqual(
    secondRecs.map((x) => x.episode),
    ["s1-t1-a1-second", "s1-t2-a0-second", "s1-t2-a1-second"],
  );
  assert.equal(policy.reflections, 3);

  // Sample kinds and counts.
  assert.deepEqual(
    (["first", "reflection", "second", "distill"] as const).map((s) => byStage(r, s).length),
    [6, 3, 3, 3],
  );
  near(r.metrics["reward/first"]!, 0.5, "reward/first");
  near(r.metrics["reward/second"]!, 2 / 3, "reward/second");
  near(r.metrics["reward/post_reflection"]!, 5 / 6, "post-reflection");
  near(r.metrics.gate_rate!, 0.5, "gate rate");
  assert.equal(r.metrics["memory/updates"], 2);
  near(r.metrics["reflection/tag_rate"]!, 2 / 3, "tag rate");

  // Groups and advantages: first (t0 all 1, t1 [1,0], t2 all 0), reflection/second (t1 singleton, t2 [0,1]).
  const first = byStage(r, "first");
  assert.deepEqual(
    first.map((s) => s.group),
    [0, 0, 1, 1, 2, 2].map((k) => `t${k}:${tasks[k]!.id}|first`),
  );
  [0, 0, A, -A, 0, 0].forEach((a, i) => near(first[i]!.advantage, a, `first ${i}`));
  for (const stage of ["reflection", "second"] as const) {
    const xs = byStage(r, stage);
    assert.deepEqual(
      xs.map((s) => [s.group, s.reward]),
      [
        [`t1:${t1}|${stage}`, 1],
        [`t2:${t2}|${stage}`, 0],
        [`t2:${t2}|${stage}`, 1],
      ],
    );
    [1, -A, A].forEach((a, i) => near(xs[i]!.advantage, a, `${stage} ${i}`));
  }
  const distill = byStage(r, "distill");
  assert.deepEqual(
    distill.map((s) => [s.group, s.reward, s.distillWeight, s.advantage]),
    [
      ["", 1, 1, 1],
      ["", 0, 0, 0],
      ["", 1, 1, 1],
    ],
  );

  // Contexts. First attempts: the initial prompt and the first board.
  first.forEach((s, i) => {
    const m = chat(s);
    assert.equal(m[0]!.content, initialPrompt);
    assert.equal(m[1]!.content, env.makeEpisode(tasks[Math.floor(i / 2)]!).initialObservation);
  });
  // Reflections: the reflection prompt with the initial prompt shown (memory empty at batch start),
  // the first attempt's trace, reward and feedback; trained tokens are Δ's raw text.
  const reflections = byStage(r, "reflection");
  reflections.forEach((s, i) => {
    const m = chat(s);
    assert.equal(m.length, 3);
    assert.ok(m[0]!.content.includes("<prompt>"));
    assert.ok(m[1]!.content.includes(`## The system prompt the attempt was made under\n${initialPrompt}`));
    assert.ok(m[1]!.content.includes("Action: I am not sure."));
    assert.ok(m[1]!.content.includes("Reward: 0"));
    assert.ok(m[1]!.content.includes("Outcome: ran out of steps"));
    assert.equal(m[2]!.role, "assistant");
    assert.equal(m[2]!.content, secondRecs[i]!.reflection!.text);
    assert.ok(!m[1]!.content.includes(KEY), "no rulebook was in memory yet");
  });
  assert.match(secondRecs[0]!.reflection!.text, /^Here is the new prompt\.\n<prompt>/);
  // Second attempts: Δ (format reminder ensured) replaces the system prompt; no trace of attempt 1.
  const second = byStage(r, "second");
  const deltas = [deltaOf(0, policy), initialPrompt, deltaOf(1, policy)];
  second.forEach((s, i) => {
    const m = chat(s);
    assert.equal(m[0]!.content, deltas[i]);
    assert.equal(secondRecs[i]!.system, deltas[i]);
    assert.equal(secondRecs[i]!.reflection!.rulebook, deltas[i]);
  });
  assert.ok(deltas[0]!.endsWith(parts.formatReminder.trim()));
  for (const i of [0, 2])
    assert.ok(chat(second[i]!).every((msg) => !msg.content.includes(INVALID_MOVE_REPLY)));
  // Distill: the same replies under the initial prompt, old log-probs recomputed there.
  distill.forEach((d, i) => {
    const m = chat(d);
    const sm = chat(second[i]!);
    assert.equal(m[0]!.content, initialPrompt);
    assert.deepEqual(m.slice(1), sm.slice(1));
    assert.deepEqual(trained(d), trained(second[i]!));
    d.ids.forEach((tok, pos) => {
      if (d.mask[pos] === 1) assert.equal(d.logprobs[pos], fakeForwardLogprob(tok, pos));
      else assert.equal(d.logprobs[pos], 0);
    });
    assert.notDeepEqual(
      d.logprobs.filter((_, p) => d.mask[p] === 1),
      second[i]!.logprobs.filter((_, p) => second[i]!.mask[p] === 1),
    );
  });
  assert.equal(model.forwardCalls.length, 1, "one forward call scores every distill sample");

  // Memory: written for successful second attempts, at batch end, in batch order.
  assert.deepEqual(r.memoryWrites, [
    { step: 1, episode: "s1-t1-a1-second", task: t1, rulebook: deltas[0], previous: null },
    { step: 1, episode: "s1-t2-a1-second", task: t2, rulebook: deltas[2], previous: deltas[0] },
  ]);
  assert.equal(memory.read(0), null, "the step only reads memory: its caller writes");
  memory.apply(r.memoryWrites);
  assert.equal(memory.read(0), deltas[2]);
  assert.equal(secondRecs[2]!.reflection!.memoryBefore, null);

  // Sampling: attempts at 0.7, the one batched reflection call at 0.5 / top-p 0.9.
  const reflectionCalls = model.calls.filter((c) =>
    c.conversations.some((m) => m[0]!.content.includes("<prompt>")),
  );
  assert.equal(reflectionCalls.length, 1);
  assert.equal(reflectionCalls[0]!.request.prompts.length, 3);
  assert.deepEqual([reflectionCalls[0]!.request.temperature, reflectionCalls[0]!.request.topP], [0.5, 0.9]);
  for (const c of model.calls) if (c !== reflectionCalls[0]) assert.equal(c.request.temperature, 0.7);

  // Step 2 reads the memory written by step 1, in reflections only.
  ctx.step = 2;
  const r2 = await erlStep(ctx, tasks, options);
  assert.equal(r2.metrics.gate_rate, 1);
  for (const s of byStage(r2, "first")) assert.equal(chat(s)[0]!.content, initialPrompt);
  for (const s of byStage(r2, "reflection"))
    assert.ok(chat(s)[1]!.content.includes(`## Rulebook from memory\n`));
  for (const s of byStage(r2, "reflection")) {
    // The memory rulebook is not what the attempt ran under: it is labelled as memory.
    const user = chat(s)[1]!.content;
    assert.ok(user.includes(`did not see it`) && user.includes(`${deltas[2]}\n\n## The attempt`));
    assert.ok(!/current system prompt/i.test(user));
    assert.ok(!/attempt under the current system prompt/i.test(chat(s)[0]!.content));
  }
  for (const rec of r2.rollouts.filter((x) => x.stage === "second"))
    assert.equal(rec.reflection!.memoryBefore, deltas[2]);
});

test("perWorker memory: slots by batch position, read at batch start, written at batch end", async () => {
  const { policy, memory, ctx, options } = setup({ memory: { kind: "perWorker", k: 4 } });
  const r = await erlStep(ctx, tasks, options);
  // Retried positions 3, 4, 5 → slots 3, 0, 1; good reflections at positions 3 and 5.
  const d0 = deltaOf(0, policy);
  const d1 = deltaOf(1, policy);
  assert.deepEqual(
    r.memoryWrites.map((w) => [w.worker, w.rulebook, w.previous]),
    [
      [3, d0, null],
      [1, d1, null],
    ],
  );
  memory.apply(r.memoryWrites);
  assert.deepEqual(memory.toJSON().slots, [null, d1, null, d0]);
  assert.deepEqual(
    r.rollouts.filter((x) => x.stage === "first").map((x) => x.worker),
    [0, 1, 2, 3, 0, 1],
  );
  ctx.step = 2;
  const r2 = await erlStep(ctx, tasks, options);
  assert.deepEqual(
    r2.rollouts.filter((x) => x.stage === "second").map((x) => x.reflection!.memoryBefore),
    [null, d1, null, d0, null, d1],
  );
  // Memory round-trips through JSON for checkpoints.
  const restored = RulebookMemory.fromJSON(JSON.parse(JSON.stringify(memory)));
  assert.deepEqual(restored.toJSON(), memory.toJSON());
  assert.equal(restored.read(3), memory.read(3));
  assert.notEqual(restored.read(3), null);
});

test("noMemory: reflection always starts from the initial prompt; memory is never written", async () => {
  const { memory, ctx, options } = setup({ erl: { noMemory: true } });
  memory.apply([{ step: 0, episode: "x", task: "x", rulebook: "OLD RULES", previous: null }]);
  const r = await erlStep(ctx, tasks, options);
  assert.deepEqual(r.memoryWrites, []);
  assert.equal(memory.read(0), "OLD RULES");
  for (const s of byStage(r, "reflection")) {
    const user = chat(s)[1]!.content;
    assert.ok(user.includes(`## The system prompt the attempt was made under\n${initialPrompt}`));
    assert.ok(!user.includes("OLD RULES"));
  }
  assert.equal(byStage(r, "reflection").length, 3);
  assert.equal(r.metrics["memory/updates"], 0);
});

test("noReflection: no Δ; the second attempt sees the initial prompt plus its past attempt", async () => {
  const { model, memory, ctx, options } = setup({ erl: { noReflection: true } });
  const r = await erlStep(ctx, tasks, options);
  assert.equal(byStage(r, "reflection").length, 0);
  assert.ok(model.calls.every((c) => c.conversations.every((m) => !m[0]!.content.includes("<prompt>"))));
  const second = byStage(r, "second");
  assert.equal(second.length, 3);
  for (const s of second) {
    const system = chat(s)[0]!.content;
    assert.ok(system.startsWith(parts.taskDescription.trim()));
    assert.ok(system.includes("Action: I am not sure."), "the past attempt is shown");
    assert.ok(system.endsWith(parts.formatReminder.trim()));
    assert.equal(s.reward, 0, "without the rulebook the policy still fails");
    assert.equal(s.advantage, 0, "all-equal groups");
  }
  assert.deepEqual(r.memoryWrites, []);
  assert.equal(memory.read(0), null);
  assert.deepEqual(
    byStage(r, "distill").map((d) => d.distillWeight),
    [0, 0, 0],
  );
  assert.ok(r.rollouts.every((x) => x.reflection === undefined));
});

test("noDistill: no distill samples and no scoring pass", async () => {
  const { model, ctx, options } = setup({ erl: { noDistill: true } });
  const r = await erlStep(ctx, tasks, options);
  assert.equal(byStage(r, "distill").length, 0);
  assert.equal(byStage(r, "second").length, 3);
  assert.equal(model.forwardCalls.length, 0);
});

test("singleton and all-equal rules are options", async () => {
  const a = setup({ erl: { singleton: "zero" } });
  const ra = await erlStep(a.ctx, tasks, a.options);
  assert.equal(byStage(ra, "reflection")[0]!.advantage, 0, "task 1's single reflection");
  assert.equal(byStage(ra, "second")[0]!.advantage, 0);

  const b = setup({ erl: { allEqual: "drop" } });
  const rb = await erlStep(b.ctx, tasks, b.options);
  assert.deepEqual(
    byStage(rb, "first").map((s) => s.group),
    [`t1:${t1}|first`, `t1:${t1}|first`],
  );
  assert.equal(byStage(rb, "reflection")[0]!.advantage, 1, "singletons are not all-equal groups");
});

test("reflectionAdvantage reference-twice: each reflection emitted and counted twice (the reference's quirk)", async () => {
  const { ctx, options } = setup({ erl: { reflectionAdvantage: "reference-twice" } });
  const r = await erlStep(ctx, tasks, options);
  const xs = byStage(r, "reflection");
  // Task 1's lone reflection (r2 = 1) becomes the all-equal pair [1, 1]: A = 0, not 1. Task 2's
  // [0, 1] becomes [0, 0, 1, 1]: mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.57735, A = ±0.866.
  const b = 0.5 / (Math.sqrt(1 / 3) + 1e-6);
  assert.deepEqual(
    xs.map((s) => [s.group, s.reward]),
    [
      [`t1:${t1}|reflection`, 1],
      [`t1:${t1}|reflection`, 1],
      [`t2:${t2}|reflection`, 0],
      [`t2:${t2}|reflection`, 0],
      [`t2:${t2}|reflection`, 1],
      [`t2:${t2}|reflection`, 1],
    ],
  );
  [0, 0, -b, -b, b, b].forEach((a, i) => near(xs[i]!.advantage, a, `reflection ${i}`));
  // Second attempts and first attempts are unchanged.
  [1, -A, A].forEach((a, i) => near(byStage(r, "second")[i]!.advantage, a, `second ${i}`));
  await assert.rejects(
    erlStep(ctx, tasks, { ...options, reflectionAdvantage: "twice" as never }),
    /option "reflectionAdvantage"/,
  );
});

test("the same seed gives the same step", async () => {
  const strip = (r: StepResult) => JSON.stringify([r.samples, r.rollouts, r.memoryWrites]);
  const a = setup({ seed: 11 });
  const b = setup({ seed: 11 });
  assert.equal(strip(await erlStep(a.ctx, tasks, a.options)), strip(await erlStep(b.ctx, tasks, b.options)));
});

test("bad options and a memory store of the wrong mode are clear errors", async () => {
  const { ctx, options } = setup();
  await assert.rejects(erlStep(ctx, tasks, { ...options, n: 0 }), /option "n"/);
  await assert.rejects(
    erlStep(ctx, tasks, { ...options, reflectionSampling: { temperature: 0.5, topP: 2 } }),
    /reflectionSampling\.topP/,
  );
  await assert.rejects(
    erlStep(ctx, tasks, { ...options, memory: { kind: "perWorker", k: 2 } }),
    /memory: the store is global/,
  );
});

test("evaluation: first attempts under the initial prompt, never memory", async () => {
  const policy = new FrozenLakePolicy({ key: KEY, lucky: (call, p) => call === 0 && (p <= 1 || p === 4) });
  const model = new ScriptedBackend(policy.script);
  const memory = createMemory({ kind: "global" });
  memory.apply([{ step: 1, episode: "x", task: "x", rulebook: `${KEY}: the answer`, previous: null }]);
  // A full training context, memory included, is accepted; evaluation ignores the memory.
  const ctx: AlgoContext = { env, model, memory, rng: new Rng(3), step: 5 };
  const res = await evaluate(ctx, tasks, evalOptionsFrom(CONFIG));
  assert.equal(res.n, 12);
  near(res.reward, 3 / 12, "eval reward");
  near(res.passAt1, (2 / 4 + 1 / 4 + 0) / 3, "pass@1");
  near(res.passAtN, (1 + 1 + 0) / 3, "pass@n: tasks with at least one success of their 4");
  for (const c of model.calls) {
    assert.deepEqual([c.request.temperature, c.request.topP, c.request.topK], [0.7, 0.8, 20]);
    for (const conv of c.conversations) {
      assert.equal(conv[0]!.content, initialPrompt);
      assert.ok(conv.every((m) => !m.content.includes(KEY)));
    }
  }
  assert.equal(policy.reflections, 0);
  assert.ok(res.rollouts.every((x) => x.stage === "eval" && x.reflection === undefined));
  assert.equal(evalOptionsFrom({ ...CONFIG, env: "hotpotqa" }).n, 1);
});

test("RLVR step: n = 10 first attempts, GRPO within each task, nothing else", async () => {
  const policy = new FrozenLakePolicy({ key: KEY, lucky: (call, p) => call === 0 && p < 5 });
  const model = new ScriptedBackend(policy.script);
  const ctx: AlgoContext = { env, model, memory: createMemory({ kind: "global" }), rng: new Rng(1), step: 1 };
  const r = await rlvrStep(ctx, tasks.slice(0, 2), RLVR);
  assert.equal(r.samples.length, 20);
  assert.ok(r.samples.every((s) => s.stage === "first"));
  // Five successes of ten: mean 0.5, unbiased std sqrt(10·0.25/9) = 0.5270463.
  const a = 0.5 / (Math.sqrt((10 * 0.25) / 9) + 1e-6);
  r.samples.slice(0, 10).forEach((s, i) => near(s.advantage, i < 5 ? a : -a, `rlvr ${i}`));
  r.samples.slice(10).forEach((s) => assert.equal(s.advantage, 0));
  near(r.metrics["reward/first"]!, 0.25, "reward");
  assert.deepEqual(r.memoryWrites, []);
  assert.equal(policy.reflections, 0);
  assert.ok(r.rollouts.every((x) => x.stage === "first" && x.group.endsWith("|first")));
});

test("a task that appears twice in one batch gets one group per copy", async () => {
  // The task cursor wraps into a new pass mid-batch when the pool is smaller than the batch, so a
  // batch can hold the same task twice. Prompt 0 (task 0, first copy) is lucky: rewards [1, 0 | 0, 0 | 0, 0].
  const policy = new FrozenLakePolicy({ key: KEY, lucky: (call, p) => call === 0 && p === 0 });
  const model = new ScriptedBackend(policy.script);
  const ctx: AlgoContext = { env, model, memory: createMemory({ kind: "global" }), rng: new Rng(1), step: 1 };
  const r = await rlvrStep(ctx, [tasks[0]!, tasks[0]!, tasks[1]!], { ...RLVR, n: 2 });
  assert.deepEqual(
    r.samples.map((s) => s.reward),
    [1, 0, 0, 0, 0, 0],
  );
  // Kept apart, the first copy is a [1, 0] group and the second an all-zero one. Merged into one
  // [1, 0, 0, 0] group they would get 1.5 and −0.5.
  [A, -A, 0, 0, 0, 0].forEach((a, i) => near(r.samples[i]!.advantage, a, `sample ${i}`));
  assert.deepEqual(
    r.rollouts.map((x) => x.group),
    [
      `t0:${t0}|first`,
      `t0:${t0}|first`,
      `t1:${t0}|first`,
      `t1:${t0}|first`,
      `t2:${t1}|first`,
      `t2:${t1}|first`,
    ],
  );

  // The ERL step groups its reflection and second-attempt rows the same way.
  const e = setup();
  const re = await erlStep(e.ctx, [tasks[1]!, tasks[1]!], e.options);
  const groups = new Set(re.samples.filter((s) => s.stage === "first").map((s) => s.group));
  assert.equal(groups.size, 2);
});

test("log-probs at the sampling temperature: every sample call and the distill scoring ask for it", async () => {
  const { model, ctx, options } = setup({ erl: { logprobTemperature: 0.7 } });
  const r = await erlStep(ctx, tasks, options);
  assert.ok(byStage(r, "distill").length > 0);
  assert.ok(model.calls.length > 0);
  for (const c of model.calls) assert.equal(c.request.logprobTemperature, 0.7);
  assert.deepEqual(model.forwardTemperatures, [0.7]);
  // At the default (1) the field is left out of the request.
  const d = setup();
  await erlStep(d.ctx, tasks, d.options);
  for (const c of d.model.calls) assert.equal(c.request.logprobTemperature, undefined);
});

test("compact profile: same step structure, compact texts, progress reported per phase", async () => {
  const { ctx, options } = setup({ erl: { profile: "compact" } });
  const events: string[] = [];
  ctx.onProgress = (e) => {
    if (e.done === e.total) events.push(`${e.phase}:${e.total}`);
  };
  const r = await erlStep(ctx, tasks, options);
  assert.deepEqual(
    (["first", "reflection", "second", "distill"] as const).map((s) => byStage(r, s).length),
    [6, 3, 3, 3],
  );
  const compactInitial = getPromptProfile("compact").initialSystemPrompt(parts);
  for (const s of byStage(r, "first")) assert.equal(chat(s)[0]!.content, compactInitial);
  for (const s of byStage(r, "reflection"))
    assert.ok(chat(s)[1]!.content.startsWith(`Prompt:\n${compactInitial}\nTrace:\n#1\n`));
  assert.deepEqual(events, ["first:6", "reflection:3", "second:3", "distill:3"]);
});
