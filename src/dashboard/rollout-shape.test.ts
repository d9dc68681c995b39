// The rollout records training writes (`rolloutRecord`) for episodes played in the REAL environments
// by scripted moves, and what the page makes of them: each step keeps the environment's compact
// info (FrozenLake positions, HotpotQA search hits without paragraph text), the record keeps the
// observation after the last action, and the page's board code recovers the whole path from them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { EpisodeOutcome } from "../agent/loop.ts";
import { compactInfo, rolloutRecord } from "../algo/records.ts";
import type { RolloutRecord } from "../algo/types.ts";
import type { ChatMessage } from "../engine/api.ts";
import { getEnv } from "../envs/index.ts";
import type { EnvFamily, Task } from "../envs/types.ts";

const HERE = dirname(fileURLToPath(import.meta.url));

interface BoardsModule {
  episodeBoards(record: unknown): { boards: (string[][] | null)[]; path: ([number, number] | null)[] };
  traceSteps(record: unknown): { next: string | null }[];
}
const boards = (await import(pathToFileURL(join(HERE, "static/boards.js")).href)) as BoardsModule;

/** Plays `replies` in a real episode and builds the record as the ERL step does. */
async function play(env: EnvFamily, task: Task, replies: string[]): Promise<RolloutRecord> {
  const episode = env.makeEpisode(task);
  const system = "the system prompt";
  const messages: ChatMessage[] = [
    { role: "system", content: system },
    { role: "user", content: episode.initialObservation },
  ];
  for (const reply of replies) {
    messages.push({ role: "assistant", content: reply });
    const r = await episode.step(reply);
    if (r.done) break;
    messages.push({ role: r.observationRole, content: r.observation });
  }
  assert.equal(episode.done, true, "the scripted replies finish the episode");
  const outcome: EpisodeOutcome = {
    request: { id: "s1-t0-a0-first", task, system, sampling: { temperature: 0.7 } },
    messages,
    trace: [...episode.trace],
    turns: [],
    trajectory: { ids: [], mask: [], logprobs: [] },
    reward: episode.totalReward,
    success: episode.success,
    stopReason: episode.trace[episode.trace.length - 1]!.result.stopReason ?? "failure",
    feedback: episode.feedback(),
    sampledTokens: 0,
  };
  const rec = rolloutRecord({ step: 1, env, task, outcome, stage: "first", attempt: 0, group: "g" });
  // What goes into rollouts.jsonl is JSON: check the record survives the trip.
  return JSON.parse(JSON.stringify(rec)) as RolloutRecord;
}

const move = (m: string) => `Going ${m}.\n\`\`\`\n${m}\n\`\`\``;

test("FrozenLake records keep positions and the final board; the page recovers the path", async () => {
  const env = getEnv("frozenlake");
  const task = env.loadSplit("test").find((t) => t.id === "test-0")!;
  // test-0: start (3,4), goal (5,5), a hole at (4,4): right, down, down reaches the goal.
  const rec = await play(env, task, [move("right"), move("down"), move("down")]);
  assert.equal(rec.success, true);
  assert.deepEqual(
    rec.trace.map((s) => s.info?.agent),
    [
      [3, 5],
      [4, 5],
      [5, 5],
    ],
  );
  assert.equal(rec.trace[2]!.info?.cell, "G");
  assert.ok(!rec.messages.some((m) => m.role === "system"));
  assert.match(rec.finalObservation ?? "", /√/, "the board after the winning move");
  const drawn = boards.episodeBoards(rec);
  assert.deepEqual(drawn.path, [
    [3, 4],
    [3, 5],
    [4, 5],
    [5, 5],
  ]);
  assert.equal(drawn.boards[3]?.[5]?.[5], "√", "the last board comes from finalObservation");
});

test("HotpotQA records keep each search's hit ids, titles and scores, not the paragraphs", async () => {
  const env = getEnv("hotpotqa");
  const task = env.loadSplit("test")[0]!;
  const search = '<tool_call>{"name":"search","arguments":{"query":"film director","top_k":3}}</tool_call>';
  const rec = await play(env, task, [search, "The answer is \\boxed{Paris}."]);
  const calls = rec.trace[0]!.info?.calls as { query: string; hits: Record<string, unknown>[] }[];
  assert.equal(calls[0]!.query, "film director");
  assert.equal(calls[0]!.hits.length, 3);
  for (const hit of calls[0]!.hits) {
    assert.deepEqual(Object.keys(hit).sort(), ["id", "score", "title"]);
    assert.equal(typeof hit.score, "number");
  }
  assert.equal(rec.trace[1]!.info?.answer, "Paris");
  assert.match(rec.finalObservation ?? "", /recorded/);
  // The retrieved text of the search step is the next step's observation.
  assert.match(boards.traceSteps(rec)[0]!.next ?? "", /Results for "film director"/);
});

test("compactInfo bounds what an environment's info can add to a record", () => {
  let deep: unknown = { leaf: 1 };
  for (let i = 0; i < 8; i++) deep = { down: deep };
  const out = compactInfo({
    text: "x".repeat(1000),
    list: Array.from({ length: 100 }, (_, i) => i),
    bad: Number.NaN,
    fn: () => 1,
    deep,
    pos: [1, 2],
  });
  assert.equal((out.text as string).length, 200);
  assert.ok((out.text as string).endsWith("…"));
  assert.equal((out.list as number[]).length, 16);
  assert.equal("bad" in out, false);
  assert.equal("fn" in out, false);
  assert.deepEqual(out.pos, [1, 2]);
  assert.ok(JSON.stringify(out.deep).length < 60, "nesting is cut");
  assert.ok(JSON.stringify(out).length < 400);
});
