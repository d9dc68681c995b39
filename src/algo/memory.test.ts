import { test } from "node:test";
import assert from "node:assert/strict";
import { RulebookMemory, createMemory } from "./memory.ts";

test("global memory: one slot; writes apply in order", () => {
  const m = createMemory({ kind: "global" });
  assert.equal(m.slotFor(0), 0);
  assert.equal(m.slotFor(17), 0);
  m.apply([
    { step: 1, episode: "a", task: "t", rulebook: "one", previous: null },
    { step: 1, episode: "b", task: "t", rulebook: "two", previous: "one" },
  ]);
  assert.equal(m.read(0), "two");
});

test("perWorker memory: position mod k; JSON round trip; clear errors", () => {
  const m = createMemory({ kind: "perWorker", k: 3 });
  assert.deepEqual(
    [0, 1, 2, 3, 4].map((p) => m.slotFor(p)),
    [0, 1, 2, 0, 1],
  );
  m.apply([{ step: 1, episode: "a", task: "t", worker: 2, rulebook: "r2", previous: null }]);
  const back = RulebookMemory.fromJSON(JSON.parse(JSON.stringify(m.toJSON())));
  assert.deepEqual(back.toJSON(), { mode: { kind: "perWorker", k: 3 }, slots: [null, null, "r2"] });
  assert.throws(() => m.read(3), /slot 3 out of range/);
  assert.throws(() => createMemory({ kind: "perWorker", k: 0 }), /integer k >= 1/);
  assert.throws(
    () => RulebookMemory.fromJSON({ mode: { kind: "global" }, slots: [null, null] }),
    /2 slots stored/,
  );
  assert.throws(() => RulebookMemory.fromJSON({ mode: { kind: "global" }, slots: [3] }), /strings or nulls/);
  assert.throws(() => RulebookMemory.fromJSON({ mode: { kind: "shared" }, slots: [null] }), /unknown mode/);
});
