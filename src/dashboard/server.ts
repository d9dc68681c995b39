/**
 * The dashboard's HTTP server (Node's `http`, no framework): the static page, uPlot from
 * node_modules, a JSON API over the runs directory, Server-Sent Events for live updates, and
 * `/files/…` for report images. Read-only: only GET and HEAD are answered.
 *
 * Safety: binds to 127.0.0.1 unless told otherwise; when bound to a loopback address it also checks
 * the Host header (so a web page elsewhere cannot reach it through DNS rebinding); every file is
 * resolved through `RunsRoot`; the page is served with a Content-Security-Policy that allows only its
 * own scripts, so run text that slipped past escaping still could not run.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { readFile } from "node:fs/promises";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, extname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { renderReport } from "./markdown.ts";
import { RunStore } from "./runs.ts";
import { PathRefused, RunsRoot } from "./safe-path.ts";
import { ownEntry } from "../util/own.ts";
import { isLoopback } from "../util/net.ts";

export interface DashboardOptions {
  runsDir: string;
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  /** How often live updates look at the run files, in milliseconds. */
  pollMs?: number;
}

export interface DashboardServer {
  server: Server;
  store: RunStore;
  url: string;
  port: number;
  close(): Promise<void>;
}

const STATIC_DIR = join(dirname(fileURLToPath(import.meta.url)), "static");
const require = createRequire(import.meta.url);
const UPLOT_DIR = dirname(require.resolve("uplot"));

const VENDOR: Record<string, string> = {
  "uplot.js": join(UPLOT_DIR, "uPlot.esm.js"),
  "uplot.css": join(UPLOT_DIR, "uPlot.min.css"),
};

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".md": "text/plain; charset=utf-8",
  ".txt": "text/plain; charset=utf-8",
  ".csv": "text/plain; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".jsonl": "text/plain; charset=utf-8",
};

const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
  "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
// Files from run directories (report images above all) may be opened directly: a sandboxed document
// that can run nothing, so an SVG with a script inside stays inert.
const FILE_CSP = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'";

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

function hostAllowed(header: string | undefined): boolean {
  if (!header) return false;
  const name = header.startsWith("[") ? header.slice(0, header.indexOf("]") + 1) : header.split(":")[0]!;
  return name === "localhost" || name === "[::1]" || /^127\.\d+\.\d+\.\d+$/.test(name);
}

function intParam(u: URL, key: string, fallback: number, min: number, max: number): number {
  const raw = u.searchParams.get(key);
  if (raw === null || raw === "") return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v))
    throw new HttpError(400, `query parameter "${key}" must be an integer, got ${raw}`);
  return Math.max(min, Math.min(max, v));
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer, extra = {}): void {
  res.writeHead(status, {
    "Content-Type": type,
    "Content-Length": Buffer.byteLength(body),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    ...extra,
  });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

function sendJson(res: ServerResponse, value: unknown, status = 200): void {
  send(res, status, "application/json; charset=utf-8", JSON.stringify(value));
}

export async function startDashboard(opts: DashboardOptions): Promise<DashboardServer> {
  const store = new RunStore(opts.runsDir);
  const host = opts.host ?? "127.0.0.1";
  const checkHost = isLoopback(host);
  const pollMs = opts.pollMs ?? 1000;
  const sse = new Set<ServerResponse>();

  const runFor = (u: URL) => {
    const id = u.searchParams.get("run");
    if (!id) throw new HttpError(400, 'missing query parameter "run"');
    const run = store.get(id);
    if (!run) throw new HttpError(404, `no run "${id}" in the runs directory`);
    return run;
  };

  const api: Record<string, (u: URL, res: ServerResponse) => Promise<void>> = {
    "/api/info": async (_u, res) => sendJson(res, { runsDir: store.root.real, pollMs }),
    "/api/runs": async (_u, res) => {
      const runs = await Promise.all(store.list().map((r) => r.summary()));
      sendJson(res, { runs, reports: store.reportList() });
    },
    "/api/run/config": async (u, res) => {
      const text = runFor(u).readText("config.json");
      let config: unknown = {};
      try {
        config = text === null ? {} : JSON.parse(text);
      } catch {
        config = { error: "config.json is not valid JSON" };
      }
      sendJson(res, config);
    },
    "/api/run/metrics": async (u, res) => {
      const run = runFor(u);
      const keys = u.searchParams.get("keys");
      const since = intParam(u, "since", 0, 0, Number.MAX_SAFE_INTEGER);
      sendJson(res, await run.metricsSlice(since, keys ? keys.split(",").filter(Boolean) : null));
    },
    "/api/run/steps": async (u, res) => sendJson(res, await runFor(u).rolloutSteps()),
    "/api/run/rollouts": async (u, res) => {
      const run = runFor(u);
      const stepRaw = u.searchParams.get("step");
      sendJson(
        res,
        await run.rolloutPage({
          step:
            stepRaw === null || stepRaw === "" ? null : intParam(u, "step", 0, 0, Number.MAX_SAFE_INTEGER),
          task: u.searchParams.get("task") || null,
          stage: u.searchParams.get("stage") || null,
          offset: intParam(u, "offset", 0, 0, Number.MAX_SAFE_INTEGER),
          limit: intParam(u, "limit", 50, 1, 500),
        }),
      );
    },
    "/api/run/episode": async (u, res) => {
      const run = runFor(u);
      const ep = await run.episode(intParam(u, "i", -1, -1, Number.MAX_SAFE_INTEGER));
      if (!ep) throw new HttpError(404, "no such episode");
      sendJson(res, ep);
    },
    "/api/run/memory": async (u, res) => {
      const run = runFor(u);
      const w = u.searchParams.get("worker");
      sendJson(
        res,
        await run.memoryPage({
          offset: intParam(u, "offset", 0, 0, Number.MAX_SAFE_INTEGER),
          limit: intParam(u, "limit", 20, 1, 200),
          worker: w === null || w === "" ? null : intParam(u, "worker", 0, 0, Number.MAX_SAFE_INTEGER),
        }),
      );
    },
    "/api/report": async (u, res) => {
      const id = u.searchParams.get("id") ?? "";
      const text = store.reportText(id);
      if (text === null) throw new HttpError(404, `no report "${id}"`);
      sendJson(res, { id, html: renderReport(id, text) });
    },
  };

  const serveFile = async (rel: string, res: ServerResponse): Promise<void> => {
    const type = TYPES[extname(rel).toLowerCase()];
    if (!type) throw new HttpError(403, "this kind of file is not served");
    const real = store.root.resolveFile(rel);
    send(res, 200, type, await readFile(real), { "Content-Security-Policy": FILE_CSP });
  };

  const serveStatic = async (name: string, res: ServerResponse): Promise<void> => {
    if (!/^[a-z0-9][a-z0-9._-]*$/i.test(name)) throw new HttpError(404, "not found");
    const root = new RunsRoot(STATIC_DIR);
    const file = root.tryResolve(name);
    if (!file) throw new HttpError(404, "not found");
    const type = TYPES[extname(name)] ?? "application/octet-stream";
    send(res, 200, type, await readFile(file), { "Content-Security-Policy": PAGE_CSP });
  };

  const openEvents = (req: IncomingMessage, res: ServerResponse): void => {
    res.writeHead(200, {
      "Content-Type": "text/event-stream; charset=utf-8",
      "Cache-Control": "no-store",
      Connection: "keep-alive",
      "X-Content-Type-Options": "nosniff",
    });
    res.write(`retry: 2000\n\n`);
    sse.add(res);
    req.on("close", () => sse.delete(res));
    ensurePolling();
  };

  let lastPrints = new Map<string, string>();
  let lastReports = "";
  let timer: NodeJS.Timeout | null = null;
  let ticks = 0;
  const poll = (): void => {
    if (sse.size === 0) {
      if (timer) clearInterval(timer);
      timer = null;
      return;
    }
    const prints = new Map<string, string>();
    for (const r of store.list()) prints.set(r.id, r.fingerprint());
    const changed = [...prints].filter(([id, p]) => lastPrints.get(id) !== p).map(([id]) => id);
    const reports = store
      .reportList()
      .map((r) => `${r.id}:${r.mtimeMs}`)
      .join("|");
    const listChanged =
      prints.size !== lastPrints.size ||
      [...lastPrints.keys()].some((id) => !prints.has(id)) ||
      reports !== lastReports;
    lastPrints = prints;
    lastReports = reports;
    ticks++;
    const msg =
      changed.length || listChanged
        ? `event: change\ndata: ${JSON.stringify({ runs: changed, list: listChanged })}\n\n`
        : ticks % 15 === 0
          ? `: keep-alive\n\n`
          : "";
    if (msg) for (const res of sse) res.write(msg);
  };
  function ensurePolling(): void {
    if (timer) return;
    lastPrints = new Map(store.list().map((r) => [r.id, r.fingerprint()]));
    lastReports = store
      .reportList()
      .map((r) => `${r.id}:${r.mtimeMs}`)
      .join("|");
    timer = setInterval(poll, pollMs);
  }

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (checkHost && !hostAllowed(req.headers.host)) throw new HttpError(403, "unexpected Host header");
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.setHeader("Allow", "GET, HEAD");
      throw new HttpError(405, "the dashboard is read-only");
    }
    const rawPath = (req.url ?? "/").split("?", 1)[0]!;
    // Refuse dot segments (plain or percent-encoded) and backslashes before URL parsing quietly
    // normalises them away, so that every traversal attempt gets the same clear 403.
    for (const seg of rawPath.split("/")) {
      let d: string;
      try {
        d = decodeURIComponent(seg);
      } catch {
        throw new HttpError(400, "bad percent-encoding");
      }
      if (
        d === "." ||
        d === ".." ||
        d.includes("\\") ||
        d.includes("\0") ||
        d.split("/").some((p) => p === "..")
      )
        throw new HttpError(403, "path traversal refused");
    }
    const u = new URL(req.url ?? "/", "http://localhost");
    const path = u.pathname;
    if (path === "/" || path === "/index.html") return serveStatic("index.html", res);
    if (path.startsWith("/static/")) return serveStatic(path.slice("/static/".length), res);
    if (path.startsWith("/vendor/")) {
      const file = ownEntry(VENDOR, path.slice("/vendor/".length));
      if (!file) throw new HttpError(404, "not found");
      const type = TYPES[extname(file)]!;
      return send(res, 200, type, readFileSync(file), { "Cache-Control": "max-age=3600" });
    }
    if (path === "/favicon.ico") {
      res.writeHead(204, { "Cache-Control": "max-age=86400" });
      res.end();
      return;
    }
    if (path === "/api/events") return openEvents(req, res);
    if (path.startsWith("/files/")) {
      let rel: string;
      try {
        rel = decodeURIComponent(path.slice("/files/".length));
      } catch {
        throw new HttpError(400, "bad percent-encoding");
      }
      return serveFile(rel, res);
    }
    const route = api[path];
    if (route) return route(u, res);
    throw new HttpError(404, "not found");
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      if (e instanceof HttpError) sendJson(res, { error: e.message }, e.status);
      else if (e instanceof PathRefused)
        sendJson(res, { error: e.message }, e.why === "not found" || e.why === "not a file" ? 404 : 403);
      else sendJson(res, { error: `internal error: ${(e as Error).message}` }, 500);
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(opts.port ?? 8080, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : (opts.port ?? 0);
  const shownHost = host.includes(":") ? `[${host}]` : host;
  return {
    server,
    store,
    port,
    url: `http://${shownHost}:${port}/`,
    close: () =>
      new Promise<void>((resolve) => {
        if (timer) clearInterval(timer);
        timer = null;
        for (const res of sse) res.end();
        sse.clear();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
