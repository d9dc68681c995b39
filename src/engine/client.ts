/**
 * The engine client: implements `Engine` (api.ts) over the wire protocol (protocol.ts), either by
 * starting the Python engine as a child process and talking over its stdio (local default), or by
 * calling a running engine over HTTP (`erl engine serve` on a GPU box).
 *
 *   const engine = await startEngine();                         // child process, stdio
 *   const engine = await connectEngine("http://127.0.0.1:8765", { token });
 *   const engine = await openEngine({ url, token });             // either, by whether `url` is set
 *
 * Both perform the protocol-version handshake before returning. If the child process dies, the
 * pending and later calls fail with an EngineError (code "engine_exited") quoting its last stderr lines.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { UserError } from "../util/errors.ts";
import { lineSplitter } from "../util/lines.ts";
import { REPO_ROOT, defaultPython } from "../util/paths.ts";
import type {
  AdamWConfig,
  ChatMessage,
  ChatRender,
  Datum,
  Engine,
  EngineInfo,
  ForwardBackwardResult,
  ScoreOptions,
  LoadModelRequest,
  LossConfig,
  SampledSequence,
  SampleRequest,
} from "./api.ts";
import {
  EngineError,
  PROTOCOL_VERSION,
  checkEnvelope,
  checkForward,
  checkForwardBackward,
  checkHello,
  checkIds,
  checkIdLists,
  checkInfo,
  checkOptimStep,
  checkSample,
  checkText,
  checkTexts,
  packF32,
  packIds,
  toErrorCode,
  type WireRequest,
} from "./protocol.ts";

/** How calls reach the engine. */
export interface Transport {
  /** Whether the engine shares this machine's file system (paths are then made absolute here). */
  readonly local: boolean;
  /** Sends one request; resolves with the raw (envelope-checked) answer's result. */
  call(method: string, params: Record<string, unknown>): Promise<unknown>;
  close(): Promise<void>;
}

export interface StdioEngineOptions {
  /** Python interpreter; default $ERL_PYTHON, else `<repo>/.venv/bin/python`. */
  python?: string;
  /** Extra environment for the engine process (e.g. ERL_ENGINE_MICROBATCH_TOKENS). */
  env?: Record<string, string>;
  /** How many of the engine's last stderr lines an "engine died" error quotes (default 20). */
  stderrLines?: number;
  /** Receives every stderr line of the engine (default: kept only for error messages). */
  onStderr?: (line: string) => void;
  /** Protocol version to speak; only tests set it, to check that a mismatch is refused. */
  protocolVersion?: number;
  /**
   * Engine ranks on this machine, launched with torchrun (default $ERL_ENGINE_RANKS, else 1). Rank 0
   * speaks the protocol; see docs/scaling.md.
   */
  ranks?: number;
  /** Command line after the interpreter (default: the engine server, see `engineArgs`). */
  args?: string[];
}

/** The engine's command line after the interpreter: one process, or `ranks` of them under torchrun. */
export function engineArgs(ranks: number): string[] {
  if (!Number.isInteger(ranks) || ranks < 1)
    throw new UserError(`engine ranks must be a positive integer, got ${ranks} (ERL_ENGINE_RANKS)`);
  if (ranks === 1) return ["-m", "erl_engine.server"];
  return [
    "-m",
    "torch.distributed.run",
    "--standalone",
    `--nproc-per-node=${ranks}`,
    "-m",
    "erl_engine.server",
  ];
}

export interface HttpEngineOptions {
  token: string;
  protocolVersion?: number;
}

class StdioTransport implements Transport {
  readonly local = true;
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { method: string; resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  private readonly stderrTail: string[] = [];
  private stderrPartial = "";
  private exitError: EngineError | undefined;
  private readonly exited: Promise<void>;

  constructor(
    private readonly child: ChildProcess,
    private readonly version: number,
    private readonly opts: StdioEngineOptions,
  ) {
    this.exited = new Promise((resolveExit) => {
      child.on("exit", (code, signal) => {
        this.onExit(code, signal);
        resolveExit();
      });
    });
    child.on("error", (err) => {
      this.exitError ??= new EngineError(
        "engine_exited",
        `could not start the engine process: ${err.message}`,
      );
      this.failAll(this.exitError);
    });
    child.stdout?.setEncoding("utf8");
    child.stdout?.on(
      "data",
      lineSplitter((line) => this.onLine(line)),
    );
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => this.onStderr(chunk));
    this.updateRef();
  }

  private onLine(line: string): void {
    let answer;
    try {
      answer = checkEnvelope(JSON.parse(line), this.version);
    } catch (e) {
      const err =
        e instanceof EngineError
          ? e
          : new EngineError(
              "bad_response",
              `the engine wrote a line that is not JSON: ${line.slice(0, 200)}`,
            );
      this.failAll(err);
      return;
    }
    // Answers come in request order; an id-less answer (unparseable request) belongs to the oldest call.
    const id = answer.id ?? this.pending.keys().next().value;
    if (id === undefined) return;
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    this.updateRef();
    if (answer.ok) p.resolve(answer.result);
    else p.reject(new EngineError(toErrorCode(answer.error.code), answer.error.message, p.method));
  }

  private onStderr(chunk: string): void {
    const text = this.stderrPartial + chunk;
    const lines = text.split("\n");
    this.stderrPartial = lines.pop() ?? "";
    for (const line of lines) {
      this.opts.onStderr?.(line);
      this.stderrTail.push(line);
      if (this.stderrTail.length > (this.opts.stderrLines ?? 20)) this.stderrTail.shift();
    }
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stderrPartial) this.onStderr("\n");
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const tail = this.stderrTail.length
      ? `; its last stderr lines:\n${this.stderrTail.map((l) => `  | ${l}`).join("\n")}`
      : " (it wrote nothing to stderr)";
    this.exitError ??= new EngineError("engine_exited", `the engine process ${how}${tail}`);
    this.failAll(this.exitError);
  }

  private failAll(err: EngineError): void {
    for (const [, p] of this.pending) p.reject(new EngineError(err.code, err.detail, p.method));
    this.pending.clear();
    this.updateRef();
  }

  /** The child keeps Node alive only while calls are in flight, so a forgotten close() cannot hang a
   * program; the engine then sees EOF on stdin when Node exits and stops by itself. */
  private updateRef(): void {
    const busy = this.pending.size > 0;
    const streams = [this.child.stdin, this.child.stdout, this.child.stderr] as unknown as ({
      ref?: () => void;
      unref?: () => void;
    } | null)[];
    if (busy) this.child.ref();
    else this.child.unref();
    for (const s of streams) (busy ? s?.ref : s?.unref)?.call(s);
  }

  call(method: string, params: Record<string, unknown>): Promise<unknown> {
    if (this.exitError)
      return Promise.reject(new EngineError(this.exitError.code, this.exitError.detail, method));
    const id = this.nextId++;
    const req: WireRequest = { v: this.version, id, method, params };
    return new Promise((resolveCall, rejectCall) => {
      this.pending.set(id, { method, resolve: resolveCall, reject: rejectCall });
      this.updateRef();
      this.child.stdin?.write(JSON.stringify(req) + "\n");
    });
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (!this.exitError) {
      try {
        await this.call("shutdown", {});
      } catch {
        // Already dying; fall through to the signals below.
      }
    }
    this.child.stdin?.end();
    this.child.ref();
    // Python's own teardown (torch, a process group) takes seconds on a loaded 2-core machine; a
    // signal sent too early turns a clean exit into a kill.
    const timer = setTimeout(() => this.child.kill("SIGTERM"), 20_000);
    const killer = setTimeout(() => this.child.kill("SIGKILL"), 30_000);
    await this.exited;
    clearTimeout(timer);
    clearTimeout(killer);
  }

  /** The last stderr lines (for diagnostics). */
  stderr(): string[] {
    return [...this.stderrTail];
  }
}

class HttpTransport implements Transport {
  readonly local = false;
  private nextId = 1;
  constructor(
    private readonly url: string,
    private readonly token: string,
    private readonly version: number,
  ) {}

  async call(method: string, params: Record<string, unknown>): Promise<unknown> {
    const req: WireRequest = { v: this.version, id: this.nextId++, method, params };
    let res: Response;
    try {
      res = await fetch(`${this.url}/v1/call`, {
        method: "POST",
        headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
        body: JSON.stringify(req),
      });
    } catch (e) {
      const cause = e instanceof Error && e.cause instanceof Error ? e.cause.message : String(e);
      throw new EngineError("unreachable", `cannot reach the engine at ${this.url} (${cause})`, method);
    }
    const text = await res.text();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new EngineError(
        "bad_response",
        `HTTP ${res.status} with a body that is not JSON: ${text.slice(0, 200)}`,
        method,
      );
    }
    const answer = checkEnvelope(body, this.version);
    if (!answer.ok) throw new EngineError(toErrorCode(answer.error.code), answer.error.message, method);
    return answer.result;
  }

  async close(): Promise<void> {
    // A remote engine is shared and outlives its clients: nothing to stop.
  }
}

function datumToWire(d: Datum): Record<string, unknown> {
  const w: Record<string, unknown> = {
    inputIds: packIds(d.inputIds),
    targetIds: packIds(d.targetIds),
    weights: packF32(d.weights),
  };
  if (d.advantages) w.advantages = packF32(d.advantages);
  if (d.oldLogprobs) w.oldLogprobs = packF32(d.oldLogprobs);
  if (d.samplerLogprobs) w.samplerLogprobs = packF32(d.samplerLogprobs);
  return w;
}

/** `Engine` over any transport. */
export class EngineClient implements Engine {
  constructor(readonly transport: Transport) {}

  /** Paths are the engine's: made absolute against this process's cwd only for a local engine. */
  private path(p: string): string {
    return this.transport.local ? resolve(p) : p;
  }

  async info(): Promise<EngineInfo> {
    return checkInfo(await this.transport.call("info", {}));
  }

  async loadModel(req: LoadModelRequest): Promise<EngineInfo> {
    const params: Record<string, unknown> = { ...req };
    if (req.path) params.path = this.path(req.path);
    if (req.randomInit)
      params.randomInit = { ...req.randomInit, tokenizerPath: this.path(req.randomInit.tokenizerPath) };
    return checkInfo(await this.transport.call("loadModel", params));
  }

  async renderChat(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): Promise<number[]> {
    const params = { messages, addGenerationPrompt: opts?.addGenerationPrompt ?? false };
    return checkIds(await this.transport.call("renderChat", params));
  }

  async renderChats(chats: ChatRender[]): Promise<number[][]> {
    const params = {
      chats: chats.map((c) => ({
        messages: c.messages,
        addGenerationPrompt: c.addGenerationPrompt ?? false,
      })),
    };
    return checkIdLists(await this.transport.call("renderChats", params), chats.length);
  }

  async decodeMany(seqs: number[][], opts?: { skipSpecialTokens?: boolean }): Promise<string[]> {
    const params = { seqs: seqs.map(packIds), skipSpecialTokens: opts?.skipSpecialTokens ?? false };
    return checkTexts(await this.transport.call("decodeMany", params), seqs.length);
  }

  async encode(text: string, opts?: { addSpecialTokens?: boolean }): Promise<number[]> {
    return checkIds(
      await this.transport.call("encode", { text, addSpecialTokens: opts?.addSpecialTokens ?? false }),
    );
  }

  async decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): Promise<string> {
    const params = { ids: packIds(ids), skipSpecialTokens: opts?.skipSpecialTokens ?? false };
    return checkText(await this.transport.call("decode", params));
  }

  async sample(req: SampleRequest): Promise<SampledSequence[]> {
    const params: Record<string, unknown> = { ...req, prompts: req.prompts.map(packIds) };
    if (req.stopTokenIds) params.stopTokenIds = packIds(req.stopTokenIds);
    return checkSample(await this.transport.call("sample", params));
  }

  async forward(datums: Datum[], opts?: ScoreOptions & { temperature?: number }): Promise<number[][]> {
    const params: Record<string, unknown> = { datums: datums.map(datumToWire) };
    if (opts?.temperature !== undefined && opts.temperature !== 1) params.temperature = opts.temperature;
    if (opts?.pack) params.pack = true;
    const result = await this.transport.call("forward", params);
    return checkForward(
      result,
      datums.map((d) => d.targetIds.length),
    );
  }

  async forwardBackward(
    datums: Datum[],
    loss: LossConfig,
    opts?: ScoreOptions,
  ): Promise<ForwardBackwardResult> {
    const params = { datums: datums.map(datumToWire), loss, ...(opts?.pack ? { pack: true } : {}) };
    return checkForwardBackward(await this.transport.call("forwardBackward", params));
  }

  async optimStep(cfg: AdamWConfig): Promise<{ gradNorm: number; metrics: Record<string, number> }> {
    return checkOptimStep(await this.transport.call("optimStep", { ...cfg }));
  }

  async saveState(dir: string): Promise<void> {
    await this.transport.call("saveState", { dir: this.path(dir) });
  }

  async loadState(dir: string): Promise<void> {
    await this.transport.call("loadState", { dir: this.path(dir) });
  }

  async export(dir: string, opts?: { mergeLora?: boolean }): Promise<void> {
    await this.transport.call("export", { dir: this.path(dir), mergeLora: opts?.mergeLora ?? false });
  }

  async close(): Promise<void> {
    await this.transport.close();
  }
}

async function handshake(client: EngineClient, version: number): Promise<void> {
  const hello = checkHello(
    await client.transport.call("hello", { protocolVersion: version, client: "erl-ts" }),
  );
  if (hello.protocolVersion !== version)
    throw new EngineError(
      "protocol_version",
      `the engine speaks protocol version ${hello.protocolVersion} but this client speaks version ${version}`,
    );
}

/** Starts the engine as a child process (stdio transport) and completes the handshake. */
export async function startEngine(opts: StdioEngineOptions = {}): Promise<EngineClient> {
  const python = opts.python ?? defaultPython();
  if (python.includes("/") && !existsSync(python))
    throw new UserError(
      `Python interpreter not found at ${python}: run \`bash scripts/setup.sh\`, or set ERL_PYTHON to a Python with torch and transformers`,
    );
  const engineDir = join(REPO_ROOT, "engine");
  const env: Record<string, string | undefined> = {
    ...process.env,
    PYTHONPATH: process.env.PYTHONPATH ? `${engineDir}:${process.env.PYTHONPATH}` : engineDir,
    PYTHONUNBUFFERED: "1",
    HF_HUB_OFFLINE: "1",
    TRANSFORMERS_OFFLINE: "1",
    ...opts.env,
  };
  const ranks = opts.ranks ?? Number(process.env.ERL_ENGINE_RANKS || "1");
  const child = spawn(python, opts.args ?? engineArgs(ranks), {
    cwd: REPO_ROOT,
    env,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const version = opts.protocolVersion ?? PROTOCOL_VERSION;
  const transport = new StdioTransport(child, version, opts);
  const client = new EngineClient(transport);
  try {
    await handshake(client, version);
  } catch (e) {
    await transport.close().catch(() => undefined);
    // Its last stderr lines may still be in the pipe when the exit is seen.
    const err = child.stderr;
    if (err && !err.closed)
      await new Promise((r) => {
        const t = setTimeout(r, 2000);
        err.once("close", () => (clearTimeout(t), r(null)));
      });
    throw missingPackage(e, transport.stderr(), python, opts.python !== undefined) ?? e;
  }
  return client;
}

/**
 * An engine that could not start because its Python lacks a package (ERL_PYTHON pointing at a system
 * Python, say): one line naming the interpreter, where it came from and the missing module, instead
 * of the import's traceback.
 */
function missingPackage(
  e: unknown,
  stderr: readonly string[],
  python: string,
  given: boolean,
): UserError | null {
  if (!(e instanceof EngineError) || e.code !== "engine_exited") return null;
  const missing = stderr
    .map((l) => /^(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'/.exec(l.trim())?.[1])
    .find((m) => m !== undefined);
  if (!missing) return null;
  const from = given ? "engine.python" : process.env.ERL_PYTHON ? "ERL_PYTHON" : "the project's .venv";
  return new UserError(
    `${from} (${python}) has no module named '${missing}': the engine needs torch, transformers and numpy; ` +
      "point it at the project's .venv/bin/python (made by `bash scripts/setup.sh`) or a Python with those packages",
  );
}

/** Connects to a running engine over HTTP (`erl engine serve`) and completes the handshake. */
export async function connectEngine(url: string, opts: HttpEngineOptions): Promise<EngineClient> {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UserError(`engine URL is not a valid URL: ${url}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:")
    throw new UserError(`engine URL must start with http:// or https://, got ${url}`);
  const version = opts.protocolVersion ?? PROTOCOL_VERSION;
  const client = new EngineClient(new HttpTransport(url.replace(/\/+$/, ""), opts.token, version));
  await handshake(client, version);
  return client;
}

/** An engine from a URL (HTTP) when one is given, else a local child process. */
export async function openEngine(
  opts: { url?: string; token?: string } & StdioEngineOptions = {},
): Promise<EngineClient> {
  if (opts.url) {
    const token = opts.token ?? process.env.ERL_ENGINE_TOKEN;
    if (!token)
      throw new UserError(
        `engine.url ${opts.url}: a remote engine needs a bearer token; set ERL_ENGINE_TOKEN to the token \`erl engine serve\` printed`,
      );
    return connectEngine(opts.url, { token, protocolVersion: opts.protocolVersion });
  }
  return startEngine(opts);
}
