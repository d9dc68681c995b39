// Tests of the incremental JSONL index: tolerant of a half-written last line, picks up appends,
// starts over on truncation, and reads records back by byte offset (multi-byte text included).
import { test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JsonlIndex } from "./jsonl-index.ts";

function tmp(): { dir: string; file: string; done: () => void } {
  const dir = mkdtempSync(join(tmpdir(), "erl-jsonl-index-"));
  return { dir, file: join(dir, "x.jsonl"), done: () => rmSync(dir, { recursive: true, force: true }) };
}

const byN = (r: unknown) => (r as { n: number }).n;

test("indexes complete lines only and picks up the rest of a half-written line later", async () => {
  const t = tmp();
  try {
    writeFileSync(t.file, '{"n":1}\n{"n":2}\n{"n":3,"te');
    const idx = new JsonlIndex(t.file, byN);
    assert.equal(await idx.refresh(), true);
    assert.deepEqual(
      idx.entries.map((e) => e.meta),
      [1, 2],
    );
    assert.equal(idx.problemCount, 0, "a half-written last line is not a problem");
    appendFileSync(t.file, 'xt":"ok"}\n{"n":4}\n');
    assert.equal(await idx.refresh(), true);
    assert.deepEqual(
      idx.entries.map((e) => e.meta),
      [1, 2, 3, 4],
    );
    assert.deepEqual(await idx.read(idx.entries[2]!), { n: 3, text: "ok" });
    assert.equal(await idx.refresh(), false, "nothing new");
  } finally {
    t.done();
  }
});

test("skips and counts malformed complete lines, keeping line numbers right", async () => {
  const t = tmp();
  try {
    writeFileSync(t.file, '{"n":1}\n\nnot json\n{"n":2}\n');
    const idx = new JsonlIndex(t.file, byN);
    await idx.refresh();
    assert.deepEqual(
      idx.entries.map((e) => [e.meta, e.line]),
      [
        [1, 1],
        [2, 4],
      ],
    );
    assert.equal(idx.problemCount, 1);
    assert.equal(idx.problems[0]!.line, 3);
  } finally {
    t.done();
  }
});

test("byte offsets are right with multi-byte text and lines longer than the read chunk", async () => {
  const t = tmp();
  try {
    const big = "é√🙂".repeat(200_000); // ~1.8 MB of UTF-8, more than one 1 MiB read
    writeFileSync(
      t.file,
      [
        { n: 1, s: "√" },
        { n: 2, s: big },
        { n: 3, s: "<script>" },
      ]
        .map((r) => JSON.stringify(r))
        .join("\n") + "\n",
    );
    const idx = new JsonlIndex(t.file, byN);
    await idx.refresh();
    assert.equal(idx.entries.length, 3);
    const recs = (await idx.readMany(idx.entries)) as { n: number; s: string }[];
    assert.deepEqual(
      recs.map((r) => r.n),
      [1, 2, 3],
    );
    assert.equal(recs[1]!.s, big);
    assert.equal(recs[2]!.s, "<script>");
  } finally {
    t.done();
  }
});

test("a truncated or replaced file is indexed again from the start", async () => {
  const t = tmp();
  try {
    writeFileSync(t.file, '{"n":1}\n{"n":2}\n{"n":3}\n');
    let resets = 0;
    const idx = new JsonlIndex(t.file, byN, undefined, () => resets++);
    await idx.refresh();
    assert.equal(idx.entries.length, 3);
    writeFileSync(t.file, '{"n":9}\n');
    await idx.refresh();
    assert.deepEqual(
      idx.entries.map((e) => e.meta),
      [9],
    );
    assert.equal(resets, 1);
  } finally {
    t.done();
  }
});

test("a missing file gives an empty index and concurrent refreshes share one pass", async () => {
  const t = tmp();
  try {
    const idx = new JsonlIndex(t.file, byN);
    assert.equal(await idx.refresh(), false);
    writeFileSync(t.file, Array.from({ length: 500 }, (_v, i) => JSON.stringify({ n: i })).join("\n") + "\n");
    await Promise.all([idx.refresh(), idx.refresh(), idx.refresh()]);
    assert.equal(idx.entries.length, 500, "no line indexed twice");
    assert.deepEqual(
      idx.entries.slice(0, 3).map((e) => e.meta),
      [0, 1, 2],
    );
  } finally {
    t.done();
  }
});

test("a line over the limit is skipped unread, and a torn one is not read again at each refresh", async () => {
  const t = tmp();
  try {
    const limit = 1 << 16;
    const big = `{"n":9,"pad":"${"x".repeat(3 * (1 << 20))}"}`;
    // Chunks of 1 MiB: the long line spans several, and the lines around it are whole.
    writeFileSync(t.file, `{"n":1}\n${big}\n{"n":2}\n{"n":3,"pad":"${"y".repeat(5 * (1 << 20))}`);
    const idx = new JsonlIndex(t.file, byN, undefined, undefined, undefined, limit);
    await idx.refresh();
    assert.deepEqual(
      idx.entries.map((e) => e.meta),
      [1, 2],
    );
    assert.equal(idx.problemCount, 1);
    assert.deepEqual(idx.problems[0], { line: 2, message: `longer than ${limit} bytes; skipped` });
    assert.deepEqual(await idx.read(idx.entries[1]!), { n: 2 });
    // The torn last line is already over the limit: its bytes count as indexed and are passed over.
    const size = (await import("node:fs")).statSync(t.file).size;
    assert.equal(idx.indexedBytes, size);
    appendFileSync(t.file, '"}\n{"n":4}\n');
    await idx.refresh();
    assert.deepEqual(
      idx.entries.map((e) => e.meta),
      [1, 2, 4],
    );
    assert.equal(idx.problemCount, 2);
    assert.equal(idx.entries[2]!.line, 5);
    assert.deepEqual(await idx.read(idx.entries[2]!), { n: 4 });
  } finally {
    t.done();
  }
});

test("a line split over many chunks is joined once and read back whole", async () => {
  const t = tmp();
  try {
    const text = "é".repeat(3 << 20); // 6 MiB of two-byte characters, over several 1 MiB chunks
    writeFileSync(t.file, `{"n":1,"text":"${text}"}\n{"n":2}\n`);
    const idx = new JsonlIndex(t.file, byN);
    await idx.refresh();
    assert.deepEqual(
      idx.entries.map((e) => e.meta),
      [1, 2],
    );
    assert.equal(((await idx.read(idx.entries[0]!)) as { text: string }).text, text);
    assert.deepEqual(await idx.read(idx.entries[1]!), { n: 2 });
  } finally {
    t.done();
  }
});
