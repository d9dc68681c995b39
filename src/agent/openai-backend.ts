/**
 * A model behind any OpenAI-compatible chat endpoint (a hosted API, vLLM, `erl engine serve --openai`)
 * as a `ModelBackend`, so the same agent loop runs it: as the reflector of an ERL run, as the policy
 * of in-context ERL (`erl-icl`), or for `erl eval --policy openai:<model>`. Client: the official
 * `openai` npm package (its timeout and retries with back-off are the retry policy).
 *
 * The loop speaks token ids, an API speaks messages. This backend's "tokens" are therefore a
 * reversible code of the conversation: one id per Unicode code point of a message's content (code
 * point + 16), a role id before each message and an end id after it. `renderChat` encodes,
 * `sample` decodes the prompt back into messages, asks the endpoint for replies and returns their
 * code points; `decode` turns them back into text. Rendering message by message gives the same ids
 * as rendering at once, as the trajectory builder requires. Nothing here can be trained: the ids are
 * not the remote model's tokens, log-probs are reported as 0, and `forward` refuses.
 *
 * Lengths: a sample's `maxTokens` is sent as the API's `max_tokens` (the remote model's tokens), unless
 * `maxTokens` is configured here, which then applies to every request. The loop's context accounting
 * counts these ids, i.e. characters, which over-estimates tokens: give API policies an
 * `algo.maxContextTokens` in characters. Stop strings are applied here (the reply is cut just after
 * the first one, as the engine does), not sent to the API. `topK` is not sent (OpenAI has none).
 */
import OpenAI from "openai";
import type { ChatMessage, Datum, Role, SampleRequest, SampledSequence } from "../engine/api.ts";
import { UserError } from "../util/errors.ts";
import type { ModelBackend } from "./backend.ts";

const END = 0;
const ROLE_IDS: Record<Role, number> = { system: 1, user: 2, assistant: 3, tool: 4 };
const ROLE_OF: Role[] = ["system", "system", "user", "assistant", "tool"];
const OFFSET = 16;

export interface OpenAIBackendOptions {
  /** e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 */
  baseUrl: string;
  model: string;
  apiKey: string;
  /** Overrides the sampling temperature of every request. */
  temperature?: number;
  topP?: number;
  /** The API's max_tokens for every request, whatever the request asks. */
  maxTokens?: number;
  /** Seconds per API call (default 60). */
  timeout?: number;
  /** Retries of a failed call (connection errors, 408, 409, 429, 5xx), with back-off (default 2). */
  maxRetries?: number;
  /** Prices per token, for the cost figure. */
  pricePerInputToken?: number;
  pricePerOutputToken?: number;
  /** API calls at once (default 4). */
  concurrency?: number;
  /** Name used in records and messages (default `openai:<model>`). */
  label?: string;
}

/** Totals since the backend was made; a step's figures are the difference of two snapshots. */
export interface ApiUsage {
  calls: number;
  /** Sum of the seconds each call took (retries included). */
  seconds: number;
  promptTokens: number;
  completionTokens: number;
  /** Cost in the unit of the configured prices; 0 when none are configured. */
  cost: number;
}

export function emptyUsage(): ApiUsage {
  return { calls: 0, seconds: 0, promptTokens: 0, completionTokens: 0, cost: 0 };
}

/** Metrics of the usage between two snapshots, under `prefix` (e.g. "reflector"). */
export function usageMetrics(
  prefix: string,
  before: ApiUsage,
  after: ApiUsage,
  priced: boolean,
): Record<string, number> {
  const calls = after.calls - before.calls;
  const m: Record<string, number> = {
    [`${prefix}/calls`]: calls,
    [`${prefix}/seconds`]: after.seconds - before.seconds,
    [`${prefix}/prompt_tokens`]: after.promptTokens - before.promptTokens,
    [`${prefix}/completion_tokens`]: after.completionTokens - before.completionTokens,
  };
  if (calls > 0) m[`${prefix}/latency_s`] = (after.seconds - before.seconds) / calls;
  if (priced) m[`${prefix}/cost`] = after.cost - before.cost;
  return m;
}

export function encodeText(text: string): number[] {
  const out: number[] = [];
  for (const ch of text) out.push(ch.codePointAt(0)! + OFFSET);
  return out;
}

function decodeIds(ids: readonly number[]): string {
  let s = "";
  for (const id of ids) if (id >= OFFSET) s += String.fromCodePoint(id - OFFSET);
  return s;
}

/** The messages of a rendered prompt that ends with the assistant's generation header. */
export function promptMessages(ids: readonly number[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  let i = 0;
  while (i < ids.length) {
    const roleId = ids[i]!;
    const role = ROLE_OF[roleId];
    if (roleId === END || role === undefined)
      throw new Error(`openai backend: bad prompt id ${roleId} at ${i}`);
    let j = i + 1;
    while (j < ids.length && ids[j] !== END) j++;
    if (j === ids.length) {
      if (roleId !== ROLE_IDS.assistant || j !== i + 1)
        throw new Error("openai backend: the prompt must end with the assistant's generation header");
      return out;
    }
    out.push({ role, content: decodeIds(ids.slice(i + 1, j)) });
    i = j + 1;
  }
  throw new Error("openai backend: the prompt has no generation header");
}

/** Runs `fn` over `items` with at most `limit` at once, keeping the order of results. */
async function pool<T, R>(
  items: readonly T[],
  limit: number,
  fn: (x: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

export class OpenAIBackend implements ModelBackend {
  readonly eosTokenIds: readonly number[] = [END];
  readonly maxPositions = undefined;
  readonly usage: ApiUsage = emptyUsage();
  readonly label: string;
  private readonly client: OpenAI;

  constructor(readonly opts: OpenAIBackendOptions) {
    this.label = opts.label ?? `openai:${opts.model}`;
    this.client = new OpenAI({
      baseURL: opts.baseUrl,
      apiKey: opts.apiKey,
      timeout: (opts.timeout ?? 60) * 1000,
      maxRetries: opts.maxRetries ?? 2,
    });
  }

  get priced(): boolean {
    return this.opts.pricePerInputToken !== undefined || this.opts.pricePerOutputToken !== undefined;
  }

  async renderChat(
    messages: readonly ChatMessage[],
    opts: { addGenerationPrompt: boolean },
  ): Promise<number[]> {
    const ids: number[] = [];
    for (const m of messages) ids.push(ROLE_IDS[m.role], ...encodeText(m.content), END);
    if (opts.addGenerationPrompt) ids.push(ROLE_IDS.assistant);
    return ids;
  }

  async decode(ids: readonly number[]): Promise<string> {
    return decodeIds(ids);
  }

  async forward(_datums: Datum[]): Promise<number[][]> {
    throw new UserError(
      `${this.label} is reached through an API: it cannot score tokens, so it cannot be trained (use it as a reflector, an erl-icl policy, or for evaluation)`,
    );
  }

  async sample(req: SampleRequest): Promise<SampledSequence[]> {
    const perPrompt = await pool(req.prompts, this.opts.concurrency ?? 4, (prompt, p) =>
      this.complete(promptMessages(prompt), req, (req.seed + p) % 2 ** 31),
    );
    return perPrompt.flatMap((texts, promptIndex) =>
      texts.map((t) => this.sequence(promptIndex, t.text, t.finish, req)),
    );
  }

  private sequence(
    promptIndex: number,
    raw: string,
    finish: string | null,
    req: SampleRequest,
  ): SampledSequence {
    let text = raw;
    let stopped = finish === "stop";
    // Stop strings: cut just after the first one, as the engine does.
    let cut = -1;
    for (const s of req.stopStrings ?? []) {
      const i = text.indexOf(s);
      if (i >= 0 && (cut < 0 || i + s.length < cut)) cut = i + s.length;
    }
    if (cut >= 0) {
      text = text.slice(0, cut);
      stopped = false; // ended by a stop string: no end-of-turn id, like the engine
    }
    const tokens = encodeText(text);
    const length = cut < 0 && !stopped;
    if (stopped) tokens.push(END);
    return {
      promptIndex,
      tokens,
      logprobs: tokens.map(() => 0),
      stopReason: length ? "length" : "stop",
    };
  }

  private async complete(
    messages: ChatMessage[],
    req: SampleRequest,
    seed: number,
  ): Promise<{ text: string; finish: string | null }[]> {
    const t0 = performance.now();
    const temperature = this.opts.temperature ?? req.temperature;
    const topP = this.opts.topP ?? req.topP;
    let res: OpenAI.Chat.ChatCompletion;
    try {
      res = await this.client.chat.completions.create({
        model: this.opts.model,
        messages: messages.map(
          (m) => ({ role: m.role, content: m.content }) as OpenAI.Chat.ChatCompletionMessageParam,
        ),
        n: req.n,
        max_tokens: this.opts.maxTokens ?? req.maxTokens,
        temperature,
        ...(topP !== undefined && topP < 1 ? { top_p: topP } : {}),
        seed,
      });
    } catch (e) {
      const why =
        e instanceof OpenAI.APIError ? `${e.status ?? "no status"}: ${e.message}` : (e as Error).message;
      throw new UserError(`${this.label} at ${this.opts.baseUrl}: the chat completion failed (${why})`);
    } finally {
      this.usage.calls += 1;
      this.usage.seconds += (performance.now() - t0) / 1000;
    }
    const u = res.usage;
    if (u) {
      this.usage.promptTokens += u.prompt_tokens;
      this.usage.completionTokens += u.completion_tokens;
      this.usage.cost +=
        u.prompt_tokens * (this.opts.pricePerInputToken ?? 0) +
        u.completion_tokens * (this.opts.pricePerOutputToken ?? 0);
    }
    if (res.choices.length !== req.n)
      throw new UserError(`${this.label}: asked for ${req.n} choices, got ${res.choices.length}`);
    return [...res.choices]
      .sort((a, b) => a.index - b.index)
      .map((c) => ({ text: c.message.content ?? "", finish: c.finish_reason }));
  }
}

/** The API key from the named environment variable; a clear error when it is missing. */
export function apiKeyFrom(envVar: string, where: string): string {
  // Own variables only: process.env also answers "toString" or "constructor" with inherited functions.
  const key = Object.hasOwn(process.env, envVar) ? process.env[envVar] : undefined;
  if (key === undefined || key === "")
    throw new UserError(`${where}: the API key is read from $${envVar}, which is not set`);
  return key;
}
