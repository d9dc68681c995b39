/**
 * Starting the engine's HTTP server as a child process: used by `erl engine serve` (which then
 * just waits) and by tests (which talk to it through `connectEngine`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";

export interface HttpServerOptions {
  host: string;
  /** 0 picks a free port; the chosen one is in the returned URL. */
  port: number;
  token: string;
  allowRemote?: boolean;
  python?: string;
  /** Where the engine's stderr goes: "inherit" (the terminal) or a callback per line. */
  stderr?: "inherit" | ((line: string) => void);
  /** The server's limits (engine/erl_engine/server.py; its defaults when absent). */
  maxBody?: number;
  headerTimeout?: number;
  maxConnections?: number;
}

export interface HttpServerHandle {
  child: ChildProcess;
  url: string;
  stop(): Promise<void>;
}

export async function spawnHttpEngine(opts: HttpServerOptions): Promise<HttpServerHandle> {
  const python = opts.python ?? defaultPython();
  if (python.includes("/") && !existsSync(python))
    throw new UserError(
      `Python interpreter not found at ${python}: run \`bash scripts/setup.sh\` or set ERL_PYTHON`,
    );
  const engineDir = join(REPO_ROOT, "engine");
  const args = ["-m", "erl_engine.server", "--http", "--host", opts.host, "--port", String(opts.port)];
  if (opts.allowRemote) args.push("--allow-remote");
  if (opts.maxBody !== undefined) args.push("--max-body", String(opts.maxBody));
  if (opts.headerTimeout !== undefined) args.push("--header-timeout", String(opts.headerTimeout));
  if (opts.maxConnections !== undefined) args.push("--max-connections", String(opts.maxConnections));
  const child = spawn(python, args, {
    cwd: REPO_ROOT,
    // The token travels in the environment, not argv, so other users cannot read it from `ps`.
    env: {
      ...process.env,
      ERL_ENGINE_TOKEN: opts.token,
      PYTHONPATH: process.env.PYTHONPATH ? `${engineDir}:${process.env.PYTHONPATH}` : engineDir,
      PYTHONUNBUFFERED: "1",
      HF_HUB_OFFLINE: "1",
    },
    stdio: ["ignore", "inherit", "pipe"],
  });
  return waitUntilListening(
    child,
    "the engine server",
    /^erl-engine listening on (http:\/\/\S+)$/,
    opts.stderr,
  );
}

/**
 * Waits for a server child to print its "<name> listening on <url>" line on stderr (`pattern`'s first
 * group is the URL), passing every stderr line on; a child that exits first is an error quoting the
 * last 20 lines, unless they already went to the terminal.
 */
export async function waitUntilListening(
  child: ChildProcess,
  what: string,
  pattern: RegExp,
  stderr: HttpServerOptions["stderr"],
): Promise<HttpServerHandle> {
  const exited = new Promise<void>((res) => child.on("exit", () => res()));
  const url = await new Promise<string>((resolveUrl, reject) => {
    let partial = "";
    const tail: string[] = [];
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      const lines = (partial + chunk).split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        if (stderr === "inherit") process.stderr.write(line + "\n");
        else stderr?.(line);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        const m = pattern.exec(line);
        if (m?.[1]) resolveUrl(m[1]);
      }
    });
    child.on("error", (e) => reject(new UserError(`could not start ${what}: ${e.message}`)));
    child.on("exit", (code) => {
      // With inherited stderr the reason is already on the terminal; otherwise quote it.
      const why = stderr === "inherit" ? "" : `:\n${tail.join("\n")}`;
      reject(new UserError(`${what} exited (code ${code}) before listening${why}`));
    });
  });
  return {
    child,
    url,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
    },
  };
}
