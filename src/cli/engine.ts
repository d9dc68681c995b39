/**
 * `erl engine serve` runs the engine over HTTP (for a GPU box; bearer token required, loopback unless
 * --allow-remote); `erl engine info --model <dir>` loads a model in a local engine and prints its info.
 */
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { UserError } from "../util/errors.ts";
import { existsSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { startEngine } from "../engine/client.ts";
import { spawnHttpEngine } from "../engine/serve.ts";
import { checkInt } from "../train/limits.ts";
import { isRunDirectory } from "../train/runfiles.ts";

/** Bounds of the servers' limit flags. */
const BODY_MAX = 2 ** 30;
const CONNECTIONS_MAX = 4096;

const USAGE = `usage:
  erl engine serve [--host 127.0.0.1] [--port 8765] [--token T] [--allow-remote]
                   [--max-body BYTES] [--header-timeout S] [--max-connections N]
      Serve the engine protocol over HTTP. The token comes from --token, else $ERL_ENGINE_TOKEN,
      else a random one is generated and printed. Clients connect with the URL and the token.
      Limits: an authorised request's body (default 268435456 bytes), the seconds a connection has
      to send its request head (default 30), connections served at once (default 32; a new one
      takes the slot of the oldest that has not sent an authorised request, else it gets 503).
  erl engine serve --openai --model <model-dir|run-dir> [--served-model-name NAME] [--host 127.0.0.1]
                   [--port 8000] [--token T] [--allow-remote] [--dtype auto|float32|bfloat16] [--device cpu|cuda|auto]
                   [--max-body BYTES] [--header-timeout S]
      Serve one model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
      /v1/models) with the same token rules. A run directory serves its newest checkpoint.
      Limits: a request's body (default 4194304 bytes), the seconds for its head (default 10).
  erl engine serve --tinker --model <model-dir> [--served-model-name NAME] [--host 127.0.0.1] [--port 8000]
                   [--token tml-…] [--allow-remote] [--store DIR] [--dtype …] [--device …]
      Serve the engine behind the Tinker API (the official \`tinker\` SDK, tinker-cookbook): LoRA
      training clients, forward_backward, optim_step, checkpoints as tinker:// paths under --store
      (default runs/tinker-store), sampling. Clients set TINKER_BASE_URL to the URL and TINKER_API_KEY
      to the token (it must start with tml-). Needs .venv-tinker (bash scripts/setup-tinker.sh).
  erl engine info --model <dir> [--dtype auto|float32|bfloat16] [--device cpu|cuda|auto]
      Load a model directory in a local engine and print versions, device, the dtype and threads it
      chose and why, parameter counts, memory. --dtype auto (the default) measures bf16 against fp32.`;

export async function run(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "--help" || sub === "-h") {
    console.log(USAGE);
    return sub ? 0 : 2;
  }
  if (sub === "serve") return serve(rest);
  if (sub === "info") return info(rest);
  throw new UserError(`unknown sub-command "${sub}"\n${USAGE}`);
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string" },
      token: { type: "string" },
      "allow-remote": { type: "boolean", default: false },
      openai: { type: "boolean", default: false },
      tinker: { type: "boolean", default: false },
      store: { type: "string" },
      model: { type: "string" },
      "served-model-name": { type: "string" },
      dtype: { type: "string" },
      device: { type: "string" },
      "max-body": { type: "string" },
      "header-timeout": { type: "string" },
      "max-connections": { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.openai && values.tinker)
    throw new UserError("--openai and --tinker are two different servers: pick one");
  if (!values.openai && !values.tinker)
    for (const k of ["model", "served-model-name", "dtype", "device"] as const)
      if (values[k] !== undefined)
        throw new UserError(`--${k} is only for \`erl engine serve --openai\` or \`--tinker\``);
  if (!values.tinker && values.store !== undefined)
    throw new UserError("--store is only for `erl engine serve --tinker`");
  if (values.tinker)
    for (const k of ["max-body", "header-timeout", "max-connections"] as const)
      if (values[k] !== undefined)
        throw new UserError(
          `--${k} is for the engine server and --openai, not --tinker (it keeps its own limits)`,
        );
  if (values.openai && values["max-connections"] !== undefined)
    throw new UserError(
      "--max-connections is only for the engine server (`erl engine serve` without --openai)",
    );
  const limits = serverLimits(values["max-body"], values["header-timeout"], values["max-connections"]);
  const port = Number(values.port ?? (values.openai || values.tinker ? "8000" : "8765"));
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new UserError(`--port must be an integer in 0..65535, got "${values.port}"`);
  let token = values.token ?? process.env.ERL_ENGINE_TOKEN;
  if (!token) {
    // The Tinker SDK sends only keys that start with "tml-".
    token = (values.tinker ? "tml-" : "") + randomBytes(24).toString("hex");
    console.log(`generated token: ${token}`);
  }
  if (values.tinker) return serveTinker({ ...values, port, token });
  if (values.openai)
    return serveOpenAI({
      host: values.host,
      port,
      token,
      allowRemote: values["allow-remote"],
      model: values.model,
      name: values["served-model-name"],
      dtype: values.dtype,
      device: values.device,
      limits,
    });
  const server = await spawnHttpEngine({
    host: values.host,
    port,
    token,
    allowRemote: values["allow-remote"],
    stderr: "inherit",
    ...limits,
  });
  console.log(`engine serving at ${server.url} (Ctrl-C to stop)`);
  const stop = () => void server.stop();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  await new Promise<void>((res) => server.child.on("exit", () => res()));
  return server.child.exitCode ?? 0;
}

async function serveTinker(o: {
  host: string;
  port: number;
  token: string;
  "allow-remote": boolean;
  model?: string;
  "served-model-name"?: string;
  store?: string;
  dtype?: string;
  device?: string;
}): Promise<number> {
  if (!o.model) throw new UserError("--model <model-dir> is required with --tinker");
  if (!existsSync(join(o.model, "config.json")))
    throw new UserError(`--model ${o.model}: not an HF model directory (no config.json)`);
  if (!o.token.startsWith("tml-"))
    throw new UserError("--token: the Tinker SDK sends only API keys that start with tml-; use such a token");
  const { isLoopback } = await import("../util/net.ts");
  if (!isLoopback(o.host) && !o["allow-remote"])
    throw new UserError(
      `refusing to listen on non-loopback address ${o.host} without --allow-remote (prefer an SSH tunnel to 127.0.0.1)`,
    );
  const { spawnTinkerServer } = await import("../engine/tinker.ts");
  const server = await spawnTinkerServer({
    model: o.model,
    ...(o["served-model-name"] ? { servedModelName: o["served-model-name"] } : {}),
    host: o.host,
    port: o.port,
    token: o.token,
    allowRemote: o["allow-remote"],
    ...(o.store ? { store: o.store } : {}),
    ...(checkDtype(o.dtype) ? { dtype: o.dtype } : {}),
    ...(checkDevice(o.device) ? { device: o.device } : {}),
    stderr: "inherit",
  });
  console.log(`Tinker API for "${o["served-model-name"] ?? o.model}" at ${server.url} (Ctrl-C to stop)`);
  const stop = () => void server.stop();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  await new Promise<void>((res) => server.child.on("exit", () => res()));
  return server.child.exitCode ?? 0;
}

/** The servers' limits from their flags, each checked against its bound (src/train/limits.ts). */
function serverLimits(
  maxBody: string | undefined,
  headerTimeout: string | undefined,
  maxConnections: string | undefined,
): { maxBody?: number; headerTimeout?: number; maxConnections?: number } {
  const out: { maxBody?: number; headerTimeout?: number; maxConnections?: number } = {};
  const where = {
    flags: { maxBody: "--max-body", headerTimeout: "--header-timeout", maxConnections: "--max-connections" },
  };
  if (maxBody !== undefined) {
    out.maxBody = numberFlag("--max-body", maxBody);
    checkInt(where, "maxBody", out.maxBody, 1, BODY_MAX, "a body is held in memory whole: 1 GiB at most");
  }
  if (headerTimeout !== undefined) {
    out.headerTimeout = numberFlag("--header-timeout", headerTimeout);
    if (!(out.headerTimeout >= 0.1 && out.headerTimeout <= 3600))
      throw new UserError(
        `--header-timeout must be a number of seconds from 0.1 to 3600, got "${headerTimeout}"`,
      );
  }
  if (maxConnections !== undefined) {
    out.maxConnections = numberFlag("--max-connections", maxConnections);
    checkInt(
      where,
      "maxConnections",
      out.maxConnections,
      1,
      CONNECTIONS_MAX,
      "each connection is a thread of the server",
    );
  }
  return out;
}

function numberFlag(flag: string, raw: string): number {
  const v = Number(raw);
  if (raw.trim() === "" || !Number.isFinite(v)) throw new UserError(`${flag} must be a number, got "${raw}"`);
  return v;
}

function checkDtype(v: string | undefined): "auto" | "float32" | "bfloat16" | undefined {
  if (v !== undefined && v !== "auto" && v !== "float32" && v !== "bfloat16")
    throw new UserError(`--dtype must be auto, float32 or bfloat16, got "${v}"`);
  return v;
}

function checkDevice(v: string | undefined): "cpu" | "cuda" | "auto" | undefined {
  if (v !== undefined && v !== "cpu" && v !== "cuda" && v !== "auto")
    throw new UserError(`--device must be cpu, cuda or auto, got "${v}"`);
  return v;
}

async function serveOpenAI(o: {
  host: string;
  port: number;
  token: string;
  allowRemote: boolean;
  model: string | undefined;
  name: string | undefined;
  dtype: string | undefined;
  device: string | undefined;
  limits: { maxBody?: number; headerTimeout?: number };
}): Promise<number> {
  if (!o.model) throw new UserError("--model <model-dir|run-dir> is required with --openai");
  const dtype = checkDtype(o.dtype);
  const device = checkDevice(o.device);
  const { startOpenAIServer } = await import("../serve/openai-server.ts");
  const { isLoopback } = await import("../util/net.ts");
  if (!isLoopback(o.host) && !o.allowRemote)
    throw new UserError(
      `refusing to listen on non-loopback address ${o.host} without --allow-remote (prefer an SSH tunnel to 127.0.0.1)`,
    );
  const dir = resolve(o.model);
  if (!existsSync(dir)) throw new UserError(`--model ${o.model}: no such directory`);
  const isRun = isRunDirectory(dir);
  const engine = await startEngine();
  try {
    let name = o.name ?? basename(dir);
    if (isRun) {
      const { loadRunForInference, loadModelRequest } = await import("../train/deps.ts");
      const run = await loadRunForInference(dir);
      if (dtype && dtype !== run.config.model.dtype)
        throw new UserError(
          `--dtype ${dtype}: the run was trained in ${run.config.model.dtype} and its checkpoint loads only so`,
        );
      // No KL reference: serving only samples.
      const { reference: _unused, ...req } = loadModelRequest(run.config, resolve(run.config.model.path));
      await engine.loadModel({ ...req, ...(device ? { device } : {}) });
      await engine.loadState(run.checkpoint);
      name = o.name ?? `${basename(dir)}@step-${run.step}`;
    } else {
      if (!existsSync(join(dir, "config.json")))
        throw new UserError(
          `--model ${o.model}: not an HF model directory (no config.json) nor a run directory`,
        );
      await engine.loadModel({ path: dir, dtype: dtype ?? "auto", device: device ?? "cpu", seed: 0 });
    }
    const server = await startOpenAIServer({
      engine,
      modelName: name,
      token: o.token,
      host: o.host,
      port: o.port,
      allowRemote: o.allowRemote,
      ...(o.limits.maxBody !== undefined ? { maxBodyBytes: o.limits.maxBody } : {}),
      ...(o.limits.headerTimeout !== undefined ? { headersTimeoutMs: o.limits.headerTimeout * 1000 } : {}),
    });
    console.log(`OpenAI-compatible API for "${name}" at ${server.url} (Ctrl-C to stop)`);
    await new Promise<void>((res) => {
      process.once("SIGINT", () => res());
      process.once("SIGTERM", () => res());
    });
    await server.close();
  } finally {
    await engine.close().catch(() => undefined);
  }
  return 0;
}

async function info(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      dtype: { type: "string", default: "auto" },
      device: { type: "string", default: "cpu" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (!values.model) throw new UserError("--model <dir> is required");
  const dtype = values.dtype;
  if (dtype !== "auto" && dtype !== "float32" && dtype !== "bfloat16")
    throw new UserError(`--dtype must be auto, float32 or bfloat16, got "${dtype}"`);
  const device = values.device;
  if (device !== "cpu" && device !== "cuda" && device !== "auto")
    throw new UserError(`--device must be cpu, cuda or auto, got "${device}"`);
  const engine = await startEngine();
  try {
    const result = await engine.loadModel({ path: values.model, dtype, device, seed: 0 });
    console.log(JSON.stringify(result, null, 2));
  } finally {
    await engine.close();
  }
  return 0;
}
