import { test } from "node:test";
import assert from "node:assert/strict";
import { FrozenLakeFamily } from "../envs/frozenlake.ts";
import type { TraceStep } from "../envs/types.ts";
import {
  compactProfile,
  ensureFormatReminder,
  extractRulebook,
  findRulebook,
  getPromptProfile,
  paperProfile,
  REASONING_SCAFFOLD,
  referenceProfile,
  rulebookFromReflection,
} from "./prompts.ts";
import { SokobanFamily } from "../envs/sokoban.ts";

const env = new FrozenLakeFamily();
const parts = env.prompt();

function playedTrace(): { trace: readonly TraceStep[]; feedback: string } {
  const task = env.loadSplit("test")[0]!;
  const ep = env.makeEpisode(task);
  ep.step("```\njump\n```");
  ep.step("```\nleft\n```");
  return { trace: ep.trace, feedback: "Outcome: test feedback." };
}

test("initial prompts: task description + format reminder, no symbol meanings", () => {
  for (const profile of [paperProfile, compactProfile, referenceProfile]) {
    const p = profile.initialSystemPrompt(parts);
    assert.ok(p.startsWith(parts.taskDescription));
    assert.ok(p.endsWith(parts.formatReminder));
    assert.ok(!/\b[ABCD] is\b|is a hole|is the goal/.test(p), `${profile.name} explains no symbol`);
  }
  assert.equal(getPromptProfile("compact"), compactProfile);
  assert.throws(() => getPromptProfile("long" as "paper"), /unknown prompt profile "long"/);
});

test("reference profile: the reasoning scaffold before the format reminder, and Sokoban's push reminder", () => {
  const p = referenceProfile.initialSystemPrompt(parts);
  assert.equal(p, `${parts.taskDescription}\n\n${REASONING_SCAFFOLD}\n\n${parts.formatReminder}`);
  for (const piece of ["State:", "Value:", "two most promising moves", "why it is good or bad"])
    assert.ok(REASONING_SCAFFOLD.includes(piece), piece);
  assert.equal(getPromptProfile("reference"), referenceProfile);
  // Sokoban adds its hint after the scaffold; it names no letter.
  const sk = new SokobanFamily().prompt();
  const q = referenceProfile.initialSystemPrompt(sk);
  assert.ok(sk.reasoningHints && /cell beyond it/.test(sk.reasoningHints));
  assert.equal(
    q,
    `${sk.taskDescription}\n\n${REASONING_SCAFFOLD}\n\n${sk.reasoningHints}\n\n${sk.formatReminder}`,
  );
  assert.ok(!/\b[A-E]\b/.test(sk.reasoningHints!), "no symbol letters");
  // The paper profile has neither.
  assert.ok(!paperProfile.initialSystemPrompt(sk).includes(sk.reasoningHints!));
  // Its reflection shows the scaffolded prompt as the one the attempt ran under.
  const { trace, feedback } = playedTrace();
  const user = referenceProfile.reflectionMessages(parts, null, { trace, reward: 0, feedback })[1]!.content;
  assert.ok(user.startsWith(`## The system prompt the attempt was made under\n${p}\n`));
  const noRefl = referenceProfile.noReflectionSystemPrompt(parts, { trace, reward: 0, feedback });
  assert.ok(noRefl.includes(REASONING_SCAFFOLD) && noRefl.endsWith(parts.formatReminder));
});

test("rulebook extraction: last non-empty <prompt> block, else the shown prompt", () => {
  assert.equal(extractRulebook("x <prompt> one </prompt> y <prompt>\ntwo\n</prompt>", "shown"), "two");
  assert.equal(extractRulebook("<prompt>a</prompt><prompt>  </prompt>", "shown"), "a");
  assert.equal(extractRulebook("no tag at all", "shown"), "shown");
  assert.equal(extractRulebook("<prompt>never closed", "shown"), "shown");
  assert.equal(findRulebook("<prompt></prompt>"), null);
});

test("the format reminder always ends Δ, once", () => {
  const r = parts.formatReminder;
  assert.equal(ensureFormatReminder("Rules.", r), `Rules.\n\n${r.trim()}`);
  assert.equal(ensureFormatReminder(`Rules.\n${r}\n`, r), `Rules.\n${r.trim()}`);
  assert.equal(ensureFormatReminder(`${r}\nMore rules.`, r), `${r}\nMore rules.\n\n${r.trim()}`);
  assert.equal(ensureFormatReminder("", r), r.trim());
  const delta = rulebookFromReflection("<prompt>A is you.</prompt>", "shown", parts);
  assert.equal(delta, `A is you.\n\n${r.trim()}`);
  const kept = rulebookFromReflection("oops", paperProfile.initialSystemPrompt(parts), parts);
  assert.equal(kept, paperProfile.initialSystemPrompt(parts));
});

test("trace text shows each board before each action, the action and its effect", () => {
  const { trace } = playedTrace();
  const text = paperProfile.traceText(trace);
  assert.ok(
    text.includes(
      `Step 1\nObservation before the action:\n${trace[0]!.observation}\nAction: \`\`\`\njump\n\`\`\``,
    ),
  );
  assert.ok(text.includes(`Effect: invalid (${trace[0]!.result.comment})`));
  assert.ok(text.includes(`Step 2\nObservation before the action:\n${trace[1]!.observation}`));
  const compact = compactProfile.traceText(trace);
  assert.ok(compact.includes(`#2\n${trace[1]!.observation}\n> \`\`\`\nleft\n\`\`\``));
  assert.ok(compact.length < text.length);
  assert.equal(paperProfile.traceText([]), "(no actions were taken)");
});

test("reflection messages: instructions, then the shown prompt, the trace, reward and feedback", () => {
  const { trace, feedback } = playedTrace();
  for (const profile of [paperProfile, compactProfile]) {
    const msgs = profile.reflectionMessages(parts, "CURRENT RULES", { trace, reward: 0, feedback });
    assert.deepEqual(
      msgs.map((m) => m.role),
      ["system", "user"],
    );
    assert.ok(msgs[0]!.content.includes("<prompt>"));
    const user = msgs[1]!.content;
    const at = (s: string) => user.indexOf(s);
    assert.ok(at("CURRENT RULES") >= 0 && at("CURRENT RULES") < at(trace[0]!.observation));
    assert.ok(at(trace[1]!.observation) < at("Reward: 0") && at("Reward: 0") < at(feedback));
  }
});

test("paper reflection: a memory rulebook is labelled as memory, not as the attempt's prompt", () => {
  const { trace, feedback } = playedTrace();
  const state = { trace, reward: 0, feedback };
  const withMemory = paperProfile.reflectionMessages(parts, "MEMORY RULES", state);
  const text = withMemory.map((m) => m.content).join("\n");
  assert.ok(!/current system prompt/i.test(text), "memory is not the prompt the attempt ran under");
  const user = withMemory[1]!.content;
  assert.ok(user.startsWith("## Rulebook from memory\n"));
  assert.ok(user.includes("made under\nthe initial system prompt"));
  assert.ok(user.indexOf("MEMORY RULES") < user.indexOf("## The attempt"));
  // Without memory the initial prompt is shown, as the prompt the attempt was made under.
  const fresh = paperProfile.reflectionMessages(parts, null, state)[1]!.content;
  assert.ok(
    fresh.startsWith(
      `## The system prompt the attempt was made under\n${paperProfile.initialSystemPrompt(parts)}\n`,
    ),
  );
  // The compact profile shows the same starting point without labels.
  assert.equal(
    compactProfile.reflectionMessages(parts, null, state)[1]!.content,
    compactProfile.reflectionMessages(parts, compactProfile.initialSystemPrompt(parts), state)[1]!.content,
  );
});

test("w/o reflection: initial prompt + instruction + the attempt + format reminder", () => {
  const { trace, feedback } = playedTrace();
  for (const profile of [paperProfile, compactProfile]) {
    const p = profile.noReflectionSystemPrompt(parts, { trace, reward: 0, feedback });
    assert.ok(p.startsWith(parts.taskDescription));
    assert.ok(p.includes(profile.attemptText({ trace, reward: 0, feedback })));
    assert.ok(p.endsWith(parts.formatReminder));
  }
});

test("compact texts are pinned (a pretrained model depends on them)", () => {
  const trace: TraceStep[] = [
    {
      observation: "board",
      action: "```\nup\n```",
      result: {
        observation: "b2",
        observationRole: "user",
        reward: 0,
        done: false,
        stopReason: null,
        effective: false,
        valid: true,
        comment: "up: no effect",
      },
    },
  ];
  const msgs = compactProfile.reflectionMessages(
    { taskDescription: "Task.", formatReminder: "Format." },
    "Task.\nFormat.",
    {
      trace,
      reward: 0,
      feedback: "Lost.",
    },
  );
  assert.deepEqual(msgs, [
    {
      role: "system",
      content:
        "Rewrite the agent's system prompt as a rulebook: symbols, mechanics, goal, strategy. Reply with the new prompt inside <prompt></prompt>, ending with the action format.",
    },
    {
      role: "user",
      content:
        "Prompt:\nTask.\nFormat.\nTrace:\n#1\nboard\n> ```\nup\n```\n= no effect: up: no effect\nReward: 0\nLost.",
    },
  ]);
  assert.equal(
    compactProfile.initialSystemPrompt({ taskDescription: "Task.", formatReminder: "Format." }),
    "Task.\nFormat.",
  );
  assert.equal(
    compactProfile.noReflectionSystemPrompt(
      { taskDescription: "Task.", formatReminder: "Format." },
      { trace, reward: 0, feedback: "Lost." },
    ),
    "Task.\nPast attempt (failed); learn from it:\nTrace:\n#1\nboard\n> ```\nup\n```\n= no effect: up: no effect\nReward: 0\nLost.\nFormat.",
  );
});
