// The coalescer behind EngineBackend's batched renderChat/decode: calls made in one turn of the
// event loop travel as one batched call; a failing batch is retried call by call so every caller gets
// its own answer; an engine without the batched method is asked one call at a time.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Coalescer } from "./backend.ts";

test("calls made together become one batched call, in order", async () => {
  const seen: number[][] = [];
  const c = new Coalescer<number, number>(
    async (xs) => {
      seen.push(xs);
      return xs.map((x) => x * 10);
    },
    async (x) => x * 10,
  );
  assert.deepEqual(await Promise.all([1, 2, 3].map((x) => c.call(x))), [10, 20, 30]);
  assert.deepEqual(seen, [[1, 2, 3]]);
  // A later turn is a new batch; a lone call goes straight to the single-call method.
  assert.equal(await c.call(4), 40);
  assert.deepEqual(seen, [[1, 2, 3]]);
  assert.equal(c.batches, 1);
  assert.equal(c.requests, 4);
});

test("a failing batch is retried one call at a time: only the bad call fails", async () => {
  const c = new Coalescer<number, number>(
    async () => {
      throw new Error("batch failed");
    },
    async (x) => {
      if (x < 0) throw new Error(`bad ${x}`);
      return x + 1;
    },
  );
  const results = await Promise.allSettled([1, -1, 2].map((x) => c.call(x)));
  assert.deepEqual(
    results.map((r) => (r.status === "fulfilled" ? r.value : (r.reason as Error).message)),
    [2, "bad -1", 3],
  );
});

test("an engine without the batched method is asked one call at a time from then on", async () => {
  let batchedCalls = 0;
  let single = 0;
  const c = new Coalescer<number, number>(
    async () => {
      batchedCalls++;
      throw Object.assign(new Error("unknown method"), { code: "unknown_method" });
    },
    async (x) => {
      single++;
      return x;
    },
  );
  assert.deepEqual(await Promise.all([1, 2].map((x) => c.call(x))), [1, 2]);
  assert.deepEqual(await Promise.all([3, 4].map((x) => c.call(x))), [3, 4]);
  assert.equal(batchedCalls, 1);
  assert.equal(single, 4);
});
