import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { main } from "./main.ts";
import { play, translateInput } from "./play.ts";
import { getEnv } from "../envs/registry.ts";
import { solveFrozenLake, type FrozenLakeTask } from "../envs/frozenlake.ts";

/** Runs the CLI in-process, capturing what it prints. */
async function cli(args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = [];
  const err: string[] = [];
  const log = console.log;
  const error = console.error;
  console.log = (...a: unknown[]) => void out.push(a.join(" "));
  console.error = (...a: unknown[]) => void err.push(a.join(" "));
  try {
    const code = await main(args);
    return { code, out: out.join("\n"), err: err.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

async function* linesOf(items: string[]): AsyncIterable<string> {
  yield* items;
}

test("erl play: an unknown environment lists the known ones", async () => {
  const r = await cli(["play", "chess"]);
  assert.equal(r.code, 2);
  assert.equal(r.err, 'erl play: unknown environment "chess" (known: frozenlake, hotpotqa, sokoban)');
});

test("erl play: a task index out of range is a clear error", async () => {
  const r = await cli(["play", "sokoban", "--index", "100"]);
  assert.equal(r.code, 2);
  assert.match(
    r.err,
    /^erl play: task index 100 is out of range: the test split of sokoban has 100 tasks \(0–99\)$/,
  );
  const bad = await cli(["play", "frozenlake", "--index=-3"]);
  assert.equal(bad.code, 2);
  assert.match(bad.err, /--index must be a non-negative integer/);
  const both = await cli(["play", "frozenlake", "--index", "1", "--seed", "2"]);
  assert.match(both.err, /not both/);
});

test("erl play --search: an unknown retriever or a game is a clear error", async () => {
  const r = await cli(["play", "hotpotqa", "--search", "e5"]);
  assert.equal(r.code, 2);
  assert.equal(r.err, 'erl play: hotpotqa: option "search" must be "bm25" or "dense", got "e5"');
  const game = await cli(["play", "sokoban", "--search", "dense"]);
  assert.equal(game.err, "erl play: --search only applies to hotpotqa");
});

test("erl data stats: a malformed data line names the file and line", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cli-"));
  writeFileSync(
    join(dir, "test_maps.jsonl"),
    '{"index":0,"size":2,"map":["SF","FG"],"start":[0,0],"goal":[1,1]}\n\n{"index":1,\n',
  );
  const r = await cli(["data", "stats", "frozenlake", "--split", "test", "--data-dir", dir]);
  assert.equal(r.code, 2);
  assert.match(r.err, /^erl data: .*test_maps\.jsonl:3: malformed JSON/);
});

test("erl data stats: an empty corpus is a clear error", async () => {
  const dir = mkdtempSync(join(tmpdir(), "cli-"));
  const corpus = join(dir, "corpus.jsonl");
  writeFileSync(corpus, "");
  const r = await cli(["data", "stats", "hotpotqa", "--split", "test", "--corpus", corpus]);
  assert.equal(r.code, 2);
  assert.match(r.err, /^erl data: .*corpus\.jsonl: the corpus is empty$/);
  const wrong = await cli(["data", "stats", "frozenlake", "--corpus", corpus]);
  assert.match(wrong.err, /--corpus only applies to hotpotqa/);
  const sub = await cli(["data", "show", "frozenlake"]);
  assert.match(sub.err, /unknown data command "show"/);
});

test("erl data stats: counts and the optimal-length histogram", async () => {
  const r = await cli(["data", "stats", "sokoban", "--split", "test", "--json"]);
  assert.equal(r.code, 0);
  const s = JSON.parse(r.out);
  assert.equal(s.tasks, 100);
  assert.deepEqual(s.sizes, { "7x7": 32, "8x8": 68 });
  assert.deepEqual(s.optimalLength, { 1: 2, 2: 4, 3: 9, 4: 12, 5: 12, 6: 19, 7: 18, 8: 24 });
  const text = await cli(["data", "stats", "frozenlake", "--split", "test"]);
  assert.match(text.out, /^frozenlake test: 100 tasks\n {2}grid sizes: 2x2 13, 3x3 15,/);
});

test("play(): scripted moves solve a task; shorthands translate to the protocol", async () => {
  const family = getEnv("frozenlake");
  const task = family.loadSplit("test")[0] as FrozenLakeTask;
  const out: string[] = [];
  const code = await play(
    { env: "frozenlake", family, task, showRules: true, interactive: false },
    linesOf(["", "nonsense", "```constructor```", "__proto__", ...solveFrozenLake(task)!]),
    (t) => out.push(t),
  );
  assert.equal(code, 0);
  const text = out.join("\n");
  assert.match(text, /reference rulebook/);
  assert.match(text, /\[reward 0, invalid action\]/);
  assert.match(text, /Total reward: 1\. Success\.$/);
  assert.equal(translateInput("sokoban", "W"), "```\nup\n```");
  assert.equal(translateInput("frozenlake", "```2```"), "```2```");
  assert.equal(translateInput("frozenlake", "constructor"), "```\nconstructor\n```");
  assert.equal(
    translateInput("hotpotqa", "search: Ed Wood"),
    '<tool_call>{"name":"search","arguments":{"query":"Ed Wood","top_k":5}}</tool_call>',
  );
  assert.equal(translateInput("hotpotqa", "Answer: yes"), "\\boxed{yes}");
});

test("erl play reads actions from standard input when it is not a terminal", () => {
  const bin = fileURLToPath(new URL("../../bin/erl.mjs", import.meta.url));
  const r = spawnSync(process.execPath, [bin, "play", "frozenlake", "--split", "train", "--index", "9"], {
    input: "left\n",
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\[reward 1, moved left; reached the goal, done: goal\]/);
  const early = spawnSync(process.execPath, [bin, "play", "frozenlake", "--index", "1"], {
    input: "xyz\n",
    encoding: "utf8",
  });
  assert.equal(early.status, 1);
  assert.match(early.stdout, /Input ended before the episode finished/);
});
