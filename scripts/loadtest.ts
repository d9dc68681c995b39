/**
 * `npm run loadtest`: the two HTTP servers under sustained load (docs/reliability.md#load). Each
 * server is started on 127.0.0.1 with the tiny fixture model (test/fixtures/tiny-model); then, for a
 * fixed time, a fixed number of clients send requests back to back while a fixed number of slow
 * clients hold connections open without a token (one header byte every 200 ms, reconnecting when cut).
 *
 *   engine      `erl engine serve`: POST /v1/call, alternately `encode` and a `sample` of 8 tokens
 *   openai      `erl engine serve --openai`: POST /v1/chat/completions, max_tokens 8
 *
 * Reports per server: requests, throughput and p50/p99 latency of the answered (200) ones, answers by
 * status (and network errors), and the RSS of the server's processes (idle, peak, end). A client that
 * gets 429 (busy) waits 250 ms, as a client library would. Exits 1 on an answer other than 200 and 429,
 * or when more than 1% of the requests end without one (a connection cut). Loopback only; everything is bounded:
 * clients ≤ 64, slow clients ≤ 256, seconds ≤ 600.
 *
 *   node --import tsx scripts/loadtest.ts [--seconds 60] [--clients 16] [--slow 40] [--only engine|openai] [--out DIR]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import net from "node:net";
import { cpus, loadavg } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { die, outputFolder, parseFlags, positiveInts } from "../bench/args.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const ERL = join(ROOT, "bin", "erl.mjs");
const TINY = join(ROOT, "test", "fixtures", "tiny-model");

const { values } = parseFlags({
  options: {
    seconds: { type: "string", default: "60" },
    clients: { type: "string", default: "16" },
    slow: { type: "string", default: "40" },
    only: { type: "string" },
    out: { type: "string" },
  },
  allowPositionals: false,
});
const seconds = positiveInts("--seconds", values.seconds, 600)[0]!;
const clients = positiveInts("--clients", values.clients, 64)[0]!;
const slow = values.slow === "0" ? 0 : positiveInts("--slow", values.slow, 256)[0]!;
if (values.only !== undefined && values.only !== "engine" && values.only !== "openai")
  die(`--only must be engine or openai, got "${values.only}"`);
const outDir = outputFolder("--out", values.out);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** A client's pause after a 429 before it tries again. */
const BACKOFF_MS = 250;

/** Starts `erl engine serve …` and resolves with its URL once it listens. */
function startServer(args: string[], token: string): Promise<{ p: ChildProcess; url: string }> {
  return new Promise((done, reject) => {
    const p = spawn(
      process.execPath,
      [ERL, "engine", "serve", "--host", "127.0.0.1", "--port", "0", ...args],
      {
        cwd: ROOT,
        env: {
          ...process.env,
          ERL_ENGINE_TOKEN: token,
          ERL_ENGINE_THREADS: process.env.ERL_ENGINE_THREADS ?? "1",
        },
        stdio: ["ignore", "pipe", "pipe"],
        detached: true,
      },
    );
    let out = "";
    const on = (d: Buffer): void => {
      out += d.toString();
      const m = /(?:engine serving at|API for "[^"]*" at) (http:\/\/\S+)/.exec(out);
      if (m) done({ p, url: m[1]!.replace(/\/v1$/, "") });
    };
    p.stdout!.on("data", on);
    p.stderr!.on("data", on);
    if (process.env.LOADTEST_DEBUG) p.stderr!.on("data", (d: Buffer) => process.stderr.write(d));
    p.on("exit", (code) => reject(new Error(`the server exited (${code}) before listening:\n${out}`)));
  });
}

/** The server process and its descendants (the engine under the Node front end), from /proc. */
function tree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const t of readdirSync(`/proc/${out[i]}/task`))
        for (const c of readFileSync(`/proc/${out[i]}/task/${t}/children`, "utf8").trim().split(/\s+/))
          if (c) out.push(Number(c));
    } catch {
      /* gone */
    }
  }
  return out;
}
function rssMiB(pid: number): number {
  let kb = 0;
  for (const p of tree(pid)) {
    try {
      kb += Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"))?.[1] ?? 0);
    } catch {
      /* gone */
    }
  }
  return kb / 1024;
}

/** A slow client without a token: one header byte every 200 ms; reconnects when the server cuts it. */
function slowClient(port: number, until: number, counts: { cut: number }): Promise<void> {
  return new Promise((done) => {
    const go = (): void => {
      if (Date.now() >= until) return done();
      const s = net.connect(port, "127.0.0.1");
      const head = "POST /v1/call HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + "x".repeat(10_000);
      let i = 0;
      let timer: NodeJS.Timeout | undefined;
      s.on("connect", () => {
        timer = setInterval(() => {
          if (Date.now() >= until) s.destroy();
          else s.write(head[i++ % head.length]!);
        }, 200);
      });
      s.on("error", () => undefined);
      s.on("data", () => undefined);
      s.on("close", () => {
        clearInterval(timer);
        if (Date.now() < until) {
          counts.cut++;
          setTimeout(go, 50);
        } else done();
      });
    };
    go();
  });
}

interface Result {
  server: string;
  requests: number;
  seconds: number;
  throughput: number;
  p50: number;
  p99: number;
  byStatus: Record<string, number>;
  rss: { idle: number; peak: number; end: number };
  slowCut: number;
}

async function load(
  server: string,
  serveArgs: string[],
  prepare: (url: string, token: string) => Promise<void>,
  request: (url: string, token: string, i: number) => Promise<number>,
): Promise<Result> {
  const token = randomBytes(16).toString("hex");
  const { p, url } = await startServer(serveArgs, token);
  try {
    await prepare(url, token);
    await sleep(500);
    const idle = rssMiB(p.pid!);
    let peak = idle;
    const sampler = setInterval(() => (peak = Math.max(peak, rssMiB(p.pid!))), 250);
    const t0 = Date.now();
    const until = t0 + seconds * 1000;
    const latencies: number[] = [];
    const byStatus: Record<string, number> = {};
    const counts = { cut: 0 };
    const port = Number(new URL(url).port);
    const slowOnes = Array.from({ length: slow }, () => slowClient(port, until, counts));
    let seq = 0;
    const client = async (): Promise<void> => {
      while (Date.now() < until) {
        const ts = performance.now();
        let status: string;
        try {
          status = String(await request(url, token, seq++));
        } catch (e) {
          status = `network: ${(e as { cause?: { code?: string } }).cause?.code ?? (e as Error).message}`;
        }
        if (status === "200") latencies.push(performance.now() - ts);
        byStatus[status] = (byStatus[status] ?? 0) + 1;
        // "Busy, retry shortly" (the OpenAI-compatible server's cap on requests in flight): back off
        // as a client library would, instead of spinning.
        if (status === "429") await sleep(BACKOFF_MS);
      }
    };
    await Promise.all([...Array.from({ length: clients }, client), ...slowOnes]);
    clearInterval(sampler);
    const elapsed = (Date.now() - t0) / 1000;
    latencies.sort((a, b) => a - b);
    const q = (f: number): number =>
      latencies[Math.min(latencies.length - 1, Math.floor(f * latencies.length))]!;
    return {
      server,
      requests: Object.values(byStatus).reduce((a, b) => a + b, 0),
      seconds: elapsed,
      throughput: latencies.length / elapsed,
      p50: q(0.5),
      p99: q(0.99),
      byStatus,
      rss: { idle, peak: Math.max(peak, rssMiB(p.pid!)), end: rssMiB(p.pid!) },
      slowCut: counts.cut,
    };
  } finally {
    try {
      process.kill(-p.pid!, "SIGTERM");
    } catch {
      /* gone */
    }
    await new Promise((r) => (p.exitCode !== null ? r(null) : p.once("exit", r)));
  }
}

async function call(
  url: string,
  token: string,
  method: string,
  params: unknown,
  id: number,
): Promise<Response> {
  return fetch(`${url}/v1/call`, {
    method: "POST",
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ v: 1, id, method, params }),
  });
}

const results: Result[] = [];
if (values.only !== "openai")
  results.push(
    await load(
      "engine (`erl engine serve`)",
      [],
      async (url, token) => {
        const r = await call(
          url,
          token,
          "loadModel",
          { path: TINY, dtype: "float32", device: "cpu", seed: 0 },
          1,
        );
        const body = (await r.json()) as { ok: boolean; error?: unknown };
        if (!body.ok) throw new Error(`loadModel failed: ${JSON.stringify(body.error)}`);
      },
      async (url, token, i) => {
        const r =
          i % 2 === 0
            ? await call(url, token, "encode", { text: `You are on a frozen lake, move ${i}.` }, i)
            : await call(
                url,
                token,
                "sample",
                { prompts: [[1, 2, 3, 4, 5, 6, 7, 8]], n: 1, maxTokens: 8, temperature: 1, seed: i },
                i,
              );
        if (r.status !== 200) {
          await r.arrayBuffer();
          return r.status;
        }
        // A protocol error answered with 200 (ok: false) would be a failed call: counted as 599.
        const body = (await r.json()) as { ok?: boolean };
        return body.ok === false ? 599 : 200;
      },
    ),
  );
if (values.only !== "engine")
  results.push(
    await load(
      "OpenAI-compatible (`erl engine serve --openai`)",
      ["--openai", "--model", TINY, "--dtype", "float32"],
      async () => undefined,
      async (url, token, i) => {
        const r = await fetch(`${url}/v1/chat/completions`, {
          method: "POST",
          headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
          body: JSON.stringify({
            model: "tiny-model",
            messages: [{ role: "user", content: `Move ${i % 4}?` }],
            max_tokens: 8,
            seed: i,
          }),
        });
        await r.arrayBuffer();
        return r.status;
      },
    ),
  );

const cpu = (() => {
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    const flags = /^flags\s*:\s*(.*)$/m.exec(info)?.[1]?.split(" ") ?? [];
    // A label for the report only (nothing here depends on the CPU): which of these flags it has.
    const shown = ["avx2", "avx512f", "amx_bf16"].filter((f) => flags.includes(f));
    return `${cpus()[0]?.model ?? "?"} (${shown.join(", ") || "none of avx2, avx512f, amx_bf16"}), ${cpus().length} cores`;
  } catch {
    return `${cpus()[0]?.model ?? "?"}, ${cpus().length} cores`;
  }
})();
const ms = (x: number): string => `${x.toFixed(x < 10 ? 1 : 0)} ms`;
console.log(
  `load test: ${seconds} s per server, ${clients} clients back to back, ${slow} slow unauthenticated clients; ` +
    `${cpu}; load average ${loadavg()
      .map((l) => l.toFixed(1))
      .join(", ")} at the end`,
);
console.log(
  "\n| server | requests | answered 200 per second | p50 (200s) | p99 (200s) | answers | slow connections cut | RSS idle → peak → end |",
);
console.log("| --- | --- | --- | --- | --- | --- | --- | --- |");
for (const r of results)
  console.log(
    `| ${r.server} | ${r.requests} | ${r.throughput.toFixed(1)} | ${ms(r.p50)} | ${ms(r.p99)} | ` +
      `${Object.entries(r.byStatus)
        .map(([k, v]) => `${v}× ${k}`)
        .join(
          ", ",
        )} | ${r.slowCut} | ${r.rss.idle.toFixed(0)} → ${r.rss.peak.toFixed(0)} → ${r.rss.end.toFixed(0)} MiB |`,
  );
if (outDir)
  writeFileSync(
    join(outDir, "loadtest.json"),
    JSON.stringify({ seconds, clients, slow, cpu, results }, null, 1),
  );
// 429 is the OpenAI-compatible server's back-pressure (more clients than requests it takes at once).
// An error status fails the load test, and so do connections cut before an answer beyond 1% of the
// requests (the engine server cuts a client's brand-new connection when enough newer ones arrive
// before it has read its head: a few under a flood of reconnects; see engine/erl_engine/server.py).
const failed = results.some((r) => {
  const cut = Object.entries(r.byStatus).reduce((a, [k, v]) => a + (k.startsWith("network") ? v : 0), 0);
  const bad = Object.keys(r.byStatus).some((k) => !["200", "429"].includes(k) && !k.startsWith("network"));
  return bad || cut > 0.01 * r.requests;
});
process.exit(failed ? 1 : 0);
