/**
 * `erl dashboard [runs-dir] [--port P] [--host H]`: serves the read-only dashboard over a directory of
 * runs (default ./runs) until interrupted. See docs/dashboard.md.
 */
import { statSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { UserError } from "../util/errors.ts";

const HELP = `usage: erl dashboard [runs-dir] [--port P] [--host H]

Serves a read-only web page over the run directories under runs-dir (default: ./runs):
runs and their status, training curves, episodes, the memory timeline and comparison reports.

options:
  --port P     port to listen on (default 8080; 0 picks a free one)
  --host H     address to bind (default 127.0.0.1, this machine only). Binding another address
               exposes every run's text to whoever can reach it.
  --poll MS    how often to look for new data for live updates (default 1000)
  -h, --help   show this help`;

function parseIntOption(
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  max: number,
): number {
  if (raw === undefined) return fallback;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max)
    throw new UserError(`--${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  return v;
}

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      port: { type: "string" },
      host: { type: "string" },
      poll: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (positionals.length > 1)
    throw new UserError(`expected at most one runs directory, got ${positionals.length}`);
  const dir = resolve(positionals[0] ?? "runs");
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    throw new UserError(`runs directory not found: ${dir}`);
  }
  if (!isDir) throw new UserError(`not a directory: ${dir}`);
  const port = parseIntOption("port", values.port, 8080, 0, 65535);
  const pollMs = parseIntOption("poll", values.poll, 1000, 100, 60000);
  const host = values.host ?? "127.0.0.1";

  const { startDashboard } = await import("../dashboard/server.ts");
  let dash;
  try {
    dash = await startDashboard({ runsDir: dir, host, port, pollMs });
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "EADDRINUSE") throw new UserError(`port ${port} is in use; pick another with --port`);
    if (code === "EADDRNOTAVAIL" || code === "ENOTFOUND") throw new UserError(`cannot bind --host ${host}`);
    throw e;
  }
  console.log(`erl dashboard: serving ${dir}`);
  console.log(`erl dashboard: open ${dash.url}  (Ctrl-C to stop)`);
  if (host !== "127.0.0.1" && host !== "localhost" && host !== "::1")
    console.log(`erl dashboard: warning: bound to ${host}; anyone who can reach it can read these runs`);
  await new Promise<void>((resolveStop) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      void dash.close().then(resolveStop);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  return 0;
}
