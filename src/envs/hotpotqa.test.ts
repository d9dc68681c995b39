import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import {
  HotpotEpisode,
  HotpotFamily,
  loadOfficialHotpot,
  loadSplitIds,
  passageId,
  type HotpotTask,
} from "./hotpotqa.ts";
import { corpusIndex, loadCorpusJsonl, SearchIndex } from "./search.ts";
import { formatToolCall, parseToolCalls, TOOL_CALL_STOP } from "./tool-protocol.ts";

const PASSAGES = [
  {
    id: "p1",
    title: "Ada Lovelace",
    text: "Ada Lovelace was an English mathematician known for work on the Analytical Engine.",
  },
  {
    id: "p2",
    title: "Analytical Engine",
    text: "The Analytical Engine was a mechanical computer designed by Charles Babbage.",
  },
  {
    id: "p3",
    title: "Charles Babbage",
    text: "Charles Babbage was an English polymath born in London in 1791.",
  },
];
const TASK: HotpotTask = {
  id: "q1",
  env: "hotpotqa",
  question: "Where was the designer of the machine Ada Lovelace worked on born?",
  answer: "London",
};
const small = new SearchIndex(PASSAGES);
const search = (query: string, top_k?: number) =>
  formatToolCall("search", top_k === undefined ? { query } : { query, top_k });

test("tool protocol: calls parse; junk and unclosed calls are reported, the stop string ends a call", () => {
  assert.equal(TOOL_CALL_STOP, "</tool_call>");
  const [a, b] = parseToolCalls(`think ${search("x", 3)} and ${search("y")}`);
  assert.deepEqual(a, { ok: true, call: { name: "search", arguments: { query: "x", top_k: 3 } } });
  assert.deepEqual(b, { ok: true, call: { name: "search", arguments: { query: "y" } } });
  assert.deepEqual(parseToolCalls('<tool_call>{"name":"search","arguments":{"query":"z"}}'), [
    { ok: true, call: { name: "search", arguments: { query: "z" } } },
  ]);
  assert.equal(parseToolCalls("<tool_call>{oops}</tool_call>")[0]!.ok, false);
  assert.equal(parseToolCalls('<tool_call>{"arguments":{}}</tool_call>')[0]!.ok, false);
  assert.deepEqual(parseToolCalls("no call here \\boxed{x}"), []);
});

test("a search turn returns a tool observation with ids, scores and titles; the answer turn is scored", () => {
  const ep = new HotpotEpisode(TASK, small);
  assert.equal(ep.initialObservation, `Question: ${TASK.question}\nYou have 5 turns.`);
  const r1 = ep.step(search("Analytical Engine designer", 2));
  assert.equal(r1.observationRole, "tool");
  assert.equal(r1.done, false);
  assert.equal(r1.valid, true);
  assert.match(
    r1.observation,
    /^Results for "Analytical Engine designer":\n\[1\] id=p2 score=\d+\.\d\d title: Analytical Engine\n/,
  );
  assert.match(r1.observation, /Turns used: 1 of 5 \(4 left\)\.$/);
  const calls = r1.info?.calls as { hits: { id: string }[]; topK: number }[];
  assert.equal(calls[0]!.topK, 2);
  assert.equal(calls[0]!.hits.length, 2);
  const r2 = ep.step("Babbage was born in London. \\boxed{london}");
  assert.equal(r2.done, true);
  assert.equal(r2.stopReason, "answered");
  assert.equal(r2.reward, 1);
  assert.equal(ep.success, true);
  assert.match(
    ep.feedback(),
    /^Result: correct\. Your answer: "london"\. Reward 1 \(token F1 1\)\. Turns used 2 of 5, searches 1\.$/,
  );
});

test("feedback never reveals the gold answer; partial credit is reported", () => {
  const wrong = new HotpotEpisode(TASK, small);
  wrong.step("\\boxed{Paris}");
  assert.equal(wrong.totalReward, 0);
  assert.ok(!wrong.feedback().includes("London"));
  assert.match(wrong.feedback(), /^Result: incorrect\. Your answer: "Paris"/);
  const partial = new HotpotEpisode({ ...TASK, answer: "London England" }, small);
  partial.step("\\boxed{London}");
  assert.ok(Math.abs(partial.totalReward - 2 / 3) < 1e-12);
  assert.equal(partial.success, false);
  assert.match(partial.feedback(), /partially correct/);
  assert.ok(!partial.feedback().includes("England"));
  const none = new HotpotEpisode(TASK, small);
  const r = none.step("I think it is London.");
  assert.equal(r.valid, false);
  assert.equal(r.reward, 0);
  assert.match(none.feedback(), /no answer in \\boxed\{\}/);
});

test("bad tool calls use a turn and come back as tool errors; top_k is capped at 50", () => {
  const ep = new HotpotEpisode(TASK, small);
  const bad = ep.step('<tool_call>{"name":"lookup","arguments":{"query":"x"}}</tool_call>');
  assert.equal(bad.valid, false);
  assert.equal(bad.effective, false);
  assert.match(bad.observation, /Tool error: unknown tool "lookup"/);
  assert.match(
    ep.step(formatToolCall("search", { query: "" })).observation,
    /"query" must be a non-empty string/,
  );
  const big = ep.step(search("Babbage", 500));
  assert.equal((big.info?.calls as { topK: number }[])[0]!.topK, 50);
});

test("five tool-call turns end the episode with turn_limit, reward 0 and a timeout feedback", () => {
  const ep = new HotpotEpisode(TASK, small);
  for (let i = 1; i <= 4; i++) {
    const r = ep.step(search("Babbage"));
    assert.equal(r.done, false);
    if (i === 4) assert.match(r.observation, /1 left\)\. Your next turn is the last one/);
  }
  const last = ep.step(search("London"));
  assert.equal(last.done, true);
  assert.equal(last.stopReason, "turn_limit");
  assert.equal(ep.totalReward, 0);
  assert.match(ep.feedback(), /^Result: timeout/);
  assert.equal(ep.trace.length, 5);
});

test("shipped data: 400/100 split; search finds gold paragraphs for known questions", () => {
  const fam = new HotpotFamily();
  const testSet = fam.loadSplit("test");
  assert.equal(testSet.length, 100);
  assert.equal(fam.loadSplit("train").length, 400);
  assert.equal(testSet[0]!.question, "Were Scott Derrickson and Ed Wood of the same nationality?");
  const index = fam.index();
  assert.equal(index.size, 4858);
  assert.equal(index.search("Scott Derrickson", 1)[0]!.title, "Scott Derrickson");
  const titles = index.search("Kiss and Tell film Corliss Archer", 5).map((h) => h.title);
  assert.ok(titles.includes("Kiss and Tell (1945 film)"), titles.join(" | "));
  // Over the test split: how often the question itself retrieves its gold paragraphs in the top 5.
  let both = 0;
  let one = 0;
  for (const t of testSet) {
    const got = new Set(index.search(t.question, 5).map((h) => h.title));
    const k = t.supportingTitles!.filter((s) => got.has(s)).length;
    if (k === 2) both++;
    if (k >= 1) one++;
  }
  assert.ok(one >= 97, `at least one gold paragraph in the top 5 for only ${one}/100`);
  assert.ok(both >= 80, `both gold paragraphs in the top 5 for only ${both}/100`);
});

test("corpus ids follow the shipped scheme; the official HotpotQA format loads", () => {
  const dir = mkdtempSync(join(tmpdir(), "hq-"));
  const shipped = loadCorpusJsonl(new HotpotFamily().corpusFile);
  assert.equal(passageId(shipped[0]!.title), shipped[0]!.id);
  const file = join(dir, "dev.json");
  writeFileSync(
    file,
    JSON.stringify([
      {
        _id: "abc",
        question: "Who?",
        answer: "Ada",
        type: "bridge",
        supporting_facts: [
          ["Ada Lovelace", 0],
          ["Ada Lovelace", 1],
        ],
        context: [["Ada Lovelace", ["Ada was a mathematician.", " She wrote notes."]]],
      },
    ]),
  );
  const { tasks, passages } = loadOfficialHotpot(file);
  assert.deepEqual(tasks, [
    {
      id: "abc",
      env: "hotpotqa",
      question: "Who?",
      answer: "Ada",
      type: "bridge",
      supportingTitles: ["Ada Lovelace"],
    },
  ]);
  assert.deepEqual(passages, [
    {
      id: passageId("Ada Lovelace"),
      title: "Ada Lovelace",
      text: "Ada was a mathematician. She wrote notes.",
    },
  ]);
  const fam = new HotpotFamily({ testFile: file });
  assert.equal(fam.loadSplit("test")[0]!.id, "abc");
});

test("bad input: empty corpus, malformed corpus line, split id missing from the questions", () => {
  const dir = mkdtempSync(join(tmpdir(), "hq-"));
  const empty = join(dir, "empty.jsonl");
  writeFileSync(empty, "\n");
  assert.throws(
    () => corpusIndex(empty),
    (e: unknown) => e instanceof UserError && /empty\.jsonl: the corpus is empty/.test(e.message),
  );
  const bad = join(dir, "bad.jsonl");
  writeFileSync(bad, '{"id":"a","title":"A","text":"x"}\n{"id":"b","text":"y"}\n');
  assert.throws(
    () => loadCorpusJsonl(bad),
    (e: unknown) => e instanceof UserError && /bad\.jsonl:2, key "title"/.test(e.message),
  );
  const questions = join(dir, "q.jsonl");
  writeFileSync(questions, '{"id":"q1","question":"Q?","answer":"A"}\n');
  const split = join(dir, "split.json");
  writeFileSync(split, '{"train_ids":["q1"],"test_ids":["q9"]}');
  const fam = new HotpotFamily({ questionsFile: questions, splitFile: split });
  assert.equal(fam.loadSplit("train").length, 1);
  assert.throws(() => fam.loadSplit("test"), /split\.json, key "test_ids": question id "q9" is not in/);
});

test("a JSON file that is missing or malformed is an error naming it (split ids, official questions)", () => {
  const dir = mkdtempSync(join(tmpdir(), "hq-json-"));
  const split = join(dir, "split.json");
  const official = join(dir, "dev.json");
  const named = (file: string, problem: RegExp) => (e: unknown) =>
    e instanceof UserError && e.message.includes(file) && problem.test(e.message);
  assert.throws(() => loadSplitIds(split), named(split, /file not found/));
  assert.throws(() => loadOfficialHotpot(official), named(official, /file not found/));
  writeFileSync(split, '{"train_ids": [');
  writeFileSync(official, "[{nope");
  assert.throws(() => loadSplitIds(split), named(split, /malformed JSON/));
  assert.throws(() => loadOfficialHotpot(official), named(official, /malformed JSON/));
});
