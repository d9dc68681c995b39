/**
 * The Tinker side's Python (its own virtualenv, scripts/setup-tinker.sh) and the two processes that run
 * in it (docs/tinker.md): `erl engine serve --tinker` (erl_tinker.server, the engine behind the Tinker
 * REST API) and the `engine.kind: "tinker"` bridge (erl_tinker.bridge, an engine that forwards every
 * protocol call to a Tinker service through the official SDK).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { UserError } from "../util/errors.ts";
import { startEngine, type EngineClient } from "./client.ts";
import { waitUntilListening } from "./serve.ts";
import { REPO_ROOT } from "../util/paths.ts";

/** $ERL_TINKER_PYTHON, else <repo>/.venv-tinker/bin/python (checked to exist). */
export function tinkerPython(): string {
  const python = process.env.ERL_TINKER_PYTHON || join(REPO_ROOT, ".venv-tinker", "bin", "python");
  if (python.includes("/") && !existsSync(python))
    throw new UserError(
      `the Tinker virtualenv's Python is missing (${python}): run \`bash scripts/setup-tinker.sh\` or set ERL_TINKER_PYTHON`,
    );
  return python;
}

/** Environment of a process in the Tinker virtualenv: the engine's packages on the path, no hub. */
export function tinkerEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const engineDir = join(REPO_ROOT, "engine");
  return {
    ...process.env,
    PYTHONPATH: process.env.PYTHONPATH ? `${engineDir}:${process.env.PYTHONPATH}` : engineDir,
    PYTHONUNBUFFERED: "1",
    HF_HUB_OFFLINE: "1",
    ...extra,
  };
}

export interface TinkerServeOptions {
  model: string;
  servedModelName?: string;
  host: string;
  port: number;
  token: string;
  allowRemote?: boolean;
  store?: string;
  dtype?: string;
  device?: string;
  /** Where the server's stderr goes: "inherit" (the terminal) or a callback per line. */
  stderr?: "inherit" | ((line: string) => void);
}

/** Starts erl_tinker.server and resolves with its base URL once it listens. */
export async function spawnTinkerServer(
  o: TinkerServeOptions,
): Promise<{ child: ChildProcess; url: string; stop(): Promise<void> }> {
  const args = ["-m", "erl_tinker.server", "--model", o.model, "--host", o.host, "--port", String(o.port)];
  if (o.servedModelName) args.push("--served-model-name", o.servedModelName);
  if (o.allowRemote) args.push("--allow-remote");
  if (o.store) args.push("--store", o.store);
  if (o.dtype) args.push("--dtype", o.dtype);
  if (o.device) args.push("--device", o.device);
  const child = spawn(tinkerPython(), args, {
    cwd: REPO_ROOT,
    // The key travels in the environment, not argv, so other users cannot read it from `ps`.
    env: tinkerEnv({ ERL_ENGINE_TOKEN: o.token }),
    stdio: ["ignore", "inherit", "pipe"],
  });
  return waitUntilListening(child, "the Tinker server", /^erl-tinker listening on (http:\/\/\S+)$/, o.stderr);
}

/**
 * The `engine.kind: "tinker"` engine: erl_tinker.bridge in the Tinker virtualenv, a child process over
 * stdio like a local engine, which forwards every call to the service through the official SDK.
 */
export async function startTinkerBridge(
  cfg: { baseUrl: string | null; apiKeyEnv: string; baseModel: string | null },
  onStderr?: (line: string) => void,
): Promise<EngineClient> {
  const key = process.env[cfg.apiKeyEnv];
  if (!key)
    throw new UserError(
      `engine.apiKeyEnv: the environment variable ${cfg.apiKeyEnv} (the Tinker API key) is not set`,
    );
  if (!cfg.baseModel) throw new UserError("engine.baseModel: the Tinker base model is required");
  return startEngine({
    python: tinkerPython(),
    args: ["-m", "erl_tinker.bridge"],
    env: {
      TINKER_API_KEY: key,
      ERL_TINKER_BASE_MODEL: cfg.baseModel,
      ...(cfg.baseUrl ? { TINKER_BASE_URL: cfg.baseUrl } : {}),
    },
    ...(onStderr ? { onStderr } : {}),
  });
}
