/**
 * `erl engine serve` runs the engine over HTTP (for a GPU box; bearer token required, loopback unless
 * --allow-remote); `erl engine info --model <dir>` loads a model in a local engine and prints its info.
 */
import { parseArgs } from "node:util";
import { randomBytes } from "node:crypto";
import { UserError } from "../util/errors.ts";
import { startEngine } from "../engine/client.ts";
import { spawnHttpEngine } from "../engine/serve.ts";

const USAGE = `usage:
  erl engine serve [--host 127.0.0.1] [--port 8765] [--token T] [--allow-remote]
      Serve the engine protocol over HTTP. The token comes from --token, else $ERL_ENGINE_TOKEN,
      else a random one is generated and printed. Clients connect with the URL and the token.
  erl engine info --model <dir> [--dtype float32|bfloat16] [--device cpu|cuda|auto]
      Load a model directory in a local engine and print versions, device, parameter counts, memory.`;

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
      port: { type: "string", default: "8765" },
      token: { type: "string" },
      "allow-remote": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw new UserError(`--port must be an integer in 0..65535, got "${values.port}"`);
  let token = values.token ?? process.env.ERL_ENGINE_TOKEN;
  if (!token) {
    token = randomBytes(24).toString("hex");
    console.log(`generated token: ${token}`);
  }
  const server = await spawnHttpEngine({
    host: values.host,
    port,
    token,
    allowRemote: values["allow-remote"],
    stderr: "inherit",
  });
  console.log(`engine serving at ${server.url} (Ctrl-C to stop)`);
  const stop = () => void server.stop();
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  await new Promise<void>((res) => server.child.on("exit", () => res()));
  return server.child.exitCode ?? 0;
}

async function info(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      dtype: { type: "string", default: "float32" },
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
  if (dtype !== "float32" && dtype !== "bfloat16")
    throw new UserError(`--dtype must be float32 or bfloat16, got "${dtype}"`);
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
