import { test } from "node:test";
import assert from "node:assert/strict";
import { Progress, stepSummary } from "./progress.ts";

function sink(isTTY: boolean) {
  const chunks: string[] = [];
  return { chunks, out: { isTTY, columns: 80, write: (t: string) => void chunks.push(t) } };
}

test("on a terminal the bar redraws in place and is cleared before a line", () => {
  let now = 0;
  const s = sink(true);
  const p = new Progress(s.out, 10, () => now);
  p.update("first", 1, 4);
  now = 1;
  p.update("first", 2, 4);
  p.line("step 1/2 ...");
  assert.ok(s.chunks[0]!.startsWith("\r\x1b[Kfirst "));
  assert.match(s.chunks[1]!, /2\/4 1\.0s$/);
  assert.equal(s.chunks[2], "\r\x1b[K");
  assert.equal(s.chunks[3], "step 1/2 ...\n");
});

test("without a terminal: no carriage returns, quiet for short phases, periodic for long ones", () => {
  let now = 0;
  const s = sink(false);
  const p = new Progress(s.out, 10, () => now);
  p.update("short", 0, 3);
  now = 1;
  p.update("short", 3, 3);
  assert.equal(s.chunks.length, 0);
  p.update("long", 0, 100);
  for (let i = 1; i <= 100; i++) {
    now += 0.5;
    p.update("long", i, 100);
  }
  assert.ok(s.chunks.every((c) => !c.includes("\r") && c.endsWith("\n")));
  assert.equal(s.chunks.length, 5); // every 10 s over 50 s; the last one is the closing line
  assert.equal(s.chunks[s.chunks.length - 1], "long: 100/100 (50.0s)\n");
});

test("episodes that end together still show progress: the turn they are at", () => {
  let now = 0;
  const s = sink(false);
  const p = new Progress(s.out, 10, () => now);
  for (let turn = 1; turn <= 8; turn++) {
    p.update("eval", 0, 20, `turn ${turn}/8`);
    now += 6;
  }
  p.update("eval", 20, 20);
  assert.deepEqual(s.chunks, [
    "eval: 0/20, turn 3/8 (12.0s)\n",
    "eval: 0/20, turn 5/8 (24.0s)\n",
    "eval: 0/20, turn 7/8 (36.0s)\n",
    "eval: 20/20 (48.0s)\n",
  ]);
});

test("the step summary shows rewards, gate, loss and the time split", () => {
  const line = stepSummary(3, 20, {
    "reward/first": 0.25,
    "reward/post_reflection": 0.5,
    gate_rate: 0.75,
    "memory/updates": 2,
    loss: 0.01234,
    "time/step": 12.34,
    "time/sample": 8,
    "time/train": 4,
  });
  assert.equal(
    line,
    "step  3/20  first 0.25  post 0.50  gate 0.75  mem+2  loss 0.0123  12.3s (sample 8.0 train 4.0)",
  );
  assert.doesNotMatch(stepSummary(1, 2, { "reward/first": 1 }), /post|gate/);
});
