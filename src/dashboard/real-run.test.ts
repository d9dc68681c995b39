// The dashboard on a run directory written by REAL training (`erl train` with the tiny random test
// model, one ERL step on FrozenLake): the API lists the run, serves every metric the Curves view
// plots, the episodes with their boards and agent positions, and the memory writes. This is what
// keeps the page and the run format from drifting apart; the fixture tests cover the rest.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { get } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { startDashboard, type DashboardServer } from "./server.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../..");

interface BoardsModule {
  episodeBoards(record: unknown): {
    boards: (string[][] | null)[];
    path: ([number, number] | null)[];
    trace: { info: Record<string, unknown> | null; next: string | null }[];
  };
}

let base: string;
let dash: DashboardServer;

function json<T>(path: string): Promise<T> {
  return new Promise((ok, fail) => {
    get({ host: "127.0.0.1", port: dash.port, path }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        if (res.statusCode !== 200) fail(new Error(`${path}: HTTP ${res.statusCode}: ${body}`));
        else ok(JSON.parse(body) as T);
      });
    }).on("error", fail);
  });
}

before(() => {
  base = mkdtempSync(join(tmpdir(), "erl-dash-real-"));
  // Small on purpose (about 15 s on 2 cores): one step, two tasks × two attempts, 16-token replies.
  const args = [
    join(REPO, "bin/erl.mjs"),
    "train",
    "--config",
    "frozenlake-tiny",
    ...["model.path=test/fixtures/tiny-model", "steps=1", "batchSize=2", "algo.n=2"].flatMap((s) => [
      "--set",
      s,
    ]),
    ...["data.evalTasks=2", "eval.n=1", "eval.initial=false", "algo.maxTokensPerTurn=16"].flatMap((s) => [
      "--set",
      s,
    ]),
    "--runs-dir",
    base,
    "--name",
    "fl-erl",
  ];
  const r = spawnSync(process.execPath, args, { cwd: REPO, encoding: "utf8", timeout: 120_000 });
  assert.equal(r.status, 0, `erl train failed:\n${r.stdout}\n${r.stderr}`);
});

after(async () => {
  await dash?.close();
  if (base) rmSync(base, { recursive: true, force: true });
});

test("the API serves a real training run: runs, metrics, episodes with boards, memory", async () => {
  dash = await startDashboard({ runsDir: base, port: 0, pollMs: 1000 });

  const runs = await json<{ runs: { id: string; algo: string; env: string; state: string; step: number }[] }>(
    "/api/runs",
  );
  assert.equal(runs.runs.length, 1);
  const run = runs.runs[0]!;
  assert.deepEqual(
    [run.id, run.algo, run.env, run.state, run.step],
    ["fl-erl", "erl", "frozenlake", "finished", 1],
  );

  // Every key the Curves view plots is one training writes.
  const defs = (await import(pathToFileURL(join(HERE, "static/chart-defs.js")).href)) as {
    CHARTS: { kind: "train" | "eval"; runKind?: "sft"; series: { key: string }[] }[];
  };
  const metrics = await json<{
    train: { step: number[]; cols: Record<string, (number | null)[]> };
    eval: { step: number[]; cols: Record<string, (number | null)[]> };
  }>("/api/run/metrics?run=fl-erl&since=0");
  assert.deepEqual(metrics.train.step, [1]);
  assert.deepEqual(metrics.eval.step, [1]);
  for (const chart of defs.CHARTS.filter((c) => c.runKind !== "sft"))
    for (const s of chart.series) {
      const col = metrics[chart.kind].cols[s.key];
      assert.ok(
        col && typeof col[0] === "number",
        `metric "${s.key}" (${chart.kind}) is missing from a real run`,
      );
    }

  // Episodes: first attempts, second attempts with reflections, evaluation episodes.
  const steps = await json<{ total: number; steps: { step: number; n: number }[] }>(
    "/api/run/steps?run=fl-erl",
  );
  const lines = readFileSync(join(base, "fl-erl", "rollouts.jsonl"), "utf8")
    .trim()
    .split("\n");
  assert.equal(steps.total, lines.length);
  const page = await json<{ items: { i: number; stage: string; reflection: boolean; turns: number }[] }>(
    "/api/run/rollouts?run=fl-erl&step=1&limit=500",
  );
  const stages = new Set(page.items.map((it) => it.stage));
  assert.ok(stages.has("first") && stages.has("eval"), `stages: ${[...stages].join(",")}`);
  const second = page.items.find((it) => it.stage === "second");
  assert.ok(second, "the random model fails, so failed first attempts get a second attempt");
  assert.equal(second.reflection, true);

  const ep = await json<{
    record: Record<string, unknown> & { trace: Record<string, unknown>[]; messages: { role: string }[] };
    partner: { record: Record<string, unknown> & { stage: string } } | null;
    reflectionDiff: unknown[] | null;
  }>(`/api/run/episode?run=fl-erl&i=${second.i}`);
  assert.equal(ep.partner?.record.stage, "first");
  assert.ok(ep.reflectionDiff && ep.reflectionDiff.length > 0);
  assert.equal(typeof ep.record.system, "string");
  assert.ok(!ep.record.messages.some((m) => m.role === "system"), "the system prompt is kept in `system`");
  // What the page draws: a board before the first action and after every action, and the agent's
  // position on each, from the environment's step info.
  const boards = (await import(pathToFileURL(join(HERE, "static/boards.js")).href)) as BoardsModule;
  for (const rec of [ep.record, ep.partner!.record]) {
    const trace = rec.trace as { info?: { agent?: unknown } }[];
    assert.ok(trace.length > 0);
    for (const s of trace) assert.ok(Array.isArray(s.info?.agent), "each step keeps info.agent");
    assert.equal(typeof rec.finalObservation, "string");
    const drawn = boards.episodeBoards(rec);
    assert.equal(drawn.boards.length, trace.length + 1);
    drawn.boards.forEach((b, k) => assert.ok(b && b.length >= 3, `board ${k} parsed`));
    drawn.path.forEach((p, k) => assert.ok(p, `agent position ${k} known`));
    assert.deepEqual(drawn.path[trace.length], trace[trace.length - 1]!.info!.agent);
  }

  // Memory: the API pages through exactly the writes in memory.jsonl (none when nothing succeeded).
  const memLines = readFileSync(join(base, "fl-erl", "memory.jsonl"), "utf8")
    .split("\n")
    .filter(Boolean);
  const memory = await json<{ total: number; items: { rulebook: string }[] }>("/api/run/memory?run=fl-erl");
  assert.equal(memory.total, memLines.length);
  assert.equal(memory.items.length, Math.min(memLines.length, 50));
});
