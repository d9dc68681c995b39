import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RolloutRecord } from "../algo/types.ts";
import { tableRulebookText } from "../pretrain/frozenlake-corpus.ts";
import { moveOf, reflectionsMarkdown, summarizeReflections } from "./reflections.ts";

const RIGHT = tableRulebookText({ roles: { agent: "A", goal: "B", hole: "C", frozen: "D" }, notes: [] });
const WRONG = tableRulebookText({ roles: { agent: "C", goal: "B", hole: "A", frozen: "D" }, notes: [] });

function rec(
  p: Partial<RolloutRecord> & Pick<RolloutRecord, "step" | "task" | "stage" | "success">,
): RolloutRecord {
  return {
    episode: `${p.task}-${p.stage}`,
    group: `${p.task}|${p.stage}`,
    attempt: 0,
    reward: p.success ? 1 : 0,
    stopReason: p.success ? "success" : "failure",
    system: "initial",
    messages: [],
    trace: [
      {
        observation: "b",
        action: "think\n```\ndown\n```",
        effective: true,
        valid: true,
        comment: "",
        reward: 0,
      },
    ],
    feedback: p.success ? "reached the goal" : "fell into a hole",
    env: "frozenlake",
    ...p,
  } as RolloutRecord;
}

const refl = (rulebook: string) => ({
  prompt: "p",
  text: `<prompt>${rulebook}</prompt>`,
  rulebook,
  memoryBefore: null,
});

test("reflection summary: retries, claims against the reference letters, examples and memory", () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-refl-"));
  const rows = [
    rec({ step: 1, task: "t1", stage: "first", success: false }),
    rec({ step: 1, task: "t1", stage: "second", success: true, system: RIGHT, reflection: refl(RIGHT) }),
    rec({ step: 1, task: "t2", stage: "first", success: false }),
    rec({ step: 1, task: "t2", stage: "second", success: false, system: WRONG, reflection: refl(WRONG) }),
    rec({ step: 1, task: "t3", stage: "first", success: true }),
    rec({ step: 2, task: "t1", stage: "eval", success: true }),
  ];
  writeFileSync(join(dir, "rollouts.jsonl"), rows.map((r) => JSON.stringify(r)).join("\n") + "\n");
  writeFileSync(
    join(dir, "memory.jsonl"),
    JSON.stringify({ step: 1, episode: "t1-second", task: "t1", rulebook: RIGHT, previous: null }) + "\n",
  );
  const s = summarizeReflections(dir);
  assert.equal(s.retries, 2);
  assert.equal(s.retriesSucceeded, 1);
  assert.deepEqual(s.byStep, [{ step: 1, first: 1 / 3, firstN: 3, second: 0.5, secondN: 2 }]);
  assert.deepEqual(s.claims, {
    total: 8,
    correct: 6,
    completeRulebooks: 1,
    successWithAllCorrect: [1, 1],
    successWithSomeWrong: [0, 1],
  });
  assert.equal(s.helped.length, 1);
  assert.equal(s.helped[0]!.task, "t1");
  assert.deepEqual(s.helped[0]!.firstActions, ["down"]);
  assert.equal(s.misled.length, 1);
  assert.equal(s.misled[0]!.task, "t2");
  assert.equal(s.memory.length, 1);
  assert.equal(s.memory[0]!.claims?.complete, true);
  const md = reflectionsMarkdown(s, dir);
  assert.match(md, /succeeded 50% \(1\/2\)/);
  assert.match(md, /\| 1 \| 0\.33 \| 3 \| 0\.50 \| 2 \|/);
});

test("reflection summary names a directory without rollouts; moves are read from fenced blocks", () => {
  const dir = mkdtempSync(join(tmpdir(), "erl-refl-"));
  assert.throws(() => summarizeReflections(dir), /rollouts\.jsonl/);
  assert.equal(moveOf("I think\n```\nleft\n```"), "left");
  assert.equal(moveOf("a ```\nup\n``` b ```\nright\n```"), "right");
  assert.equal(moveOf("no block here"), "no block here");
});
