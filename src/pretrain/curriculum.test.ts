import assert from "node:assert/strict";
import { test } from "node:test";
import { CURRICULUM_MIXES, curriculumDocs, trainBoards, type CurriculumSpec } from "./curriculum.ts";

const boards = trainBoards();
const spec = (docs: number, seed = 0): CurriculumSpec => ({
  seed,
  docs,
  mix: CURRICULUM_MIXES["real-lm"]!,
  maxSize: 9,
  large: 0.5,
});

test("every curriculum mix is a distribution", () => {
  for (const [name, mix] of Object.entries(CURRICULUM_MIXES)) {
    const weights = Object.values(mix);
    assert.ok(
      weights.every((w) => w >= 0),
      name,
    );
    assert.ok(Math.abs(weights.reduce((s, w) => s + w, 0) - 1) < 1e-9, `${name} sums to 1`);
  }
});

test("curriculum boards come from the train splits only, never a test task", () => {
  const train = new Set<unknown>([...boards.frozenlake, ...boards.sokoban]);
  assert.ok([...boards.frozenlake, ...boards.sokoban].every((t) => t.id.startsWith("train-")));
  let withTask = 0;
  for (const doc of curriculumDocs(spec(300), boards)) {
    const task = (doc.meta as { task?: unknown }).task;
    if (task === undefined) continue;
    withTask++;
    assert.ok(train.has(task), `${doc.kind}: a board outside the train split`);
  }
  assert.ok(withTask > 200, `only ${withTask} of 300 documents carry a board`);
});

test("document i depends only on (seed, i); the mix's rule-free kinds appear", () => {
  const line = (d: { kind: string; messages: unknown }) => JSON.stringify([d.kind, d.messages]);
  const short = [...curriculumDocs(spec(40), boards)].map(line);
  const long = [...curriculumDocs(spec(120), boards)].map(line);
  assert.deepEqual(long.slice(0, 40), short);
  const other = [...curriculumDocs(spec(40, 1), boards)].map(line);
  assert.notDeepEqual(other, short);
  const kinds = new Set([...curriculumDocs(spec(120), boards)].map((d) => d.kind));
  assert.ok(kinds.has("free-play") && kinds.has("sokoban-free"), [...kinds].join(", "));
});
