/**
 * Starts `erl engine serve --openai` as a child process (the real CLI) on a free loopback port and
 * resolves with its base URL; for tests and benchmarks.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { REPO_ROOT } from "../util/paths.ts";

/** Starts `erl engine serve --openai` and resolves with its base URL. */
export async function spawnOpenAIServe(
  model: string,
  tok: string,
  extra: string[] = [],
): Promise<{ child: ChildProcess; url: string; log: () => string }> {
  const proc = spawn(
    process.execPath,
    [
      join(REPO_ROOT, "bin", "erl.mjs"),
      "engine",
      "serve",
      "--openai",
      "--model",
      model,
      "--port",
      "0",
      ...extra,
    ],
    {
      cwd: REPO_ROOT,
      env: { ...process.env, ERL_ENGINE_TOKEN: tok, ERL_TEST: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  let log = "";
  const url = await new Promise<string>((res, rej) => {
    const onData = (d: Buffer) => {
      log += d.toString();
      const m = / at (http:\/\/\S+\/v1) /.exec(log);
      if (m) res(m[1]!);
    };
    proc.stdout!.on("data", onData);
    proc.stderr!.on("data", onData);
    proc.on("exit", (code) => rej(new Error(`serve exited (${code}) before listening:\n${log}`)));
  });
  return { child: proc, url, log: () => log };
}

/** Stops a server started by `spawnOpenAIServe`. */
export async function stopServe(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const done = new Promise((r) => child.once("exit", r));
  child.kill("SIGTERM");
  await done;
}
