import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng } from "../util/rng.ts";
import { parseDirection } from "../envs/common.ts";
import {
  renderSokoban,
  sokobanInitialState,
  sokobanMove,
  sokobanPrompt,
  solveSokoban,
  SOKOBAN_SYMBOLS,
  SokobanFamily,
} from "../envs/sokoban.ts";
import { compactProfile, findRulebook } from "../agent/prompts.ts";
import {
  drawSokobanSymbols,
  drawSokobanTask,
  isTestLayout,
  SK_ROLES,
  SK_ROLE_WORD,
  sokobanFreeDoc,
  sokobanLookupDoc,
  sokobanPlayDoc,
  sokobanReflectionDoc,
  sokobanTableRulebook,
  sokobanTeacher,
  sokobanThink,
} from "./sokoban-corpus.ts";
import { FREE_THINK } from "./frozenlake-corpus.ts";
import { shardDocs } from "./generate.ts";

const LETTERS = Object.values(SOKOBAN_SYMBOLS);

test("Sokoban roles are re-drawn per episode: each reference letter takes each role about 1/7 of the time", () => {
  const rng = new Rng(11);
  const N = 7000;
  const counts = new Map<string, number>();
  for (let i = 0; i < N; i++) {
    const s = drawSokobanSymbols(rng);
    assert.equal(new Set(Object.values(s)).size, 7);
    for (const role of SK_ROLES)
      counts.set(`${role}:${s[role]}`, (counts.get(`${role}:${s[role]}`) ?? 0) + 1);
  }
  // Expected 1,000 per (role, letter), binomial sd ≈ 29; ±180 is a 6-sigma band.
  for (const role of SK_ROLES)
    for (const letter of LETTERS) {
      const n = counts.get(`${role}:${letter}`) ?? 0;
      assert.ok(Math.abs(n - 1000) < 180, `${role}:${letter} drawn ${n} times`);
    }
});

test("corpus layouts follow the reference rules and never repeat a test layout", () => {
  const rng = new Rng(3);
  for (let i = 0; i < 200; i++) {
    const t = drawSokobanTask(rng);
    assert.ok([6, 7, 8].includes(t.size));
    const path = solveSokoban(t);
    assert.ok(path !== null && path.length >= 1 && path.length <= 8);
    assert.ok(!isTestLayout(t));
  }
  // The exclusion list is the real test split: every test layout is recognised.
  const test = new SokobanFamily().loadSplit("test");
  assert.equal(test.length, 100);
  for (const t of test) assert.ok(isTestLayout(t), t.id);
});

test("play under a correct rulebook: the rulebook is right, the think locates the pieces, the teacher solves", () => {
  const rng = new Rng(5);
  for (let i = 0; i < 60; i++) {
    const doc = sokobanPlayDoc(rng);
    const sym = doc.meta.symbols;
    const task = doc.meta.task!;
    const system = doc.messages[0]!.content;
    // Every line of the table rulebook names a letter with the role it really has.
    for (const role of SK_ROLES) {
      const line = system.split("\n").find((l) => l.startsWith(` ${sym[role]} \t`));
      if (line !== undefined) assert.ok(line.slice(4).startsWith(`${SK_ROLE_WORD[role]} - `), line);
    }
    assert.ok(system.includes(` ${sym.player} \tyou - `) && system.includes(` ${sym.box} \tbox - `));
    // Replay: each think states the true positions; moves follow it to the goal within 8 moves.
    let state = sokobanInitialState(task);
    const replies = doc.messages.filter((m) => m.role === "assistant");
    assert.ok(replies.length <= 8);
    for (const r of replies) {
      const [think] = r.content.split("\n");
      const m =
        /^you (.) \t (\d) (\d), box (.) \t (\d) (\d), goal (.) \t (\d) (\d); push (up|down|left|right)$/.exec(
          think!,
        );
      assert.ok(m, think);
      assert.deepEqual([+m[2]!, +m[3]!], state.player);
      assert.deepEqual([+m[5]!, +m[6]!], state.box);
      assert.deepEqual([+m[8]!, +m[9]!], task.goal);
      assert.equal(m[4], sym.box);
      const dir = parseDirection(r.content)!;
      state = sokobanMove(task, state, dir).state;
    }
    assert.deepEqual(state.box, task.goal, "the teacher's moves solve the task");
  }
});

test("the teacher's push direction is the direction of the next push in a shortest solution", () => {
  const rng = new Rng(8);
  for (let i = 0; i < 100; i++) {
    const task = drawSokobanTask(rng);
    const s = sokobanInitialState(task);
    const { move, push } = sokobanTeacher(task, s);
    const path = solveSokoban(task)!;
    assert.equal(move, path[0]);
    let st = s;
    for (const d of path) {
      const next = sokobanMove(task, st, d);
      if (next.pushed) {
        assert.equal(push, d);
        break;
      }
      st = next.state;
    }
  }
  // The think names the player-on-goal letter when the player stands on the goal.
  const task = drawSokobanTask(new Rng(1));
  const onGoal = { player: task.goal, box: task.box };
  const think = sokobanThink(task, onGoal, SOKOBAN_SYMBOLS, "up");
  assert.ok(think.startsWith(`you ${SOKOBAN_SYMBOLS.playerOnGoal} \t`), think);
  assert.ok(renderSokoban(task, onGoal).includes(` ${SOKOBAN_SYMBOLS.playerOnGoal} \t`));
});

test("rule-free Sokoban play says it guesses and its targets do not depend on the letters", () => {
  const rng = new Rng(9);
  for (let i = 0; i < 30; i++) {
    const doc = sokobanFreeDoc(rng);
    assert.equal(
      doc.messages[0]!.content,
      compactProfile.initialSystemPrompt(sokobanPrompt(doc.meta.symbols)),
    );
    for (const m of doc.messages.filter((x) => x.role === "assistant")) {
      assert.equal(m.content.split("\n")[0], FREE_THINK);
      assert.ok(parseDirection(m.content) !== null);
      for (const l of LETTERS) assert.ok(!m.content.includes(` ${l} \t`));
    }
  }
});

test("Sokoban reflections claim only what their trace shows, and every claim is true", () => {
  const rng = new Rng(12);
  let pushedBox = 0;
  let goalKnown = 0;
  for (let i = 0; i < 200; i++) {
    const doc = sokobanReflectionDoc(rng);
    const sym = doc.meta.symbols;
    const claims = doc.meta.claims!;
    for (const c of claims) assert.equal(sym[c.role], c.letter, `${c.role} claimed as ${c.letter}`);
    const reply = doc.messages[doc.messages.length - 1]!.content;
    const rulebook = findRulebook(reply);
    assert.ok(rulebook !== null, reply);
    // The rulebook lists exactly the claimed letters.
    const listed = rulebook.split("\n").filter((l) => /^ . \t/.test(l));
    assert.equal(listed.length, new Set(claims.map((c) => c.role)).size);
    const shown = claims.some((c) => c.basis === "shown");
    const trace = doc.messages[1]!.content;
    if (!shown) {
      // Rule-free attempts: a box claim needs a push in the trace, a goal claim a push or a visit.
      const box = claims.find((c) => c.role === "box");
      if (box) {
        assert.equal(box.basis, "pushed");
        assert.ok(trace.includes("pushed the box"), "a box claim needs a push in the trace");
        pushedBox++;
      }
      if (claims.some((c) => c.role === "goal")) goalKnown++;
      if (!trace.includes("moved "))
        assert.deepEqual(
          claims.map((c) => c.role),
          ["wall"],
        );
    }
  }
  assert.ok(pushedBox > 5 && goalKnown > 5, `pushes ${pushedBox}, goals ${goalKnown}`);
});

test("the Sokoban look-up drill answers each letter with its role; phase 5 mixes Sokoban and FrozenLake", () => {
  const rng = new Rng(13);
  for (let i = 0; i < 20; i++) {
    const doc = sokobanLookupDoc(rng);
    const sym = doc.meta.symbols;
    const answer = doc.messages[2]!.content;
    for (const role of SK_ROLES) assert.ok(answer.includes(` ${sym[role]} \t${SK_ROLE_WORD[role]}`));
  }
  assert.ok(sokobanTableRulebook({ ...SOKOBAN_SYMBOLS }).startsWith("Sokoban rules. Symbols:\n A \tyou - "));
  const docs = shardDocs({ seed: 1, index: 550, total: 600, docs: 300 });
  const sokoban = docs.filter((d) => d.kind.startsWith("sokoban")).length / docs.length;
  assert.ok(Math.abs(sokoban - 0.6) < 0.1, `Sokoban share ${sokoban.toFixed(2)}`);
  const kinds = new Set<string>(docs.map((d) => d.kind));
  for (const k of [
    "sokoban-play",
    "sokoban-free",
    "sokoban-reflection",
    "sokoban-lookup",
    "rule-play",
    "reflection",
  ])
    assert.ok(kinds.has(k), k);
});
