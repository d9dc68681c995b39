import { test } from "node:test";
import assert from "node:assert/strict";
import { GRPO_EPS, grpoAdvantages, grpoGroup } from "./advantages.ts";

const REF = { singleton: "reward-as-advantage", allEqual: "zero" } as const;

function close(actual: readonly (number | null)[], expected: readonly number[], tol = 1e-6): void {
  assert.equal(actual.length, expected.length);
  actual.forEach((a, i) => {
    assert.ok(a !== null && Math.abs(a - expected[i]!) < tol, `index ${i}: ${a} vs ${expected[i]}`);
  });
}

test("GRPO against hand-computed values (unbiased std, eps 1e-6)", () => {
  // [1,0,0,0]: mean 0.25, unbiased variance (0.5625 + 3·0.0625)/3 = 0.25, std 0.5.
  close(grpoGroup([1, 0, 0, 0], REF), [
    0.75 / 0.500001,
    -0.25 / 0.500001,
    -0.25 / 0.500001,
    -0.25 / 0.500001,
  ]);
  close(grpoGroup([1, 0, 0, 0], REF), [1.499997, -0.499999, -0.499999, -0.499999]);
  // [1,1,0,0]: mean 0.5, variance 1/3, std 0.5773503.
  close(grpoGroup([1, 1, 0, 0], REF), [0.8660239, 0.8660239, -0.8660239, -0.8660239]);
  // [1,0]: mean 0.5, variance 0.5, std 0.7071068.
  close(grpoGroup([1, 0], REF), [0.7071058, -0.7071058]);
  // F1-style rewards [0.5, 0.3, 0]: mean 0.2666667, variance 0.0633333, std 0.2516611.
  close(grpoGroup([0.5, 0.3, 0], REF), [0.927169, 0.1324527, -1.0596217]);
  assert.equal(GRPO_EPS, 1e-6);
});

test("all-equal groups: zero keeps them at A = 0, drop removes them", () => {
  assert.deepEqual(grpoGroup([1, 1, 1], REF), [0, 0, 0]);
  assert.deepEqual(grpoGroup([0, 0], REF), [0, 0]);
  assert.deepEqual(grpoGroup([0, 0], { ...REF, allEqual: "drop" }), [null, null]);
});

test("singleton groups: reward-as-advantage gives A = r, zero gives 0", () => {
  assert.deepEqual(grpoGroup([1], REF), [1]);
  assert.deepEqual(grpoGroup([0.4], REF), [0.4]);
  assert.deepEqual(grpoGroup([0], REF), [0]);
  assert.deepEqual(grpoGroup([1], { ...REF, singleton: "zero" }), [0]);
  // The singleton rule wins over the all-equal rule for a group of one.
  assert.deepEqual(grpoGroup([1], { singleton: "reward-as-advantage", allEqual: "drop" }), [1]);
});

test("grpoAdvantages groups by key and keeps item order", () => {
  const items = [
    { group: "t1|first", reward: 1 },
    { group: "t2|first", reward: 1 },
    { group: "t1|first", reward: 0 },
    { group: "t2|first", reward: 1 },
    { group: "t1|second", reward: 1 },
  ];
  const adv = grpoAdvantages(items, REF);
  close(adv, [0.7071058, 0, -0.7071058, 0, 1]);
  const other = grpoAdvantages(items, { singleton: "zero", allEqual: "drop" });
  assert.deepEqual([other[1], other[3], other[4]], [null, null, 0]);
  close([other[0]!, other[2]!], [0.7071058, -0.7071058]);
});

test("non-finite rewards are refused", () => {
  assert.throws(() => grpoGroup([1, Number.NaN], REF), /not finite/);
});
