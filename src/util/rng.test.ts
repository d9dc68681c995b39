import { test } from "node:test";
import assert from "node:assert/strict";
import { Rng } from "./rng.ts";

test("same seed gives the same stream; different seeds differ", () => {
  const a = new Rng(42);
  const b = new Rng(42);
  const c = new Rng(43);
  const xs = Array.from({ length: 8 }, () => a.nextU32());
  assert.deepEqual(
    xs,
    Array.from({ length: 8 }, () => b.nextU32()),
  );
  assert.notDeepEqual(
    xs,
    Array.from({ length: 8 }, () => c.nextU32()),
  );
});

test("state round-trips: a restored generator continues identically", () => {
  const a = new Rng("run-1");
  for (let i = 0; i < 5; i++) a.next();
  const b = Rng.fromState(a.state());
  assert.deepEqual(
    Array.from({ length: 5 }, () => a.int(1000)),
    Array.from({ length: 5 }, () => b.int(1000)),
  );
});

test("int(n) is uniform enough (chi-square over 10 bins)", () => {
  const r = new Rng(7);
  const counts = new Array(10).fill(0);
  const N = 20000;
  for (let i = 0; i < N; i++) counts[r.int(10)]++;
  const expected = N / 10;
  const chi2 = counts.reduce((s, c) => s + (c - expected) ** 2 / expected, 0);
  assert.ok(chi2 < 27.9, `chi2=${chi2}`); // p ≈ 0.001 for 9 degrees of freedom
});

test("fork gives an independent stream and does not advance the parent", () => {
  const a = new Rng(1);
  const before = a.state();
  const f = a.fork("env");
  assert.deepEqual(a.state(), before);
  assert.notEqual(f.nextU32(), new Rng(1).nextU32());
});

test("shuffle is a permutation", () => {
  const r = new Rng(3);
  const xs = [1, 2, 3, 4, 5, 6, 7];
  assert.deepEqual([...r.shuffle(xs)].sort(), xs);
});
