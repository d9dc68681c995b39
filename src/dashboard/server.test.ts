// Tests of the dashboard server over a generated fixture runs directory: path confinement (traversal
// in every spelling, symbolic links out, absolute paths), read-only methods, the Host check, the
// JSON API (runs, metrics slices, pagination of episodes, episode pairing, memory), tolerant reading
// of a run being written, and safe rendering of comparison reports.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startDashboard, type DashboardServer } from "./server.ts";
import { reportAssetUrl, renderReport } from "./markdown.ts";
import { PathRefused, RunsRoot } from "./safe-path.ts";
import { writeFixtureRuns } from "../../test/fixtures/runs/generate.ts";

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** A raw request: the path is sent exactly as given (no client-side normalisation of `..`). */
function raw(port: number, path: string, opts: { method?: string; host?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: opts.method ?? "GET",
        headers: { host: opts.host ?? `127.0.0.1:${port}` },
      },
      (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (body += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      },
    );
    req.on("error", reject);
    req.end();
  });
}

async function json<T>(port: number, path: string): Promise<T> {
  const r = await raw(port, path);
  assert.equal(r.status, 200, `${path}: ${r.body}`);
  return JSON.parse(r.body) as T;
}

let base: string;
let root: string;
let outside: string;
let dash: DashboardServer;

before(async () => {
  base = mkdtempSync(join(tmpdir(), "erl-dash-server-"));
  root = join(base, "runs");
  outside = join(base, "secret");
  mkdirSync(root);
  mkdirSync(outside);
  writeFileSync(join(outside, "passwd.txt"), "top secret");
  writeFileSync(
    join(outside, "config.json"),
    JSON.stringify({ name: "outside", algo: "erl", env: "frozenlake" }),
  );
  writeFixtureRuns(root);
  writeFileSync(join(root, "inside.txt"), "fine");
  symlinkSync(join(outside, "passwd.txt"), join(root, "leak.txt"));
  symlinkSync(outside, join(root, "leakdir"));
  symlinkSync(join(root, "inside.txt"), join(root, "alias.txt"));
  // A run directory whose files are links to files outside the runs directory.
  writeFileSync(join(outside, "metrics.jsonl"), '{"step":1,"time":1,"kind":"train","loss":42}\n');
  mkdirSync(join(root, "sneaky"));
  writeFileSync(join(root, "sneaky", "status.json"), JSON.stringify({ state: "running", step: 1 }));
  symlinkSync(join(outside, "config.json"), join(root, "sneaky", "config.json"));
  symlinkSync(join(outside, "metrics.jsonl"), join(root, "sneaky", "metrics.jsonl"));
  dash = await startDashboard({ runsDir: root, port: 0, pollMs: 100 });
});

after(async () => {
  await dash.close();
  rmSync(base, { recursive: true, force: true });
});

describe("path confinement", () => {
  test("serves a file inside the runs directory, with a sandboxing CSP", async () => {
    const r = await raw(dash.port, "/files/compare/frozenlake/plots/eval-reward.svg");
    assert.equal(r.status, 200);
    assert.equal(r.headers["content-type"], "image/svg+xml");
    assert.match(String(r.headers["content-security-policy"]), /sandbox/);
    assert.equal((await raw(dash.port, "/files/inside.txt")).body, "fine");
    assert.equal((await raw(dash.port, "/files/alias.txt")).body, "fine", "a link that stays inside is fine");
  });

  for (const path of [
    "/files/../secret/passwd.txt",
    "/files/compare/../../secret/passwd.txt",
    "/files/%2e%2e/secret/passwd.txt",
    "/files/%2E%2E/secret/passwd.txt",
    "/files/.%2e/secret/passwd.txt",
    "/files/..%2fsecret%2fpasswd.txt",
    "/files/..%2Fsecret%2Fpasswd.txt",
    "/files/compare%2f..%2f..%2fsecret%2fpasswd.txt",
    "/files/..%5csecret%5cpasswd.txt",
    "/files/..\\secret\\passwd.txt",
    "/files/%2fetc%2fpasswd",
    "/files//etc/passwd",
    `/files/${encodeURIComponent(join(outside, "passwd.txt"))}`,
    "/files/inside.txt%00.svg",
    "/static/../../../package.json",
    "/static/%2e%2e%2f%2e%2e%2fserver.ts",
  ]) {
    test(`refuses ${path}`, async () => {
      const r = await raw(dash.port, path);
      assert.ok(r.status === 403 || r.status === 404 || r.status === 400, `${path} → ${r.status}`);
      assert.doesNotMatch(r.body, /top secret/);
    });
  }

  test("refuses symbolic links that lead out of the runs directory", async () => {
    const a = await raw(dash.port, "/files/leak.txt");
    assert.equal(a.status, 403);
    assert.doesNotMatch(a.body, /top secret/);
    const b = await raw(dash.port, "/files/leakdir/passwd.txt");
    assert.equal(b.status, 403);
    const runs = await json<{ runs: { id: string }[] }>(dash.port, "/api/runs");
    assert.ok(
      !runs.runs.some((r) => r.id.startsWith("leakdir")),
      "a linked-out directory is not listed as a run",
    );
  });

  test("files of a run that link out of the runs directory are not read", async () => {
    const config = await raw(dash.port, "/api/run/config?run=sneaky");
    assert.equal(config.status, 200);
    assert.deepEqual(JSON.parse(config.body), {});
    const m = await json<{ train: { step: number[] } }>(dash.port, "/api/run/metrics?run=sneaky");
    assert.deepEqual(m.train.step, []);
    const runs = await json<{ runs: { id: string; name: string; files: { metrics: boolean } }[] }>(
      dash.port,
      "/api/runs",
    );
    const sneaky = runs.runs.find((r) => r.id === "sneaky")!;
    assert.equal(sneaky.name, "sneaky", "the outside config's name is not used");
    assert.equal(sneaky.files.metrics, false);
  });

  test("a double-encoded dot segment is just a (missing) name, not a traversal", async () => {
    const r = await raw(dash.port, "/files/%252e%252e/secret/passwd.txt");
    assert.equal(r.status, 404);
  });

  test("serves only known file types", async () => {
    writeFileSync(join(root, "frozenlake", "erl-s1", "notes.sh"), "echo hi");
    assert.equal((await raw(dash.port, "/files/frozenlake/erl-s1/notes.sh")).status, 403);
  });

  test("RunsRoot.checkRelative rejects every unsafe spelling", () => {
    for (const bad of ["../x", "a/../../x", "/etc/passwd", "C:/x", "a\\b", "a\0b", "./x"])
      assert.throws(() => RunsRoot.checkRelative(bad), PathRefused, bad);
    assert.deepEqual(RunsRoot.checkRelative("a/b//c.svg"), ["a", "b", "c.svg"]);
  });
});

describe("request handling", () => {
  test("only GET and HEAD are answered", async () => {
    for (const method of ["POST", "PUT", "DELETE"]) {
      const r = await raw(dash.port, "/api/runs", { method });
      assert.equal(r.status, 405, method);
    }
    const head = await raw(dash.port, "/api/runs", { method: "HEAD" });
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
  });

  test("a foreign Host header is refused (DNS rebinding)", async () => {
    assert.equal((await raw(dash.port, "/api/runs", { host: "evil.example:80" })).status, 403);
    assert.equal((await raw(dash.port, "/api/runs", { host: `localhost:${dash.port}` })).status, 200);
  });

  test("binds to 127.0.0.1 by default", () => {
    const addr = dash.server.address();
    assert.ok(addr && typeof addr === "object");
    assert.equal(addr.address, "127.0.0.1");
  });

  test("the page has a CSP that allows only its own scripts", async () => {
    const r = await raw(dash.port, "/");
    assert.equal(r.status, 200);
    assert.match(String(r.headers["content-security-policy"]), /script-src 'self'/);
    assert.match(r.body, /<script type="module" src="\/static\/app.js">/);
    assert.equal((await raw(dash.port, "/vendor/uplot.js")).status, 200);
    assert.equal((await raw(dash.port, "/vendor/other.js")).status, 404);
    for (const inherited of ["constructor", "__proto__", "toString"])
      assert.equal((await raw(dash.port, `/vendor/${inherited}`)).status, 404, inherited);
  });

  test("bad query parameters are a 400 with a message, unknown runs a 404", async () => {
    const r = await raw(dash.port, "/api/run/rollouts?run=frozenlake/erl-s1&offset=abc");
    assert.equal(r.status, 400);
    assert.match(r.body, /offset/);
    assert.equal((await raw(dash.port, "/api/run/metrics?run=nope")).status, 404);
    assert.equal((await raw(dash.port, "/api/run/metrics?run=../secret")).status, 404);
  });
});

interface RunsReply {
  runs: {
    id: string;
    state: string;
    step: number;
    group: string;
    algo: string;
    error: string | null;
    latestEval: { step: number; reward: number } | null;
  }[];
  reports: { id: string; title: string }[];
}

describe("API", () => {
  test("lists runs with status, step, latest eval and seed groups, and reports", async () => {
    const data = await json<RunsReply>(dash.port, "/api/runs");
    const ids = data.runs.map((r) => r.id);
    assert.deepEqual(ids, [
      "frozenlake/erl-s1",
      "frozenlake/erl-s2",
      "frozenlake/rlvr-s1",
      "frozenlake/rlvr-s2",
      "hotpotqa/erl-s1",
      "live/erl-crashed",
      "live/erl-running",
      "sneaky",
      "sokoban/erl-s1",
    ]);
    const byId = new Map(data.runs.map((r) => [r.id, r]));
    assert.equal(byId.get("live/erl-running")!.state, "running");
    // status.json of the crashed run says running, but no process has its pid.
    assert.equal(byId.get("live/erl-crashed")!.state, "stopped");
    assert.match(byId.get("live/erl-crashed")!.error ?? "", /process \(pid \d+\) is gone/);
    assert.equal(byId.get("hotpotqa/erl-s1")!.state, "failed");
    // config.json keeps the algorithm as an object, as training writes it.
    assert.equal(byId.get("frozenlake/rlvr-s1")!.algo, "rlvr");
    assert.equal(byId.get("frozenlake/erl-s1")!.latestEval!.step, 12);
    assert.equal(
      byId.get("frozenlake/erl-s1")!.group,
      byId.get("frozenlake/erl-s2")!.group,
      "seeds share a group",
    );
    assert.notEqual(byId.get("frozenlake/erl-s1")!.group, byId.get("frozenlake/rlvr-s1")!.group);
    assert.deepEqual(
      data.reports.map((r) => [r.id, r.title]),
      [["compare/frozenlake", "FrozenLake: ERL vs RLVR"]],
    );
  });

  test("metrics come as columns, and `since` returns only newer records", async () => {
    type M = {
      from: number;
      next: number;
      train: { step: number[]; cols: Record<string, (number | null)[]> };
      eval: { step: number[]; cols: Record<string, (number | null)[]> };
    };
    const all = await json<M>(dash.port, "/api/run/metrics?run=frozenlake/erl-s1");
    assert.deepEqual(all.train.step, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert.deepEqual(all.eval.step, [4, 8, 12]);
    assert.equal(all.train.cols["reward/first"]!.length, 12);
    assert.equal(all.next, 15);
    const narrow = await json<M>(dash.port, "/api/run/metrics?run=frozenlake/erl-s1&keys=loss");
    assert.deepEqual(Object.keys(narrow.train.cols), ["loss"]);
    const tail = await json<M>(dash.port, "/api/run/metrics?run=frozenlake/erl-s1&since=13");
    assert.equal(tail.from, 13);
    assert.deepEqual(tail.train.step, [12]);
    assert.deepEqual(tail.eval.step, [12]);
    const rlvr = await json<M>(dash.port, "/api/run/metrics?run=frozenlake/rlvr-s1");
    assert.equal(rlvr.train.cols["gate_rate"], undefined, "RLVR has no reflection keys");
  });

  test("episodes paginate by step, task and stage", async () => {
    type P = {
      total: number;
      offset: number;
      items: { i: number; step: number; task: string; stage: string }[];
      tasks: string[] | null;
    };
    const steps = await json<{ total: number; steps: { step: number; n: number }[] }>(
      dash.port,
      "/api/run/steps?run=frozenlake/erl-s1",
    );
    assert.deepEqual(
      steps.steps.map((s) => s.step),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    );
    assert.equal(
      steps.steps.reduce((a, s) => a + s.n, 0),
      steps.total,
    );
    const s1 = steps.steps[0]!;
    const p1 = await json<P>(dash.port, `/api/run/rollouts?run=frozenlake/erl-s1&step=1&limit=3`);
    assert.equal(p1.total, s1.n);
    assert.equal(p1.items.length, 3);
    assert.ok(p1.items.every((it) => it.step === 1));
    assert.equal(p1.tasks!.length, 3, "three tasks per step in the fixture");
    const p2 = await json<P>(dash.port, `/api/run/rollouts?run=frozenlake/erl-s1&step=1&limit=3&offset=3`);
    assert.ok(
      p2.items.every((it) => !p1.items.some((x) => x.i === it.i)),
      "pages do not overlap",
    );
    const task = p1.tasks![1]!;
    const pt = await json<P>(
      dash.port,
      `/api/run/rollouts?run=frozenlake/erl-s1&step=1&task=${encodeURIComponent(task)}&stage=first`,
    );
    assert.equal(pt.total, 2, "two first attempts per task");
    assert.ok(pt.items.every((it) => it.task === task && it.stage === "first"));
    const everything = await json<P>(dash.port, `/api/run/rollouts?run=frozenlake/erl-s1&limit=500`);
    assert.equal(everything.total, steps.total);
    const capped = await json<P>(dash.port, `/api/run/rollouts?run=frozenlake/erl-s1&limit=100000`);
    assert.ok(capped.items.length <= 500, "limit is capped");
  });

  test("an episode comes with its partner attempt and the reflection diff", async () => {
    type P = { items: { i: number; stage: string; reflection: boolean }[] };
    const page = await json<P>(dash.port, `/api/run/rollouts?run=frozenlake/erl-s1&stage=second&limit=1`);
    const second = page.items[0]!;
    assert.equal(second.reflection, true);
    type E = {
      record: { stage: string; task: string; attempt: number; reflection: { rulebook: string } };
      partner: { i: number; record: { stage: string; task: string; attempt: number } } | null;
      reflectionDiff: { value: string; added?: boolean }[];
    };
    const ep = await json<E>(dash.port, `/api/run/episode?run=frozenlake/erl-s1&i=${second.i}`);
    assert.equal(ep.partner!.record.stage, "first");
    assert.equal(ep.partner!.record.task, ep.record.task);
    assert.equal(ep.partner!.record.attempt, ep.record.attempt);
    const added = ep.reflectionDiff
      .filter((p) => p.added)
      .map((p) => p.value)
      .join("");
    assert.ok(added.length > 0 && ep.record.reflection.rulebook.includes(added.split("\n")[0]!));
    const back = await json<E>(dash.port, `/api/run/episode?run=frozenlake/erl-s1&i=${ep.partner!.i}`);
    assert.equal(back.partner!.i, second.i, "first → second link goes both ways");
    assert.equal((await raw(dash.port, "/api/run/episode?run=frozenlake/erl-s1&i=999999")).status, 404);
  });

  test("memory timeline pages with diffs against the previous rulebook", async () => {
    type Mem = {
      total: number;
      items: {
        step: number;
        rulebook: string;
        previous: string | null;
        diff: { value: string; added?: boolean; removed?: boolean }[];
      }[];
    };
    const m = await json<Mem>(dash.port, "/api/run/memory?run=frozenlake/erl-s1&limit=2");
    assert.ok(m.total >= 2);
    assert.equal(m.items.length, 2);
    assert.equal(m.items[0]!.previous, null);
    assert.equal(m.items[1]!.previous, m.items[0]!.rulebook, "each write names the rulebook it replaced");
    assert.ok(m.items[1]!.diff.some((p) => p.removed) || m.items[1]!.diff.some((p) => p.added));
    const steps = m.items.map((x) => x.step);
    assert.ok(steps[0]! <= steps[1]!);
  });

  test("a run being written: the half-written last line is ignored, then read once complete", async () => {
    type M = { next: number; train: { step: number[] }; problems: number };
    const before = await json<M>(dash.port, "/api/run/metrics?run=live/erl-running");
    assert.equal(before.problems, 0);
    const lastStep = before.train.step[before.train.step.length - 1]!;
    assert.equal(lastStep, 12);
    const file = join(root, "live", "erl-running", "metrics.jsonl");
    appendFileSync(file, 'in", "loss": 0.1}\n');
    const after = await json<M>(dash.port, `/api/run/metrics?run=live/erl-running&since=${before.next}`);
    assert.deepEqual(after.train.step, [13]);
    const runs = await json<RunsReply>(dash.port, "/api/runs");
    assert.equal(runs.runs.find((r) => r.id === "live/erl-running")!.state, "running");
    // rollouts.jsonl of the live run also ends with half a record
    const steps = await json<{ total: number }>(dash.port, "/api/run/steps?run=live/erl-running");
    assert.ok(steps.total > 0);
  });

  test("comparison reports render safely, with images through /files/", async () => {
    const r = await json<{ html: string }>(dash.port, "/api/report?id=compare/frozenlake");
    assert.match(r.html, /<table>/);
    assert.match(r.html, /<img src="\/files\/compare\/frozenlake\/plots\/eval-reward.svg"/);
    assert.doesNotMatch(r.html, /<script/i);
    assert.doesNotMatch(r.html, /<img src=x/);
    assert.match(r.html, /&lt;script&gt;/);
    assert.equal((await raw(dash.port, "/api/report?id=../secret")).status, 404);
  });
});

describe("report links", () => {
  test("relative targets map into /files/, anything leaving the tree is dropped", () => {
    assert.equal(reportAssetUrl("compare/a", "plots/x.svg"), "/files/compare/a/plots/x.svg");
    assert.equal(reportAssetUrl("compare/a", "./plots/x y.svg"), "/files/compare/a/plots/x%20y.svg");
    assert.equal(reportAssetUrl("compare/a", "../b/x.svg"), "/files/compare/b/x.svg");
    assert.equal(reportAssetUrl("compare/a", "../../../x.svg"), null);
    assert.equal(reportAssetUrl("compare/a", "/etc/passwd"), null);
    assert.equal(reportAssetUrl("compare/a", "https://example.com/x.svg"), null);
    assert.equal(reportAssetUrl("compare/a", "javascript:alert(1)"), null);
    assert.equal(reportAssetUrl(".", "x.svg"), "/files/x.svg");
  });

  test("raw HTML and javascript: links in a report are neutralised", () => {
    const html = renderReport(
      "r",
      '<b onclick="x()">hi</b> [a](javascript:alert(1)) ![p](https://evil/x.png)',
    );
    assert.doesNotMatch(html, /<b /);
    assert.doesNotMatch(html, /href="javascript/);
    assert.doesNotMatch(html, /src="https/);
  });
});
