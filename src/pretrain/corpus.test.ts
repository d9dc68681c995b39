import { test } from "node:test";
import { createHash } from "node:crypto";
import assert from "node:assert/strict";
import { Rng } from "../util/rng.ts";
import {
  checkClaims,
  frozenLakePrompt,
  FROZENLAKE_SYMBOLS,
  type FrozenLakeTask,
} from "../envs/frozenlake.ts";
import { compactProfile } from "../agent/prompts.ts";
import { parseDirection } from "../envs/common.ts";
import { drawFlSymbols, drawPermutedReference, FL_ROLES, SYMBOL_POOL } from "./symbols.ts";
import {
  copyDoc,
  drawTask,
  freePlayDoc,
  goalDistances,
  reflectionDoc,
  ruleThink,
  rulePlayDoc,
  rulebookText,
  secondPlayDoc,
  tableRulebookText,
  teacherMove,
  type Curriculum,
} from "./frozenlake-corpus.ts";
import { bySize } from "./acceptance.ts";
import { docLine, phaseAt, shardDocs } from "./generate.ts";

/** Fingerprints of shards 0, 150, 260, 310, 399, 450 and 550 (seed 1, 600 planned, 400 docs each). */
const FINGERPRINTS = [
  "b0540f9c6d887690",
  "694f8c3febf479eb",
  "ec0bed452d7b94bb",
  "931b47018b510ec4",
  "6598ab24b6d64b5f",
  "6439c1541ac57dd3",
  "30a2f46bace27c5b",
];

const FULL: Curriculum = { pool: SYMBOL_POOL, maxSize: 9 };
const TABLE: Curriculum = { pool: "permuted-reference", maxSize: 9, rulebook: "table" };

test("roles are re-drawn per episode: every letter takes every role about equally often", () => {
  const rng = new Rng(7);
  const N = 53 * 400;
  const counts = new Map<string, number>();
  for (let i = 0; i < N; i++) {
    const s = drawFlSymbols(rng);
    assert.equal(new Set(Object.values(s)).size, FL_ROLES.length, "letters are distinct");
    for (const role of FL_ROLES)
      counts.set(`${role}:${s[role]}`, (counts.get(`${role}:${s[role]}`) ?? 0) + 1);
  }
  // Expected 400 per (role, letter); a binomial sd is ~20, so ±120 is a 6-sigma band.
  for (const role of FL_ROLES)
    for (const letter of SYMBOL_POOL) {
      const n = counts.get(`${role}:${letter}`) ?? 0;
      assert.ok(Math.abs(n - 400) < 120, `${role}:${letter} drawn ${n} times (expected ~400)`);
    }
  // The reference letters in particular keep no role beyond chance.
  for (const role of FL_ROLES) {
    const n = counts.get(`${role}:${FROZENLAKE_SYMBOLS[role]}`) ?? 0;
    assert.ok(n / N < 2 / 53, `${FROZENLAKE_SYMBOLS[role]} is ${role} in ${n}/${N} episodes`);
  }
});

test("the reduced-hiding draw gives each of A, B, C, D every board role equally often", () => {
  const rng = new Rng(21);
  const N = 8000;
  const counts = new Map<string, number>();
  for (let i = 0; i < N; i++) {
    const s = drawPermutedReference(rng);
    for (const role of FL_ROLES)
      counts.set(`${role}:${s[role]}`, (counts.get(`${role}:${s[role]}`) ?? 0) + 1);
  }
  for (const role of ["agent", "goal", "hole", "frozen"] as const)
    for (const letter of ["A", "B", "C", "D"]) {
      const n = counts.get(`${role}:${letter}`) ?? 0;
      assert.ok(Math.abs(n - N / 4) < 6 * Math.sqrt((N * 3) / 16), `${role}:${letter} drawn ${n} times`);
    }
  for (const role of ["agentInHole", "agentOnGoal"] as const)
    for (const letter of ["X", "√"])
      assert.ok(Math.abs((counts.get(`${role}:${letter}`) ?? 0) - N / 2) < 300);
  // Every phase of the recipe uses this draw, with table rulebooks, and boards grow only in the games.
  for (const p of [0, 0.3, 0.55, 0.7, 0.9]) {
    const ph = phaseAt(p);
    assert.equal(ph.curriculum.pool, "permuted-reference");
    assert.equal(ph.curriculum.rulebook, "table");
  }
  // Shard index / 600 planned shards: copy 0–99, look-up 100–199, games 200–399 (boards ≤ 4 to 259,
  // ≤ 6 to 309, then ≤ 9), consolidation 400–499, Sokoban 500–599.
  assert.deepEqual(
    [50, 150, 259, 260, 309, 310, 399, 400, 499, 500].map((i) => [
      phaseAt(i / 600).name,
      phaseAt(i / 600).curriculum.maxSize,
    ]),
    [
      ["copy", 4],
      ["lookup", 4],
      ["games", 4],
      ["games", 6],
      ["games", 6],
      ["games", 9],
      ["games", 9],
      ["consolidate", 9],
      ["consolidate", 9],
      ["sokoban", 9],
    ],
  );
});

test("rule-play rulebooks are correct and complete for their episode's letters", () => {
  const rng = new Rng(11);
  for (let i = 0; i < 400; i++) {
    const cur = i % 4 < 2 ? FULL : TABLE;
    const doc = i % 2 ? rulePlayDoc(rng, cur) : secondPlayDoc(rng, cur);
    const system = doc.messages[0]!;
    assert.equal(system.role, "system");
    const check = checkClaims(system.content, doc.meta.symbols);
    assert.equal(check.correct, check.claims, `wrong claim in:\n${system.content}`);
    assert.ok(check.claims >= 3);
    assert.ok(system.content.endsWith(frozenLakePrompt(doc.meta.symbols).formatReminder));
  }
});

test("teacher moves follow a shortest safe path to the goal, and every reply parses as that move", () => {
  const rng = new Rng(5);
  for (let i = 0; i < 100; i++) {
    const doc = rulePlayDoc(rng, FULL);
    const task = doc.meta.task!;
    const replies = doc.messages.filter((m) => m.role === "assistant");
    const dist = goalDistances(task);
    assert.equal(replies.length, dist[task.start[0]]![task.start[1]], "optimal number of moves");
    for (const r of replies) assert.notEqual(parseDirection(r.content), null);
  }
});

test("free play never depends on the roles: same task, different letters → same move distribution inputs", () => {
  const rng = new Rng(9);
  for (let i = 0; i < 50; i++) {
    const doc = freePlayDoc(rng, FULL);
    assert.equal(
      doc.messages[0]!.content,
      compactProfile.initialSystemPrompt(frozenLakePrompt(doc.meta.symbols)),
    );
    for (const m of doc.messages.filter((x) => x.role === "assistant")) {
      const letters = Object.values(doc.meta.symbols);
      // The reply mentions no board letter as a cell and states nothing about roles.
      assert.ok(!letters.some((l) => m.content.includes(` ${l} \t`)), m.content);
    }
  }
});

test("the think names the agent, each neighbour's letter and role, and the goal's direction", () => {
  const task: FrozenLakeTask = {
    id: "t",
    env: "frozenlake",
    size: 3,
    map: ["SFH", "FHF", "FFG"],
    start: [0, 0],
    goal: [2, 2],
  };
  const sym = FROZENLAKE_SYMBOLS;
  const roles = { agent: "A", goal: "B", hole: "C", frozen: "D" };
  assert.equal(
    ruleThink(task, [0, 1], sym, roles),
    "you A \tup edge, down C \thole, left D \tice, right C \thole; goal B \tdown right",
  );
  assert.equal(teacherMove(task, [0, 0], goalDistances(task)), "down");
});

test("reflections claim only what their trace supports, and every claim is true", () => {
  const rng = new Rng(13);
  let elimination = 0;
  for (let i = 0; i < 300; i++) {
    const doc = reflectionDoc(rng, i % 2 ? FULL : TABLE);
    const sym = doc.meta.symbols;
    const claims = doc.meta.claims!;
    const user = doc.messages[1]!.content;
    const shownRules = !user.startsWith(
      `Prompt:\n${compactProfile.initialSystemPrompt(frozenLakePrompt(sym))}`,
    );
    for (const c of claims) {
      assert.equal(c.letter, sym[c.role], `claim ${c.role}=${c.letter} is false`);
      if (c.basis === "moved" || c.basis === "left-behind") assert.match(user, /= changed the state: moved/);
      if (c.basis === "fell") assert.match(user, /fell into a hole\nReward: 0/);
      if (c.basis === "shown") assert.ok(shownRules, "a claim kept from a rulebook that was never shown");
      if (c.basis === "elimination") elimination++;
    }
    const reply = doc.messages[2]!.content;
    const check = checkClaims(reply, sym);
    assert.equal(check.correct, check.claims, reply);
    assert.equal(check.claims, claims.length);
    assert.match(reply, /<prompt>\n[\s\S]+\n<\/prompt>$/);
  }
  assert.ok(elimination > 0);
});

test("known flaw, pinned: after a fall on the first move the trace shows one board, yet the agent is claimed", () => {
  // docs/erl-tiny.md ("What is hidden"): a one-board trace does not show the letter that moved; the
  // agent is visible only as the single letter with a hole on the side it moved to, and when the
  // goal has one there too the claim is a guess. A fix changes the shipped shards; when it lands,
  // this test and that paragraph change together.
  const rng = new Rng(5);
  let oneBoard = 0;
  for (let i = 0; i < 400; i++) {
    const doc = reflectionDoc(rng, TABLE);
    if (doc.messages[1]!.content.split("\n#").length - 1 !== 1) continue;
    oneBoard++;
    assert.ok(doc.meta.claims!.some((c) => c.role === "agent" && c.basis === "moved"));
  }
  assert.ok(oneBoard > 40 && oneBoard < 160, `${oneBoard} one-board traces in 400`);
});

test("the rulebook with every role and no notes is the environment's reference rulebook", () => {
  const sym = drawFlSymbols(new Rng(1));
  const roles = { ...sym };
  assert.equal(rulebookText({ roles, notes: [] }), frozenLakePrompt(sym).referenceRulebook);
});

test("shards are a function of (seed, index): the same spec gives the same lines", () => {
  const a = shardDocs({ seed: 2, index: 3, total: 10, docs: 20 }).map(docLine);
  const b = shardDocs({ seed: 2, index: 3, total: 10, docs: 20 }).map(docLine);
  const c = shardDocs({ seed: 2, index: 4, total: 10, docs: 20 }).map(docLine);
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.ok(drawTask(new Rng(1), 9).size <= 9);
});

test("table rulebooks put each letter as its board-cell token before its role word; claims parse in both shapes", () => {
  const sym = { agent: "B", goal: "D", hole: "A", frozen: "C", agentInHole: "√", agentOnGoal: "X" };
  const table = tableRulebookText({ roles: { agent: "B", goal: "D", hole: "A", frozen: "C" }, notes: ["n"] });
  assert.match(table, /^ B \tyou - /m);
  assert.match(table, /^ A \thole - /m);
  assert.match(table, /\n- n$/);
  assert.deepEqual(checkClaims(table, sym), { claims: 4, correct: 4, complete: true });
  const wrong = tableRulebookText({ roles: { agent: "A", goal: "D" }, notes: [] });
  assert.deepEqual(checkClaims(wrong, sym), { claims: 2, correct: 1, complete: false });
  const prose = rulebookText({ roles: { agent: "B", hole: "C" }, notes: [] });
  assert.deepEqual(checkClaims(prose, sym), { claims: 2, correct: 1, complete: false });
});

test("copy drills repeat the user's cells verbatim; the phases hold the documented kinds", () => {
  const rng = new Rng(4);
  for (let i = 0; i < 20; i++) {
    const doc = copyDoc(rng, { pool: "permuted-reference", maxSize: 4 });
    const user = doc.messages[0]!.content;
    assert.ok(user.startsWith("Copy:"));
    assert.equal(doc.messages[1]!.content, user.slice("Copy:".length));
  }
  const kinds = (index: number) =>
    new Set<string>(shardDocs({ seed: 1, index, total: 600, docs: 200 }).map((d) => d.kind));
  assert.deepEqual([...kinds(10)], ["copy"]);
  assert.deepEqual([...kinds(150)].sort(), ["copy", "lookup", "translate"]);
  for (const index of [300, 450]) {
    const games = kinds(index);
    for (const k of ["copy", "lookup", "translate", "rule-play", "reflection", "free-play"])
      assert.ok(games.has(k), `${k} in shard ${index}`);
  }
});

test("consolidation draws about 80% of its boards at side 5–9 and labels its translation drills", () => {
  const docs = shardDocs({ seed: 1, index: 450, total: 600, docs: 400 });
  const boards = docs.filter((d) => d.meta.task !== undefined).map((d) => d.meta.task!.size);
  assert.ok(docs.every((d) => !d.kind.startsWith("sokoban")));
  const large = boards.filter((n) => n >= 5).length / boards.length;
  assert.ok(Math.abs(large - 0.8) < 0.08, `large-board share ${large.toFixed(2)}`);
  assert.ok(boards.every((n) => n >= 2 && n <= 9));
  const translations = docs.filter((d) => d.kind === "translate");
  assert.ok(translations.length > 20);
  for (const d of translations) {
    const user = d.messages[1]!.content;
    assert.ok(user.startsWith("Translate:\n"), user);
    // The drill's user turn no longer looks like a game's first turn (which opens with the step count).
    assert.ok(!/steps?/i.test(user.split("\n")[0]!));
  }
  // Earlier phases keep the bare board (the shards the shipped model was first trained on).
  const early = shardDocs({ seed: 1, index: 150, total: 600, docs: 200 }).find(
    (d) => d.kind === "translate",
  )!;
  assert.ok(!early.messages[1]!.content.startsWith("Translate:"));
});

test("the shipped model's corpus is unchanged: fingerprints of shards from every phase", () => {
  // sha256 of the shard lines for seed 1 in the default 600-shard plan (the same as in the earlier
  // 500-shard plan: adding the Sokoban phase left shards 0–499 as they were). Any change to the
  // document makers, the draws or the phase boundaries moves these; the shipped erl-tiny (shards
  // 0–499) and erl-tiny-sokoban (and 500–563) were trained on them (docs/erl-tiny.md), so such a
  // change needs a new recipe version and retrained models.
  const fingerprint = (index: number) =>
    createHash("sha256")
      .update(shardDocs({ seed: 1, index, total: 600, docs: 400 }).map(docLine).join("\n"))
      .digest("hex")
      .slice(0, 16);
  assert.deepEqual([0, 150, 260, 310, 399, 450, 550].map(fingerprint), FINGERPRINTS);
});

test("acceptance figures split by board side count successes and tasks per side", () => {
  const at = (size: number, success: boolean) => ({ success, request: { task: { size } } });
  assert.deepEqual(bySize([at(2, true), at(2, false), at(9, true), at(2, true)]), {
    "2": [2, 3],
    "9": [1, 1],
  });
  assert.deepEqual(bySize([]), {});
});
