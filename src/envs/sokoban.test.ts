import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { Rng } from "../util/rng.ts";
import { UserError } from "../util/errors.ts";
import { formatAction, type Direction } from "./common.ts";
import {
  buildSokobanLayout,
  generateSokobanTasks,
  loadSokobanSplit,
  renderSokoban,
  SokobanFamily,
  sokobanInitialState,
  sokobanLayoutName,
  sokobanMove,
  sokobanTaskFromLayout,
  solveSokoban,
} from "./sokoban.ts";

// #####
// #@$.#     player (1,1), box (1,2), goal (1,3)
// #   #
// #####   (5 wide, 4 high is not square, so use a 5x5 room)
const ROOM = sokobanTaskFromLayout("hand-1", ["#####", "#@$.#", "#   #", "#   #", "#####"]);
const family = new SokobanFamily();

test("initial board renders with the paper's letters", () => {
  const ep = family.makeEpisode(ROOM);
  assert.equal(
    ep.initialObservation,
    "Steps used: 0 of 8 (8 left).\n" +
      " E \t E \t E \t E \t E \t\n" +
      " E \t A \t B \t C \t E \t\n" +
      " E \t D \t D \t D \t E \t\n" +
      " E \t D \t D \t D \t E \t\n" +
      " E \t E \t E \t E \t E \t",
  );
});

test("pushing the box onto the goal solves it: reward 1 on that move, b drawn", () => {
  const ep = family.makeEpisode(ROOM);
  const r = ep.step("```right```");
  assert.equal(r.effective, true);
  assert.equal(r.reward, 1);
  assert.equal(r.done, true);
  assert.equal(r.stopReason, "goal");
  assert.equal(r.comment, "moved right, pushed the box; box on the goal");
  assert.match(r.observation, /\n E \t D \t A \t b \t E \t\n/);
  assert.deepEqual(r.info?.box, [1, 3]);
  assert.equal(ep.success, true);
  assert.match(ep.feedback(), /^Outcome: solved\. Reward 1\. Steps used 1 of 8\./);
});

test("walking into a wall and pushing the box into a wall are no-ops that use a step", () => {
  const ep = family.makeEpisode(ROOM);
  const wall = ep.step("```up```");
  assert.equal(wall.effective, false);
  assert.equal(wall.done, false);
  assert.match(wall.observation, /nothing changed\. Steps used: 1 of 8 \(7 left\)/);
  // Box at (1,2) against the top wall: from below, pushing up is blocked.
  const s0 = { player: [2, 2] as [number, number], box: [1, 2] as [number, number] };
  const blocked = sokobanMove(ROOM, s0, "up");
  assert.equal(blocked.moved, false);
  assert.deepEqual(blocked.state, s0);
});

test("no pulling: walking away from the box leaves it in place", () => {
  const s0 = sokobanInitialState(ROOM);
  const away = sokobanMove(ROOM, s0, "down");
  assert.equal(away.moved, true);
  assert.equal(away.pushed, false);
  assert.deepEqual(away.state.box, [1, 2]);
  const back = sokobanMove(ROOM, { player: [1, 3], box: [1, 2] }, "right");
  assert.equal(back.moved, false, "wall on the right; box does not follow");
});

test("player on the goal draws a; box leaves the goal drawing C again", () => {
  const t = sokobanTaskFromLayout("hand-2", ["#####", "#   #", "# $ #", "#.@ #", "#####"]);
  assert.equal(
    renderSokoban(t, { player: [3, 1], box: [2, 2] }),
    " E \t E \t E \t E \t E \t\n E \t D \t D \t D \t E \t\n E \t D \t B \t D \t E \t\n E \t a \t D \t D \t E \t\n E \t E \t E \t E \t E \t",
  );
  const custom = {
    player: "P",
    playerOnGoal: "p",
    box: "O",
    boxOnGoal: "o",
    goal: "G",
    wall: "W",
    floor: "_",
  };
  assert.ok(renderSokoban(t, sokobanInitialState(t), custom).includes(" G \t P \t"));
});

test("budget exhaustion and invalid actions: 8 steps then done with reward 0", () => {
  const ep = family.makeEpisode(ROOM);
  assert.equal(ep.step("left please").valid, false);
  for (let i = 0; i < 6; i++) assert.equal(ep.step("```down```").done, false);
  const last = ep.step("```down```");
  assert.equal(last.done, true);
  assert.equal(last.stopReason, "budget");
  assert.equal(ep.totalReward, 0);
  assert.match(
    ep.feedback(),
    /not solved, ran out of steps.*Steps used 8 of 8\. Actions without effect: 6 \(invalid: 1\)\. Last action: down\./,
  );
});

test("the solver finds optimal lengths on hand-worked rooms", () => {
  assert.deepEqual(solveSokoban(ROOM), ["right"]);
  // Box in the middle, goal below it, player to the right: walk up, left, then push down.
  const t = sokobanTaskFromLayout("hand-3", ["#####", "#   #", "# $@#", "# . #", "#####"]);
  assert.deepEqual(solveSokoban(t), ["up", "left", "down"]);
  // Box in a corner can never move.
  const stuck = sokobanTaskFromLayout("hand-4", ["#####", "#$  #", "#  .#", "#@  #", "#####"]);
  assert.equal(solveSokoban(stuck), null);
});

function replay(task: ReturnType<typeof sokobanTaskFromLayout>, path: Direction[]): number {
  const ep = family.makeEpisode(task);
  for (const d of path) ep.step(formatAction(d));
  assert.equal(ep.done, true);
  return ep.totalReward;
}

test("every reference test layout is solvable within 8 and replaying the solution earns 1", () => {
  const tasks = family.loadSplit("test");
  assert.equal(tasks.length, 100);
  const hist = new Array(9).fill(0);
  for (const task of tasks) {
    const path = solveSokoban(task);
    assert.ok(path && path.length >= 1 && path.length <= 8, task.id);
    hist[path.length]++;
    assert.equal(replay(task, path), 1, task.id);
    assert.equal(task.layoutName, sokobanLayoutName(task.size, task.goal, task.box, task.player));
  }
  // Optimal-length histogram 1..8 as published with the data.
  assert.deepEqual(hist.slice(1), [2, 4, 9, 12, 12, 19, 18, 24]);
});

test("every reference training layout is solvable in ≤ 8 moves, with the published histogram", () => {
  const tasks = family.loadSplit("train");
  const hist = new Array(9).fill(0);
  for (const task of tasks) hist[solveSokoban(task)?.length ?? 0]++;
  assert.deepEqual(hist, [0, 117, 339, 687, 1070, 1505, 2031, 2106, 2145]);
});

test("generated layouts obey the acceptance rules (property, many seeds)", () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 31 - 1 }), (seed) => {
      const tasks = generateSokobanTasks(new Rng(seed), 4);
      assert.equal(new Set(tasks.map((t) => t.id)).size, 4);
      for (const t of tasks) {
        assert.ok([6, 7, 8].includes(t.size));
        assert.deepEqual(t.layout, buildSokobanLayout(t.size, t.goal, t.box, t.player));
        const path = solveSokoban(t);
        assert.ok(path && path.length >= 1 && path.length <= 8);
      }
    }),
    { numRuns: 60 },
  );
});

test("the family's generator never draws a test layout; the rule-free description names no symbol", () => {
  const test = new Set(family.loadSplit("test").map((t) => t.layoutName));
  const fresh = family.generate(new Rng(11), 300);
  assert.equal(fresh.filter((t) => test.has(t.layoutName)).length, 0);
  const { taskDescription } = family.prompt();
  for (const letter of ["A", "B", "C", "D", "E", "b"])
    assert.ok(!new RegExp(`\\b${letter}\\b`).test(taskDescription), `description mentions ${letter}`);
  assert.match(family.prompt().referenceRulebook ?? "", /E is a wall/);
});

test("same seed gives the same layouts byte for byte", () => {
  const a = JSON.stringify(generateSokobanTasks(new Rng(3), 30));
  assert.equal(a, JSON.stringify(generateSokobanTasks(new Rng(3), 30)));
  assert.notEqual(a, JSON.stringify(generateSokobanTasks(new Rng(4), 30)));
});

test("bad layouts and malformed lines name the file, line and key", () => {
  assert.throws(
    () => sokobanTaskFromLayout("x", ["####", "#@ #", "#  #", "####"]),
    /one player, one box and one goal/,
  );
  assert.throws(() => sokobanTaskFromLayout("x", ["####", "#@$#", "#.$#", "####"]), /more than one box/);
  const dir = mkdtempSync(join(tmpdir(), "sk-"));
  writeFileSync(
    join(dir, "test.jsonl"),
    `{"index":1,"layout":["#####","#@$.#","#   #","#   #","#####"]}\n{"index":2,"layout":["#####","#@$.#","#   #"]}\n`,
  );
  assert.throws(
    () => loadSokobanSplit(dir, "test"),
    (e: unknown) =>
      e instanceof UserError && /test\.jsonl:2, key "layout": expected a square board/.test(e.message),
  );
});
