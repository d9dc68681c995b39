import { test } from "node:test";
import assert from "node:assert/strict";
import { exactMatch, extractBoxed, f1Score, normalizeAnswer, scoreAnswer } from "./qa-metrics.ts";

test("normalisation: case, ASCII punctuation, articles as whole words, whitespace", () => {
  assert.equal(normalizeAnswer("The Eiffel-Tower!"), "eiffeltower");
  assert.equal(normalizeAnswer("  An apple a   day "), "apple day");
  assert.equal(normalizeAnswer("Theater anthem"), "theater anthem");
  assert.equal(normalizeAnswer("Café the Olé"), "café olé");
  assert.equal(normalizeAnswer("théa"), "théa", "a letter before 'a' makes it part of a word");
  assert.equal(
    normalizeAnswer("“Quoted”"),
    "“quoted”",
    "non-ASCII punctuation is kept, as in the official script",
  );
  assert.equal(normalizeAnswer("the"), "");
});

test("exact match after normalisation", () => {
  assert.ok(exactMatch("the Beatles", "Beatles"));
  assert.ok(exactMatch("Chief of Protocol.", "chief of protocol"));
  assert.ok(!exactMatch("Beatles, The Rolling Stones", "Beatles"));
});

test("token F1 against hand-computed values", () => {
  const f = f1Score("Barack Obama", "Obama");
  assert.equal(f.precision, 0.5);
  assert.equal(f.recall, 1);
  assert.ok(Math.abs(f.f1 - 2 / 3) < 1e-12);
  // Repeated tokens count only as often as they occur in the gold answer.
  assert.ok(Math.abs(f1Score("new new york", "new york").f1 - 0.8) < 1e-12);
  assert.equal(f1Score("Paris", "London").f1, 0);
  assert.equal(f1Score("", "London").f1, 0);
});

test("yes/no/noanswer mismatches score 0 even with token overlap", () => {
  assert.equal(f1Score("yes", "no").f1, 0);
  assert.equal(f1Score("yes it is", "yes").f1, 0);
  assert.equal(f1Score("no", "no way").f1, 0);
  assert.equal(scoreAnswer("Yes.", "yes").reward, 1);
});

test("reward: EM → 1, else F1 if ≥ 0.3, else 0; no answer → 0", () => {
  assert.deepEqual(scoreAnswer("The Beatles", "Beatles"), { reward: 1, exactMatch: true, f1: 1 });
  const partial = scoreAnswer("x y z w v", "x"); // F1 = 2·0.2·1/1.2 = 1/3
  assert.ok(Math.abs(partial.reward - 1 / 3) < 1e-12);
  assert.equal(partial.exactMatch, false);
  assert.equal(scoreAnswer("x y z w v u", "x").reward, 0); // F1 = 2/7 < 0.3
  assert.equal(scoreAnswer(null, "x").reward, 0);
});

test("answers come from the last balanced \\boxed{}", () => {
  assert.equal(extractBoxed("so \\boxed{Paris}"), "Paris");
  assert.equal(extractBoxed("\\boxed{A} then \\boxed{ B }"), "B");
  assert.equal(extractBoxed("\\boxed{f(x) = {1, 2}}"), "f(x) = {1, 2}");
  assert.equal(extractBoxed("\\boxed{\\text{Chief of Protocol}}"), "Chief of Protocol");
  assert.equal(extractBoxed("\\boxed{unclosed"), null);
  assert.equal(extractBoxed("Paris"), null);
  assert.equal(extractBoxed("\\boxed{}"), "");
});
