import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { Rng } from "../util/rng.ts";
import { UserError } from "../util/errors.ts";
import { formatAction } from "./common.ts";
import {
  FrozenLakeFamily,
  frozenLakeInitialState,
  frozenLakeMove,
  generateFrozenLakeTasks,
  loadFrozenLakeMaps,
  referenceAccepts,
  renderFrozenLake,
  solveFrozenLake,
  type FrozenLakeTask,
} from "./frozenlake.ts";

// S F H
// F H F
// F F G
const BOARD: FrozenLakeTask = {
  id: "hand-1",
  env: "frozenlake",
  size: 3,
  map: ["SFH", "FHF", "FFG"],
  start: [0, 0],
  goal: [2, 2],
};
const family = new FrozenLakeFamily();

test("initial board renders with the paper's letters, start drawn as frozen under the agent", () => {
  const ep = family.makeEpisode(BOARD);
  assert.equal(
    ep.initialObservation,
    "Steps used: 0 of 8 (8 left).\n A \t D \t C \t\n D \t C \t D \t\n D \t D \t B \t",
  );
});

test("walking to the goal: reward 1 on the solving step only, √ drawn, stop reason goal", () => {
  const ep = family.makeEpisode(BOARD);
  const rewards: number[] = [];
  for (const dir of ["down", "down", "right"] as const) {
    const r = ep.step(formatAction(dir));
    assert.equal(r.done, false);
    assert.equal(r.effective, true);
    rewards.push(r.reward);
  }
  const last = ep.step("```right```");
  rewards.push(last.reward);
  assert.deepEqual(rewards, [0, 0, 0, 1]);
  assert.equal(last.done, true);
  assert.equal(last.stopReason, "goal");
  assert.ok(last.observation.endsWith(" D \t D \t √ \t"));
  assert.match(last.observation, /Steps used: 4 of 8 \(4 left\)/);
  assert.equal(ep.success, true);
  assert.equal(ep.totalReward, 1);
  assert.deepEqual(last.info?.agent, [2, 2]);
  assert.match(ep.feedback(), /^Outcome: reached the goal\. Reward 1\. Steps used 4 of 8\./);
  assert.throws(() => ep.step("```up```"));
});

test("stepping into a hole ends the episode with reward 0 and draws X", () => {
  const ep = family.makeEpisode(BOARD);
  ep.step("```right```");
  const r = ep.step("```right```");
  assert.equal(r.done, true);
  assert.equal(r.reward, 0);
  assert.equal(r.stopReason, "failure");
  assert.equal(r.info?.cell, "H");
  assert.ok(r.observation.includes(" D \t D \t X \t"));
  assert.equal(ep.success, false);
  assert.match(ep.feedback(), /fell into a hole.*Last action: right\./);
});

test("moves off the border are no-ops that still use a step", () => {
  const ep = family.makeEpisode(BOARD);
  const r = ep.step("```up```");
  assert.equal(r.effective, false);
  assert.equal(r.valid, true);
  assert.equal(r.done, false);
  assert.match(r.observation, /nothing changed.*Steps used: 1 of 8 \(7 left\)/);
  assert.equal(r.comment, "up: no effect");
  assert.deepEqual(frozenLakeMove(BOARD, frozenLakeInitialState(BOARD), "left").moved, false);
});

test("invalid actions use a step without penalty; the budget ends the episode with reward 0", () => {
  const ep = family.makeEpisode(BOARD);
  const first = ep.step("I think I will go up");
  assert.equal(first.valid, false);
  assert.equal(first.effective, false);
  assert.equal(first.reward, 0);
  assert.equal(first.comment, "invalid action");
  for (let i = 2; i <= 7; i++) assert.equal(ep.step("```left```").done, false);
  const last = ep.step("```4```");
  assert.equal(last.done, true);
  assert.equal(last.stopReason, "budget");
  assert.equal(last.reward, 0);
  assert.match(last.observation, /no steps left.*Steps used: 8 of 8 \(0 left\)/);
  assert.match(ep.feedback(), /ran out of steps.*Actions without effect: 8 \(invalid: 1\)/);
  assert.equal(ep.trace.length, 8);
  assert.equal(ep.trace[1]!.observation, first.observation);
});

test("the symbol map is a parameter of rendering and of the rulebook", () => {
  const symbols = { agent: "Q", goal: "W", hole: "E", frozen: "R", agentInHole: "T", agentOnGoal: "Y" };
  assert.equal(
    renderFrozenLake(BOARD, frozenLakeInitialState(BOARD), symbols),
    " Q \t R \t E \t\n R \t E \t R \t\n R \t R \t W \t",
  );
  const fam = new FrozenLakeFamily({ symbols: { hole: "Z" } });
  assert.match(fam.prompt().referenceRulebook ?? "", /Z is a hole/);
  assert.throws(() => new FrozenLakeFamily({ symbols: { hole: "A" } }), /share the symbol/);
});

test("the rule-free task description names no symbol", () => {
  const { taskDescription, formatReminder } = family.prompt();
  for (const letter of ["A", "B", "C", "D", "X", "√"])
    assert.ok(!new RegExp(`\\b${letter}\\b`).test(taskDescription), `description mentions ${letter}`);
  assert.match(formatReminder, /```\nup\n```/);
});

test("every reference test task is solvable within the budget and replaying the solution earns 1", () => {
  const tasks = family.loadSplit("test");
  assert.equal(tasks.length, 100);
  for (const task of tasks) {
    const path = solveFrozenLake(task);
    assert.ok(path && path.length <= 6, `${task.id} has no path of ≤ 6 moves`);
    assert.ok(referenceAccepts(task.map, task.start), `${task.id} rejected by the reference search`);
    const ep = family.makeEpisode(task);
    for (const dir of path) ep.step(formatAction(dir));
    assert.equal(ep.done, true);
    assert.equal(ep.totalReward, 1, task.id);
  }
  // Reference instance 0 (seed 84433): start (3,4), goal (5,5), optimum 3.
  assert.deepEqual(
    [tasks[0]!.start, tasks[0]!.goal, solveFrozenLake(tasks[0]!)!.length],
    [[3, 4], [5, 5], 3],
  );
});

test("every reference training map is accepted and solvable in ≤ 6 moves", () => {
  const tasks = family.loadSplit("train");
  assert.equal(tasks.length, 10000);
  for (const task of tasks) {
    const path = solveFrozenLake(task);
    assert.ok(path && path.length <= 6, task.id);
    assert.ok(referenceAccepts(task.map, task.start), task.id);
  }
});

test("the reference search can reject a board that has a 6-move path (its discovered-set quirk)", () => {
  const map = ["SFFF", "FFFF", "FHHH", "FFFG"];
  assert.equal(solveFrozenLake({ map, size: 4, start: [0, 0] })!.length, 6);
  assert.equal(referenceAccepts(map, [0, 0]), false);
  assert.equal(referenceAccepts(["SFG", "FFF", "FFF"], [0, 0]), true);
  assert.equal(referenceAccepts(["SHG", "HFF", "FFF"], [0, 0]), false);
});

test("generated tasks obey the acceptance rules (property, many seeds)", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => {
      for (const t of generateFrozenLakeTasks(new Rng(seed), 3)) {
        assert.ok(t.size >= 2 && t.size <= 9);
        assert.ok(t.p! >= 0.6 && t.p! < 0.85);
        assert.equal(t.map.length, t.size);
        assert.notDeepEqual(t.start, t.goal);
        assert.equal(t.map[t.start[0]]![t.start[1]], "S");
        assert.equal(t.map[t.goal[0]]![t.goal[1]], "G");
        assert.equal(t.map.join("").replace(/[^SG]/g, "").length, 2);
        assert.ok(referenceAccepts(t.map, t.start));
        const path = solveFrozenLake(t);
        assert.ok(path && path.length <= 6);
      }
    }),
    { numRuns: 200 },
  );
});

test("same seed gives the same tasks byte for byte; another seed does not", () => {
  const a = JSON.stringify(generateFrozenLakeTasks(new Rng(7), 50));
  assert.equal(a, JSON.stringify(generateFrozenLakeTasks(new Rng(7), 50)));
  assert.notEqual(a, JSON.stringify(generateFrozenLakeTasks(new Rng(8), 50)));
});

test("a malformed maps line is an error naming the file and line", () => {
  const dir = mkdtempSync(join(tmpdir(), "fl-"));
  const good = JSON.stringify({ index: 0, size: 2, map: ["SF", "FG"], start: [0, 0], goal: [1, 1] });
  writeFileSync(join(dir, "test_maps.jsonl"), `${good}\n{not json\n`);
  assert.throws(
    () => loadFrozenLakeMaps(dir, "test"),
    (e: unknown) => e instanceof UserError && /test_maps\.jsonl:2: malformed JSON/.test(e.message),
  );
  const badRow = JSON.stringify({ index: 1, size: 2, map: ["SX", "FG"], start: [0, 0], goal: [1, 1] });
  writeFileSync(join(dir, "train_maps.jsonl"), `${good}\n${badRow}\n`);
  assert.throws(
    () => loadFrozenLakeMaps(dir, "train"),
    (e: unknown) => e instanceof UserError && /train_maps\.jsonl:2, key "map"/.test(e.message),
  );
});
