// End-to-end tests of the dashboard page in a real headless browser (Debian's chromium driven by
// playwright-core): the runs list, a drawn curve, an episode with boards, escaping of hostile model
// output, the memory and compare views, and a run whose metrics.jsonl is being written.
// Screenshots go to a temporary directory (printed) for a person to look at.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";
import { startDashboard, type DashboardServer } from "./server.ts";
import { CHROMIUM_ARGS, CHROMIUM_PATH } from "./chromium.ts";
import { writeFixtureRuns } from "../../test/fixtures/runs/generate.ts";

const CHROMIUM = CHROMIUM_PATH;
const ARGS = [...CHROMIUM_ARGS];

let base: string;
let root: string;
let shots: string;
let dash: DashboardServer;
let ctx: BrowserContext;
const pageErrors: string[] = [];
let dialogs = 0;

before(async () => {
  if (!existsSync(CHROMIUM))
    throw new Error(
      `${CHROMIUM} not found: run \`bash scripts/setup.sh --browser\` (installs Debian's chromium)`,
    );
  base = mkdtempSync(join(tmpdir(), "erl-dash-browser-"));
  root = join(base, "runs");
  shots = join(base, "screenshots");
  mkdirSync(root);
  mkdirSync(shots);
  writeFixtureRuns(root);
  dash = await startDashboard({ runsDir: root, port: 0, pollMs: 200 });
  ctx = await chromium.launchPersistentContext(join(base, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1500, height: 950 },
  });
  console.log(`screenshots: ${shots}`);
});

after(async () => {
  await ctx?.close();
  await dash?.close();
  // Screenshots stay for inspection when asked for; the rest goes.
  if (process.env.ERL_KEEP_SCREENSHOTS) rmSync(join(base, "profile"), { recursive: true, force: true });
  else if (base) rmSync(base, { recursive: true, force: true });
});

async function open(hash: string): Promise<Page> {
  const page = await ctx.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("dialog", (d) => {
    dialogs++;
    void d.dismiss();
  });
  await page.goto(dash.url + hash);
  await page.waitForSelector("body[data-ready='1']", { timeout: 15000 });
  return page;
}

/** Whether a chart's canvas has any non-transparent pixel. */
async function canvasHasInk(page: Page, chartId: string): Promise<boolean> {
  return page.$eval(`.chart[data-chart="${chartId}"] canvas`, (c) => {
    const canvas = c as HTMLCanvasElement;
    const g = canvas.getContext("2d");
    if (!g || canvas.width === 0) return false;
    const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i]! > 0) return true;
    return false;
  });
}

test("shows the runs and draws the curves", async () => {
  const page = await open("#tab=curves");
  const names = await page.$$eval("#runs-list .run", (els) => els.map((e) => (e as HTMLElement).dataset.run));
  assert.deepEqual(names, [
    "frozenlake/erl-s1",
    "frozenlake/erl-s2",
    "frozenlake/rlvr-s1",
    "frozenlake/rlvr-s2",
    "live/erl-crashed",
    "live/erl-running",
    "hotpotqa/erl-s1",
    "sokoban/erl-s1",
  ]);
  await page.waitForSelector('.chart[data-chart="eval"] canvas');
  assert.equal(await canvasHasInk(page, "eval"), true, "the eval curve is drawn");
  assert.equal(await canvasHasInk(page, "reward"), true, "the reward curve is drawn");
  const status = await page.textContent('.run[data-run="live/erl-running"] .badge');
  assert.equal(status, "running");
  assert.equal(await page.textContent('.run[data-run="live/erl-crashed"] .badge'), "stopped");
  // Mean over seeds: one line per group plus its band edges; the legend names the seed count.
  await page.click("#agg");
  await page.waitForFunction(() =>
    document.querySelector(".chart[data-chart='eval'] .u-legend")?.textContent?.includes("2 seeds"),
  );
  await page.screenshot({ path: join(shots, "curves.png") });
  await page.close();
});

test("opens an episode: first attempt → reflection → second attempt, with boards, text escaped", async () => {
  const page = await open("#tab=episodes&run=frozenlake/erl-s1&step=1&stage=second");
  await page.waitForSelector(".episode-row");
  await page.click(".episode-row");
  await page.waitForSelector(".attempts .attempt");
  const titles = await page.$$eval(".attempts h3", (els) => els.map((e) => e.textContent));
  assert.deepEqual(titles, ["First attempt", "Reflection", "Second attempt"]);
  const cells = await page.$$eval(".attempt[data-stage='first'] .board-main .cell", (els) => els.length);
  assert.ok(cells >= 9, `a board of at least 3×3 cells is drawn (got ${cells})`);
  const steps = await page.$$eval(".attempt[data-stage='first'] .steps .step", (els) => els.length);
  assert.ok(steps >= 1);
  const diffLines = await page.$$eval(".reflection .diff .dl.add", (els) => els.length);
  assert.ok(diffLines >= 1, "the rulebook diff is shown");
  // The fixture's first episode at step 1 has `<script>` and `<img onerror>` in model text.
  const page2 = await open("#tab=episodes&run=frozenlake/erl-s1&step=1&ep=0");
  await page2.waitForSelector(".attempts .attempt");
  await page2.waitForSelector(".reflection, .note");
  const hostile = await page2.$$eval("#episode-detail pre", (els) =>
    els.some((e) => (e.textContent ?? "").includes('<script>alert("x")</script> <b>bold?</b>')),
  );
  assert.ok(hostile, "hostile model output is shown as text");
  assert.equal(await page2.$$eval("#episode-detail script, #episode-detail img", (els) => els.length), 0);
  await page2.screenshot({ path: join(shots, "episode.png"), fullPage: true });
  assert.equal(dialogs, 0, "no script from run text ran");
  await page.close();
  await page2.close();
});

test("HotpotQA episodes show searches, hits and the extracted answer; Sokoban boards draw from text", async () => {
  const page = await open("#tab=episodes&run=hotpotqa/erl-s1&step=1");
  await page.click(".episode-row");
  await page.waitForSelector(".attempt .answer");
  const answer = await page.$eval(".attempt .answer", (e) => e.textContent ?? "");
  assert.match(answer, /extracted answer/);
  assert.ok((await page.$$(".attempt .qa-step .move")).length >= 1, "a search query is shown");
  assert.ok((await page.$$(".attempt table.hits tr")).length >= 1, "retrieved hits are listed");
  await page.screenshot({ path: join(shots, "hotpotqa.png") });
  await page.goto(dash.url + "#tab=episodes&run=sokoban/erl-s1&step=1&ep=0");
  await page.reload();
  await page.waitForSelector(".attempt .board-main .cell");
  const walls = await page.$$eval(
    ".attempt .board-main .cell",
    (els) => els.filter((e) => e.textContent === "E").length,
  );
  assert.ok(walls >= 20, "the Sokoban border walls are drawn from the text board");
  assert.equal(
    await page.$$eval(".attempt .steps .board.missing", (els) => els.length),
    0,
    "every step has a board",
  );
  await page.close();
});

test("memory timeline and compare report render", async () => {
  const page = await open("#tab=memory&run=frozenlake/erl-s1");
  await page.waitForSelector(".mem-item");
  const first = await page.$eval(".mem-item .version", (e) => e.textContent);
  assert.equal(first, "v1");
  await page.click('button.tab[data-tab="compare"]');
  await page.waitForSelector("article.report table");
  const img = await page.waitForSelector("article.report img");
  await page.waitForFunction(
    (el) => (el as HTMLImageElement).complete && (el as HTMLImageElement).naturalWidth > 0,
    img,
  );
  assert.equal(await page.$$eval("article.report script", (els) => els.length), 0);
  await page.screenshot({ path: join(shots, "compare.png") });
  assert.equal(dialogs, 0);
  await page.close();
});

test("a run being written: a half-written metrics line breaks nothing and new data arrives live", async () => {
  const page = await open("#tab=curves&runs=live/erl-running");
  await page.waitForSelector('.chart[data-chart="eval"] canvas');
  assert.equal(await canvasHasInk(page, "reward"), true);
  const runDir = join(root, "live", "erl-running");
  // The writer gets further into the line but has not finished it: still nothing breaks.
  appendFileSync(join(runDir, "metrics.jsonl"), 'in", "reward/first": 0.5');
  await page.reload();
  await page.waitForSelector("body[data-ready='1']");
  await page.waitForSelector('.chart[data-chart="reward"] canvas');
  assert.equal(await canvasHasInk(page, "reward"), true);
  // Now the writer finishes the line and moves to step 13: the sidebar follows without a reload.
  appendFileSync(join(runDir, "metrics.jsonl"), ', "reward/post_reflection": 0.75}\n');
  writeFileSync(
    join(runDir, "status.json"),
    JSON.stringify({ state: "running", step: 13, totalSteps: 20, updatedAt: new Date().toISOString() }),
  );
  await page.waitForFunction(
    () =>
      document
        .querySelector('.run[data-run="live/erl-running"] .run-sub')
        ?.textContent?.includes("step 13/20"),
    undefined,
    { timeout: 10000 },
  );
  assert.ok((await page.textContent("#live"))?.includes("live"));
  await page.screenshot({ path: join(shots, "live.png") });
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
  await page.close();
});

test("the Episodes view follows a run being written, and keeps an open episode open", async () => {
  const runDir = join(root, "live", "erl-running");
  const page = await open("#tab=episodes&run=live/erl-running");
  await page.waitForSelector(".episode-row");
  const before = Number(await page.inputValue("#ep-step"));
  // The writer finishes its half-written episode line: a new step appears and the view, which was
  // showing the newest step with no episode open, moves to it without a reload.
  appendFileSync(
    join(runDir, "rollouts.jsonl"),
    'e", "episode": "s13-t0-a0-first", "stage": "first", "attempt": 0, "reward": 0, "env": "frozenlake", "trace": []}\n',
  );
  await page.waitForFunction(
    (want) => (document.querySelector("#ep-step") as HTMLInputElement | null)?.value === String(want),
    before + 1,
    { timeout: 10000 },
  );
  assert.equal(await page.$$eval(".episode-row", (els) => els.length), 1);
  // An open episode is left alone while more lines arrive; the list's counts still update.
  await page.goto(dash.url + `#tab=episodes&run=live/erl-running&step=${before}&ep=0`);
  await page.reload();
  await page.waitForSelector("#episode-detail .attempt");
  await page.$eval("#episode-detail", (el) => el.setAttribute("data-mark", "kept"));
  const count = async () => Number((await page.textContent(".toolbar .muted"))?.split(" ")[0]);
  const n0 = await count();
  const line = JSON.stringify({ step: before + 1, task: "t2", episode: "s13-t1-a0-first", stage: "first" });
  appendFileSync(join(runDir, "rollouts.jsonl"), line + "\n");
  await page.waitForFunction(
    (n) => document.querySelector(".toolbar .muted")?.textContent?.startsWith(`${n} episodes`),
    n0 + 1,
    { timeout: 10000 },
  );
  assert.equal(await page.$eval("#episode-detail", (el) => el.getAttribute("data-mark")), "kept");
  assert.deepEqual(pageErrors, [], "no uncaught errors in the page");
  await page.close();
});
