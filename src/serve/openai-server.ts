/**
 * An OpenAI-compatible HTTP front for the engine (`erl engine serve --openai`): `/v1/chat/completions`
 * (plain and streamed, with log-probs), `/v1/completions` and `/v1/models`, for one loaded model.
 *
 * It lives on the TypeScript side, over the engine client, because chat rendering, decoding and
 * request validation already live there (docs/decisions/0014-openai-server-in-typescript.md). It speaks
 * to the engine through the `Engine` interface only: a local child process or a remote engine.
 *
 * Safety, as for the engine's own HTTP server: a bearer token on every request, checked before any
 * body byte is read; loopback only unless `allowRemote`; a cap on the body size (counted while
 * reading, whatever Content-Length says); a cap on requests in flight (429 beyond it); and time
 * limits on slow headers and bodies. Errors use OpenAI's body shape:
 * `{"error": {"message", "type", "param", "code"}}`.
 *
 * What differs from OpenAI's service (docs/engine.md#openai-compatible-server): only the sampled
 * token's log-prob exists (`top_logprobs` and completions `logprobs` > 0 are refused, not faked);
 * a stream is sent once the engine has sampled the whole reply (the engine protocol has no token
 * streaming), in one chunk per token; tools, response formats, penalties and logit biases are refused.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { randomBytes, timingSafeEqual } from "node:crypto";
import type { ChatMessage, Engine, SampledSequence } from "../engine/api.ts";
import { UserError } from "../util/errors.ts";
import { ownEntry } from "../util/own.ts";
import { isLoopback } from "../util/net.ts";

export interface OpenAIServerOptions {
  engine: Engine;
  /** The name clients pass as `model` (and `/v1/models` lists). */
  modelName: string;
  token: string;
  host: string;
  /** 0 picks a free port. */
  port: number;
  allowRemote?: boolean;
  /** Largest request body in bytes (default 4 MiB). */
  maxBodyBytes?: number;
  /** Requests handled at once; more get 429 (default 8). */
  maxConcurrent?: number;
  /** Milliseconds allowed for a request's headers and body to arrive (default 30 s). */
  requestTimeoutMs?: number;
  /** Milliseconds allowed for a request's headers (default 10 s, at most `requestTimeoutMs`). */
  headersTimeoutMs?: number;
  /** Unix time of `/v1/models`' `created` (default: start time). */
  created?: number;
}

export interface OpenAIServerHandle {
  url: string;
  server: Server;
  close(): Promise<void>;
}

/** An error answered to the client in OpenAI's shape. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

const bad = (message: string, param: string | null = null, code: string | null = null) =>
  new ApiError(400, message, "invalid_request_error", param, code);

function sendJson(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    "Content-Type": "application/json",
    "Content-Length": String(data.length),
    ...extra,
  });
  res.end(data);
}

function sendError(res: ServerResponse, e: ApiError): void {
  if (res.headersSent) {
    // Mid-stream: report in-band, as OpenAI-compatible servers do, and end the stream.
    res.end(`data: ${JSON.stringify({ error: errorBody(e).error })}\n\n`);
    return;
  }
  const extra: Record<string, string> =
    e.status === 401 ? { "WWW-Authenticate": "Bearer" } : e.status === 429 ? { "Retry-After": "2" } : {};
  sendJson(res, e.status, errorBody(e), extra);
}

function errorBody(e: ApiError) {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** Reads the body, failing with 413 as soon as it passes `limit` bytes. */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolveBody, reject) => {
    const declared = Number(req.headers["content-length"] ?? NaN);
    if (Number.isFinite(declared) && declared > limit) {
      reject(new ApiError(413, `request body too large (${declared} bytes; the limit is ${limit})`));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        req.pause();
        reject(new ApiError(413, `request body too large (over ${limit} bytes)`));
        return;
      }
      chunks.push(c);
    });
    req.on("end", () => resolveBody(Buffer.concat(chunks)));
    req.on("error", (e) => reject(new ApiError(400, `could not read the request body: ${e.message}`)));
  });
}

// ---------------------------------------------------------------------------------------------
// Request validation (OpenAI's field names; an unknown or unsupported field is a 400 naming it)

type Json = Record<string, unknown>;

const IGNORED = new Set(["user", "store", "metadata", "service_tier", "parallel_tool_calls", "modalities"]);

function checkKeys(body: Json, allowed: readonly string[]): void {
  for (const k of Object.keys(body)) {
    if (allowed.includes(k) || IGNORED.has(k)) continue;
    throw bad(`unsupported or unknown parameter: ${k}`, k, "unsupported_parameter");
  }
}

function optNumber(body: Json, key: string, lo: number, hi: number, int = false): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v < lo || v > hi || (int && !Number.isInteger(v)))
    throw bad(
      `${key} must be ${int ? "an integer" : "a number"} in [${lo}, ${hi}], got ${JSON.stringify(v)}`,
      key,
    );
  return v;
}

function zeroOnly(body: Json, key: string): void {
  const v = body[key];
  if (v === undefined || v === null || v === 0) return;
  throw bad(`${key} is not supported by this server (only 0)`, key, "unsupported_parameter");
}

function stopList(body: Json): string[] {
  const v = body.stop;
  if (v === undefined || v === null) return [];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || list.length > 4 || list.some((s) => typeof s !== "string" || s === ""))
    throw bad("stop must be a non-empty string or an array of at most 4 non-empty strings", "stop");
  return list as string[];
}

interface Common {
  n: number;
  maxTokens: number | undefined;
  temperature: number;
  topP: number | undefined;
  topK: number | undefined;
  seed: number;
  stop: string[];
  stream: boolean;
  includeUsage: boolean;
}

const COMMON_KEYS = [
  "model",
  "n",
  "max_tokens",
  "temperature",
  "top_p",
  "top_k",
  "seed",
  "stop",
  "stream",
  "stream_options",
  "presence_penalty",
  "frequency_penalty",
  "logit_bias",
];

function common(body: Json, maxTokensKey: "max_tokens" | "max_completion_tokens"): Common {
  zeroOnly(body, "presence_penalty");
  zeroOnly(body, "frequency_penalty");
  const lb = body.logit_bias;
  if (lb !== undefined && lb !== null && (typeof lb !== "object" || Object.keys(lb).length > 0))
    throw bad("logit_bias is not supported by this server", "logit_bias", "unsupported_parameter");
  const stream = body.stream === undefined || body.stream === null ? false : body.stream;
  if (typeof stream !== "boolean") throw bad("stream must be true or false", "stream");
  const so = body.stream_options;
  let includeUsage = false;
  if (so !== undefined && so !== null) {
    if (!stream) throw bad("stream_options is only allowed with stream: true", "stream_options");
    if (typeof so !== "object" || Array.isArray(so))
      throw bad("stream_options must be an object", "stream_options");
    for (const k of Object.keys(so))
      if (k !== "include_usage") throw bad(`unknown stream_options field: ${k}`, `stream_options.${k}`);
    const iu = (so as Json).include_usage;
    if (iu !== undefined && typeof iu !== "boolean")
      throw bad("stream_options.include_usage must be true or false", "stream_options.include_usage");
    includeUsage = iu === true;
  }
  const maxTokens =
    optNumber(body, maxTokensKey, 1, 1e9, true) ??
    (maxTokensKey === "max_completion_tokens" ? optNumber(body, "max_tokens", 1, 1e9, true) : undefined);
  const seed = optNumber(body, "seed", -(2 ** 53), 2 ** 53, true);
  return {
    n: optNumber(body, "n", 1, 64, true) ?? 1,
    maxTokens,
    temperature: optNumber(body, "temperature", 0, 2) ?? 1,
    topP: optNumber(body, "top_p", 0, 1),
    topK: optNumber(body, "top_k", -1, 1e9, true),
    // The engine's seeds are non-negative 32-bit; a request without one gets a fresh random seed.
    seed: seed === undefined ? randomBytes(4).readUInt32LE(0) : ((seed % 2 ** 32) + 2 ** 32) % 2 ** 32,
    stop: stopList(body),
    stream,
    includeUsage,
  };
}

const ROLES = new Set(["system", "user", "assistant", "tool", "developer"]);

function chatMessages(body: Json): ChatMessage[] {
  const msgs = body.messages;
  if (!Array.isArray(msgs) || msgs.length === 0)
    throw bad("messages must be a non-empty array of {role, content}", "messages");
  return msgs.map((m, i): ChatMessage => {
    const at = `messages[${i}]`;
    if (typeof m !== "object" || m === null || Array.isArray(m)) throw bad(`${at} must be an object`, at);
    const { role, content } = m as Json;
    if (typeof role !== "string" || !ROLES.has(role))
      throw bad(
        `${at}.role must be one of system, developer, user, assistant, tool; got ${JSON.stringify(role)}`,
        `${at}.role`,
      );
    let text: string;
    if (typeof content === "string") text = content;
    else if (Array.isArray(content)) {
      // Text parts only: this server has no image or audio input.
      text = content
        .map((p, j) => {
          const part = p as Json;
          if (
            typeof part !== "object" ||
            part === null ||
            part.type !== "text" ||
            typeof part.text !== "string"
          )
            throw bad(
              `${at}.content[${j}]: only {"type": "text", "text": ...} parts are supported`,
              `${at}.content`,
            );
          return part.text;
        })
        .join("");
    } else if (content === null || content === undefined) text = "";
    else throw bad(`${at}.content must be a string or an array of text parts`, `${at}.content`);
    // "developer" is OpenAI's newer name for the system role.
    return { role: role === "developer" ? "system" : (role as ChatMessage["role"]), content: text };
  });
}

// ---------------------------------------------------------------------------------------------
// Generation

interface Choice {
  index: number;
  tokens: number[];
  logprobs: number[];
  text: string;
  /** Per-token text (each token decoded alone), for log-prob entries. */
  tokenTexts: string[];
  finish: "stop" | "length";
}

/** Cuts a reply at the first stop string (OpenAI leaves the stop string out of the text). */
function applyStop(text: string, stops: readonly string[]): { text: string; stopped: boolean } {
  let cut = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (cut < 0 || i < cut)) cut = i;
  }
  return cut < 0 ? { text, stopped: false } : { text: text.slice(0, cut), stopped: true };
}

class Generator {
  private info: { eos: number[]; maxPositions: number } | null = null;
  constructor(private readonly engine: Engine) {}

  async model(): Promise<{ eos: number[]; maxPositions: number }> {
    if (!this.info) {
      const info = await this.engine.info();
      if (!info.model) throw new ApiError(503, "the engine has no model loaded", "server_error");
      this.info = { eos: info.model.eosTokenIds, maxPositions: info.model.maxPositions ?? 1 << 30 };
    }
    return this.info;
  }

  async generate(prompt: number[], c: Common, param: string): Promise<Choice[]> {
    const { eos, maxPositions } = await this.model();
    const room = maxPositions - prompt.length;
    if (room < 1)
      throw bad(
        `the prompt is ${prompt.length} tokens; the model's context is ${maxPositions}`,
        param,
        "context_length_exceeded",
      );
    if (c.maxTokens !== undefined && c.maxTokens > room)
      throw bad(
        `the prompt (${prompt.length} tokens) plus max_tokens (${c.maxTokens}) exceeds the model's context of ${maxPositions}`,
        "max_tokens",
        "context_length_exceeded",
      );
    const seqs: SampledSequence[] = await this.engine.sample({
      prompts: [prompt],
      n: c.n,
      maxTokens: c.maxTokens ?? room,
      temperature: c.temperature,
      ...(c.topP !== undefined && c.topP < 1 ? { topP: c.topP } : {}),
      ...(c.topK !== undefined && c.topK > 0 ? { topK: c.topK } : {}),
      ...(c.stop.length > 0 ? { stopStrings: c.stop } : {}),
      stopTokenIds: eos,
      seed: c.seed,
    });
    const eosSet = new Set(eos);
    return Promise.all(
      seqs.map(async (s, index): Promise<Choice> => {
        // The end-of-turn token ends the reply but is not part of its text or its log-probs.
        let tokens = s.tokens;
        let logprobs = s.logprobs;
        const endedByEos = tokens.length > 0 && eosSet.has(tokens[tokens.length - 1]!);
        if (endedByEos) {
          tokens = tokens.slice(0, -1);
          logprobs = logprobs.slice(0, -1);
        }
        const full = await this.engine.decode(tokens, { skipSpecialTokens: true });
        const { text, stopped } = applyStop(full, c.stop);
        const tokenTexts = await Promise.all(
          tokens.map((t) => this.engine.decode([t], { skipSpecialTokens: true })),
        );
        if (stopped) {
          // Keep the tokens whose text starts before the cut.
          let at = 0;
          let keep = 0;
          while (keep < tokens.length && at < text.length) at += tokenTexts[keep++]!.length;
          tokens = tokens.slice(0, keep);
          logprobs = logprobs.slice(0, keep);
          tokenTexts.length = keep;
        }
        const finish = endedByEos || stopped || s.stopReason === "stop" ? "stop" : "length";
        return { index, tokens, logprobs, text, tokenTexts, finish };
      }),
    );
  }

  /** Text deltas per token whose concatenation is the choice's text (prefix decoding). */
  async deltas(choice: Choice): Promise<string[]> {
    const out: string[] = [];
    let prev = "";
    for (let i = 1; i <= choice.tokens.length; i++) {
      let cur = await this.engine.decode(choice.tokens.slice(0, i), { skipSpecialTokens: true });
      if (cur.length > choice.text.length) cur = choice.text;
      // A token that ends inside a multi-byte character decodes to U+FFFD: wait for the rest.
      if (cur.endsWith("\uFFFD") && i < choice.tokens.length) {
        out.push("");
        continue;
      }
      out.push(cur.startsWith(prev) ? cur.slice(prev.length) : "");
      prev = cur.startsWith(prev) ? cur : prev;
    }
    // Whatever prefix decoding could not attribute goes with the last token.
    if (prev.length < choice.text.length) {
      if (out.length === 0) out.push(choice.text);
      else out[out.length - 1] += choice.text.slice(prev.length);
    }
    return out;
  }
}

function chatLogprobs(choice: Choice, from = 0, to = choice.tokens.length) {
  return {
    content: choice.tokens.slice(from, to).map((_, k) => {
      const i = from + k;
      const token = choice.tokenTexts[i]!;
      return {
        token,
        logprob: choice.logprobs[i]!,
        bytes: [...Buffer.from(token, "utf8")],
        top_logprobs: [],
      };
    }),
    refusal: null,
  };
}

function completionLogprobs(choice: Choice, offset = 0) {
  const textOffset: number[] = [];
  let at = offset;
  for (const t of choice.tokenTexts) {
    textOffset.push(at);
    at += t.length;
  }
  return {
    tokens: choice.tokenTexts,
    token_logprobs: choice.logprobs,
    top_logprobs: null,
    text_offset: textOffset,
  };
}

// ---------------------------------------------------------------------------------------------
// The server

/** What the route handlers share: the engine, the served model's name, the generator. */
interface Served {
  engine: Engine;
  modelName: string;
  created: number;
  gen: Generator;
}

/** The model a request names must be the one this server serves. */
function checkModel(s: Served, body: Json): void {
  if (typeof body.model !== "string" || body.model === "") throw bad("model is required", "model");
  if (body.model !== s.modelName)
    throw new ApiError(
      404,
      `The model \`${body.model}\` does not exist; this server serves \`${s.modelName}\``,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
}

const newId = (prefix: string) => `${prefix}-${randomBytes(12).toString("hex")}`;
const now = () => Math.floor(Date.now() / 1000);

const usage = (prompt: number[], choices: Choice[]) => {
  const completion = choices.reduce((a, c) => a + c.tokens.length, 0);
  return {
    prompt_tokens: prompt.length,
    completion_tokens: completion,
    total_tokens: prompt.length + completion,
  };
};

const startStream = (res: ServerResponse): void => {
  res.writeHead(200, {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    Connection: "keep-alive",
  });
};
const event = (res: ServerResponse, data: unknown): void => {
  res.write(`data: ${JSON.stringify(data)}\n\n`);
};

/** The request body as a JSON object (400 otherwise; 413 past `limit` bytes). */
async function readJsonBody(req: IncomingMessage, limit: number): Promise<Json> {
  const raw = await readBody(req, limit);
  let body: unknown;
  try {
    body = JSON.parse(raw.toString("utf8"));
  } catch (e) {
    throw bad(`the request body is not valid JSON (${(e as Error).message})`);
  }
  if (typeof body !== "object" || body === null || Array.isArray(body))
    throw bad("the request body must be a JSON object");
  return body as Json;
}

/** POST /v1/chat/completions */
async function chatCompletions(s: Served, body: Json, res: ServerResponse): Promise<void> {
  checkKeys(body, [...COMMON_KEYS, "messages", "logprobs", "top_logprobs", "max_completion_tokens"]);
  checkModel(s, body);
  const messages = chatMessages(body);
  const c = common(body, "max_completion_tokens");
  const lp = body.logprobs ?? false;
  if (typeof lp !== "boolean") throw bad("logprobs must be true or false", "logprobs");
  const top = optNumber(body, "top_logprobs", 0, 20, true) ?? 0;
  if (top > 0)
    throw bad(
      "top_logprobs > 0 is not supported: this server reports only the sampled token's log-prob",
      "top_logprobs",
      "unsupported_parameter",
    );
  if (messages[messages.length - 1]!.role === "assistant")
    throw bad("the last message is the assistant's: continuing a reply is not supported", "messages");
  const prompt = await s.engine.renderChat(messages, { addGenerationPrompt: true });
  const choices = await s.gen.generate(prompt, c, "messages");
  const base = { id: newId("chatcmpl"), created: now(), model: s.modelName, system_fingerprint: null };
  if (!c.stream) {
    sendJson(res, 200, {
      ...base,
      object: "chat.completion",
      choices: choices.map((ch) => ({
        index: ch.index,
        message: { role: "assistant", content: ch.text, refusal: null },
        logprobs: lp ? chatLogprobs(ch) : null,
        finish_reason: ch.finish,
      })),
      usage: usage(prompt, choices),
    });
    return;
  }
  startStream(res);
  const chunk = (choices: unknown[], extra: Json = {}) => ({
    ...base,
    object: "chat.completion.chunk",
    choices,
    ...extra,
  });
  for (const ch of choices) {
    event(
      res,
      chunk([
        { index: ch.index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null },
      ]),
    );
    const deltas = await s.gen.deltas(ch);
    deltas.forEach((d, i) =>
      event(
        res,
        chunk([
          {
            index: ch.index,
            delta: { content: d },
            logprobs: lp ? chatLogprobs(ch, i, i + 1) : null,
            finish_reason: null,
          },
        ]),
      ),
    );
    event(res, chunk([{ index: ch.index, delta: {}, logprobs: null, finish_reason: ch.finish }]));
  }
  if (c.includeUsage) event(res, chunk([], { usage: usage(prompt, choices) }));
  res.end("data: [DONE]\n\n");
}

/** POST /v1/completions */
async function completions(s: Served, body: Json, res: ServerResponse): Promise<void> {
  checkKeys(body, [...COMMON_KEYS, "prompt", "logprobs", "echo", "best_of", "suffix"]);
  checkModel(s, body);
  if (body.echo !== undefined && body.echo !== null && body.echo !== false)
    throw bad("echo is not supported by this server", "echo", "unsupported_parameter");
  if (body.suffix !== undefined && body.suffix !== null)
    throw bad("suffix is not supported by this server", "suffix", "unsupported_parameter");
  const bestOf = optNumber(body, "best_of", 1, 64, true);
  if (bestOf !== undefined && bestOf !== 1)
    throw bad("best_of other than 1 is not supported by this server", "best_of", "unsupported_parameter");
  const c = common(body, "max_tokens");
  const lp = optNumber(body, "logprobs", 0, 5, true);
  if (lp !== undefined && lp > 0)
    throw bad(
      "logprobs > 0 asks for alternative tokens, which this server does not report; use logprobs: 0 for the sampled tokens' log-probs",
      "logprobs",
      "unsupported_parameter",
    );
  const p = body.prompt;
  let prompt: number[];
  if (typeof p === "string") prompt = await s.engine.encode(p, { addSpecialTokens: true });
  else if (Array.isArray(p) && p.length > 0 && p.every((t) => Number.isInteger(t) && (t as number) >= 0))
    prompt = p as number[];
  else if (Array.isArray(p) && p.length === 1 && typeof p[0] === "string")
    prompt = await s.engine.encode(p[0], { addSpecialTokens: true });
  else
    throw bad(
      "prompt must be a string or an array of token ids (batches of several prompts are not supported)",
      "prompt",
    );
  if (prompt.length === 0) throw bad("prompt is empty", "prompt");
  const choices = await s.gen.generate(prompt, c, "prompt");
  const base = { id: newId("cmpl"), created: now(), model: s.modelName, system_fingerprint: null };
  if (!c.stream) {
    sendJson(res, 200, {
      ...base,
      object: "text_completion",
      choices: choices.map((ch) => ({
        index: ch.index,
        text: ch.text,
        logprobs: lp !== undefined ? completionLogprobs(ch) : null,
        finish_reason: ch.finish,
      })),
      usage: usage(prompt, choices),
    });
    return;
  }
  startStream(res);
  for (const ch of choices) {
    const deltas = await s.gen.deltas(ch);
    let offset = 0;
    deltas.forEach((d, i) => {
      const one = {
        ...ch,
        tokens: [ch.tokens[i]!],
        logprobs: [ch.logprobs[i]!],
        tokenTexts: [ch.tokenTexts[i]!],
      };
      event(res, {
        ...base,
        object: "text_completion",
        choices: [
          {
            index: ch.index,
            text: d,
            logprobs: lp !== undefined ? completionLogprobs(one, offset) : null,
            finish_reason: null,
          },
        ],
      });
      offset += ch.tokenTexts[i]!.length;
    });
    event(res, {
      ...base,
      object: "text_completion",
      choices: [{ index: ch.index, text: "", logprobs: null, finish_reason: ch.finish }],
    });
  }
  if (c.includeUsage)
    event(res, { ...base, object: "text_completion", choices: [], usage: usage(prompt, choices) });
  res.end("data: [DONE]\n\n");
}

/** GET /v1/models: the one served model. */
const listModels = (s: Served) => ({
  object: "list",
  data: [{ id: s.modelName, object: "model", created: s.created, owned_by: "erl" }],
});

/** GET /v1/models/<id>: the served model, or a 404 naming the asked one. */
function getModel(s: Served, path: string): unknown {
  const name = decodeURIComponent(path.slice("/v1/models/".length));
  if (name === s.modelName) return listModels(s).data[0];
  throw new ApiError(
    404,
    `The model \`${name}\` does not exist`,
    "invalid_request_error",
    "model",
    "model_not_found",
  );
}

/** The routes: GET answers from state, POST reads a JSON body (counted against the concurrency limit). */
const GET_ROUTES: Record<string, (s: Served, path: string) => unknown> = {
  "/v1/models": listModels,
  "/v1/health": () => ({ ok: true }),
  "/health": () => ({ ok: true }),
};
const POST_ROUTES: Record<string, (s: Served, body: Json, res: ServerResponse) => Promise<void>> = {
  "/v1/chat/completions": chatCompletions,
  "/v1/completions": completions,
};

export async function startOpenAIServer(opts: OpenAIServerOptions): Promise<OpenAIServerHandle> {
  if (!opts.token) throw new UserError("the OpenAI-compatible server needs a bearer token");
  if (!isLoopback(opts.host) && !opts.allowRemote)
    throw new UserError(
      `refusing to listen on non-loopback address ${opts.host} without --allow-remote (prefer an SSH tunnel to 127.0.0.1)`,
    );
  const maxBody = opts.maxBodyBytes ?? 4 << 20;
  const maxConcurrent = opts.maxConcurrent ?? 8;
  const created = opts.created ?? Math.floor(Date.now() / 1000);
  const expected = Buffer.from(`Bearer ${opts.token}`);
  const served: Served = {
    engine: opts.engine,
    modelName: opts.modelName,
    created,
    gen: new Generator(opts.engine),
  };
  let inFlight = 0;

  const authorised = (req: IncomingMessage): boolean => {
    const got = Buffer.from(req.headers.authorization ?? "");
    return got.length === expected.length && timingSafeEqual(got, expected);
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0]!;
    // The token first: nothing of an unauthenticated request's body is read.
    if (!authorised(req)) {
      res.setHeader("Connection", "close");
      throw new ApiError(
        401,
        "missing or wrong bearer token (Authorization: Bearer <token>)",
        "invalid_request_error",
        null,
        "invalid_api_key",
      );
    }
    if (req.method === "GET") {
      const get = ownEntry(GET_ROUTES, path) ?? (path.startsWith("/v1/models/") ? getModel : undefined);
      if (get) return sendJson(res, 200, get(served, path));
    }
    const route = ownEntry(POST_ROUTES, path);
    if (!route) {
      const known = path === "/v1/models" || Object.hasOwn(POST_ROUTES, path);
      throw new ApiError(
        known ? 405 : 404,
        `${known ? "method not allowed" : "no such endpoint"}: ${req.method} ${path}`,
      );
    }
    if (req.method !== "POST")
      throw new ApiError(405, `method not allowed: ${req.method} ${path} (use POST)`);
    if (inFlight >= maxConcurrent)
      throw new ApiError(
        429,
        `the server is busy (${maxConcurrent} requests in flight); retry shortly`,
        "rate_limit_exceeded",
        null,
        "rate_limit_exceeded",
      );
    inFlight += 1;
    try {
      await route(served, await readJsonBody(req, maxBody), res);
    } finally {
      inFlight -= 1;
    }
  }

  const headersTimeout = opts.headersTimeoutMs ?? 10_000;
  const requestTimeout = Math.max(opts.requestTimeoutMs ?? 30_000, headersTimeout);
  // Node checks both timeouts on this interval (default 30 s): a short header timeout needs a short one.
  const timeouts = {
    headersTimeout,
    requestTimeout,
    connectionsCheckingInterval: Math.min(1000, headersTimeout),
  };
  const server = createServer(timeouts, (req, res) => {
    handle(req, res).catch((e: unknown) => {
      let err: ApiError;
      if (e instanceof ApiError) err = e;
      else if (e instanceof UserError) err = new ApiError(400, e.message);
      else {
        process.stderr.write(`erl openai server: ${(e as Error)?.stack ?? String(e)}\n`);
        err = new ApiError(500, `internal error: ${(e as Error)?.message ?? String(e)}`, "server_error");
      }
      if (err.status === 413 || err.status === 401) res.setHeader("Connection", "close");
      sendError(res, err);
      if (err.status === 413) req.destroy();
    });
  });

  await new Promise<void>((res, rej) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      rej(
        new UserError(
          e.code === "EADDRINUSE"
            ? `port ${opts.port} on ${opts.host} is already in use; pick another with --port`
            : `cannot listen on ${opts.host}:${opts.port}: ${e.message}`,
        ),
      ),
    );
    server.listen(opts.port, opts.host, () => res());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : opts.port;
  const host = opts.host.includes(":") ? `[${opts.host}]` : opts.host;
  return {
    url: `http://${host}:${port}/v1`,
    server,
    close: () =>
      new Promise<void>((res) => {
        server.closeAllConnections();
        server.close(() => res());
      }),
  };
}
