/**
 * Dashboard benchmark: generates a large seeded runs directory in a temp dir (thousands of steps,
 * tens of thousands of episodes), serves it with `erl dashboard` in a child process, and measures
 * in headless chromium the time to first paint and to the first drawn chart, the time to list and
 * open episodes (the first request builds the rollouts byte-offset index), and the server's resident
 * memory after each phase.
 *
 *   npx tsx bench/dashboard.ts [--steps 2000] [--tasks 4] [--repeat 3] [--keep] [--out DIR]
 *
 * With --out (an existing folder) the figures are also written to DIR/dashboard.json.
 *
 * Prints a Markdown table (and with --out, writes DIR/dashboard.json).
 */
import { spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { join } from "node:path";
import { chromium, type Page } from "playwright-core";
import { CHROMIUM_ARGS, CHROMIUM_PATH } from "../src/dashboard/chromium.ts";
import { writeLargeRuns } from "../test/fixtures/runs/generate.ts";
import { guard, outputFolder, parseFlags, positiveInts } from "./args.ts";

const { values } = parseFlags({
  options: {
    steps: { type: "string", default: "2000" },
    tasks: { type: "string", default: "4" },
    repeat: { type: "string", default: "3" },
    keep: { type: "boolean", default: false },
    out: { type: "string" },
  },
  allowPositionals: false,
});
const steps = positiveInts("--steps", values.steps, 100_000)[0]!;
const tasksPerStep = positiveInts("--tasks", values.tasks, 1000)[0]!;
const repeat = positiveInts("--repeat", values.repeat, 100)[0]!;
const outDir = outputFolder("--out", values.out);

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Math.round(Number(m[1]) / 1024) : NaN;
}

function lines(file: string): number {
  const buf = readFileSync(file);
  let n = 0;
  for (let i = 0; i < buf.length; i++) if (buf[i] === 10) n++;
  return n;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function main(): Promise<void> {
  const base = mkdtempSync(join(tmpdir(), "erl-dash-bench-"));
  const root = join(base, "runs");
  mkdirSync(root);
  const t0 = performance.now();
  writeLargeRuns(root, { steps, tasksPerStep });
  const genS = (performance.now() - t0) / 1000;
  const big = join(root, "large", "erl-s1");
  const rolloutsBytes = statSync(join(big, "rollouts.jsonl")).size;
  const episodes = lines(join(big, "rollouts.jsonl"));
  const metricLines = lines(join(big, "metrics.jsonl"));
  console.error(
    `generated in ${genS.toFixed(1)} s: ${episodes} episodes (${(rolloutsBytes / 2 ** 20).toFixed(0)} MiB), ${metricLines} metric records per run`,
  );

  const child = spawn(process.execPath, ["bin/erl.mjs", "dashboard", root, "--port", "0"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const url = await new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /open (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]!);
    });
    child.on("exit", (code) => reject(new Error(`dashboard exited with ${code}`)));
  });
  const pid = child.pid!;
  const rssIdle = rssMiB(pid);

  const ctx = await chromium.launchPersistentContext(join(base, "profile"), {
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [...CHROMIUM_ARGS],
    viewport: { width: 1500, height: 950 },
  });
  const runs = ["large/erl-s1", "large/erl-s2", "large/rlvr-s1", "large/rlvr-s2"].join(",");

  const curves: { fcp: number; firstChart: number; allCharts: number }[] = [];
  for (let i = 0; i < repeat; i++) {
    const page = await ctx.newPage();
    await page.goto(`${url}#tab=curves&agg=1&runs=${runs}`);
    await page.waitForFunction(() => document.querySelectorAll(".chart canvas").length >= 8, undefined, {
      timeout: 120000,
    });
    curves.push(
      await page.evaluate(() => {
        const fcp = performance.getEntriesByName("first-contentful-paint")[0]?.startTime ?? NaN;
        const chart = performance.getEntriesByName("erl-first-chart")[0]?.startTime ?? NaN;
        return { fcp, firstChart: chart, allCharts: performance.now() };
      }),
    );
    await page.close();
  }
  const rssCurves = rssMiB(pid);

  const timed = async (page: Page, action: () => Promise<unknown>, selector: string) => {
    const s = performance.now();
    await action();
    await page.waitForSelector(selector, { timeout: 120000 });
    return performance.now() - s;
  };
  const page = await ctx.newPage();
  const listCold = await timed(
    page,
    () => page.goto(`${url}#tab=episodes&run=large/erl-s1&step=${Math.floor(steps / 2)}`),
    ".episode-row",
  );
  const rssIndexed = rssMiB(pid);
  const openEpisode = await timed(page, () => page.click(".episode-row"), ".attempts .attempt");
  const page2 = await ctx.newPage();
  const listWarm = await timed(
    page2,
    () => page2.goto(`${url}#tab=episodes&run=large/erl-s1&step=${steps}`),
    ".episode-row",
  );
  const memoryView = await timed(page2, () => page2.click('button.tab[data-tab="memory"]'), ".mem-item");
  const rssEnd = rssMiB(pid);
  await ctx.close();
  child.kill("SIGTERM");

  const result = {
    machine: `${cpus().length} × ${cpus()[0]?.model ?? "?"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM`,
    node: process.version,
    command: `npx tsx bench/dashboard.ts --steps ${steps} --tasks ${tasksPerStep} --repeat ${repeat}`,
    data: {
      runs: 4,
      stepsPerRun: steps,
      metricRecordsPerRun: metricLines,
      episodes,
      rolloutsMiB: rolloutsBytes / 2 ** 20,
      generateS: genS,
    },
    curvesMs: {
      fcpFirst: curves[0]!.fcp,
      firstChartFirst: curves[0]!.firstChart,
      allChartsFirst: curves[0]!.allCharts,
      fcpMedian: median(curves.map((c) => c.fcp)),
      firstChartMedian: median(curves.map((c) => c.firstChart)),
      allChartsMedian: median(curves.map((c) => c.allCharts)),
    },
    episodesMs: { listColdWithIndexing: listCold, openEpisode, listWarm, memoryView },
    rssMiB: { idle: rssIdle, afterCurves: rssCurves, afterIndexingRollouts: rssIndexed, end: rssEnd },
  };
  if (outDir) writeFileSync(join(outDir, "dashboard.json"), JSON.stringify(result, null, 2));
  const f = (x: number) => `${Math.round(x)} ms`;
  console.log(`| measure | value |
| --- | --- |
| data | 4 runs × ${steps} steps; large run: ${episodes} episodes, ${result.data.rolloutsMiB.toFixed(0)} MiB rollouts.jsonl |
| first contentful paint (cold server / median of ${repeat}) | ${f(result.curvesMs.fcpFirst)} / ${f(result.curvesMs.fcpMedian)} |
| first chart drawn (cold / median) | ${f(result.curvesMs.firstChartFirst)} / ${f(result.curvesMs.firstChartMedian)} |
| all 8 charts drawn (cold / median) | ${f(result.curvesMs.allChartsFirst)} / ${f(result.curvesMs.allChartsMedian)} |
| episode list, first request (indexes rollouts.jsonl) | ${f(listCold)} |
| open one episode (first → reflection → second) | ${f(openEpisode)} |
| episode list, another step (index warm) | ${f(listWarm)} |
| memory timeline page | ${f(memoryView)} |
| server RSS: idle / after curves / after indexing / end | ${rssIdle} / ${rssCurves} / ${rssIndexed} / ${rssEnd} MiB |`);
  console.log(`\nmachine: ${result.machine}; node ${process.version}`);
  if (!values.keep) rmSync(base, { recursive: true, force: true });
  else console.error(`kept ${base}`);
}

await guard(main);
