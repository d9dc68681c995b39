/**
 * A model backend without a model, for tests: a fake tokenizer (one token per character, plus one
 * multi-character token so that non-canonical tokenisations exist) and a script that decides each
 * reply from the conversation. It records every sample call so tests can check batching, contexts
 * and sampling settings.
 */
import type { ChatMessage, Datum, Role, SampleRequest, SampledSequence } from "../engine/api.ts";
import { Rng } from "../util/rng.ts";
import type { ModelBackend } from "../agent/backend.ts";

export const TOK_TURN_START = 1;
export const TOK_TURN_END = 2;
/** "```" as a single token: the canonical tokenisation of a fence. */
export const TOK_FENCE = 3;
const CHAR_BASE = 100;
const FENCE = "```";

/** Canonical encoding: the fence as one token, every other character as one token. */
export function fakeEncode(text: string): number[] {
  const out: number[] = [];
  let i = 0;
  while (i < text.length) {
    if (text.startsWith(FENCE, i)) {
      out.push(TOK_FENCE);
      i += FENCE.length;
    } else {
      const cp = text.codePointAt(i)!;
      out.push(CHAR_BASE + cp);
      i += cp > 0xffff ? 2 : 1;
    }
  }
  return out;
}

/** A valid but non-canonical encoding: the fence as three backtick tokens. */
export function fakeEncodeCharwise(text: string): number[] {
  return [...text].map((ch) => CHAR_BASE + ch.codePointAt(0)!);
}

export function fakeDecode(ids: readonly number[]): string {
  let s = "";
  for (const id of ids) {
    if (id === TOK_FENCE) s += FENCE;
    else if (id >= CHAR_BASE) s += String.fromCodePoint(id - CHAR_BASE);
  }
  return s;
}

export function fakeRenderChat(messages: readonly ChatMessage[], addGenerationPrompt: boolean): number[] {
  const ids: number[] = [];
  for (const m of messages)
    ids.push(
      TOK_TURN_START,
      ...fakeEncode(`${m.role}\n`),
      ...fakeEncode(m.content),
      TOK_TURN_END,
      ...fakeEncode("\n"),
    );
  if (addGenerationPrompt) ids.push(TOK_TURN_START, ...fakeEncode("assistant\n"));
  return ids;
}

/** Parses a rendered prompt back into messages; the trailing open assistant header is dropped. */
export function fakeParseChat(ids: readonly number[]): ChatMessage[] {
  const out: ChatMessage[] = [];
  let i = 0;
  while (i < ids.length) {
    if (ids[i] !== TOK_TURN_START) throw new Error(`fake chat: expected a turn start at token ${i}`);
    let end = i + 1;
    while (end < ids.length && ids[end] !== TOK_TURN_END) end++;
    const text = fakeDecode(ids.slice(i + 1, end));
    const nl = text.indexOf("\n");
    const role = text.slice(0, nl) as Role;
    if (end < ids.length) out.push({ role, content: text.slice(nl + 1) });
    i = end + 2; // the end token and the newline after it
  }
  return out;
}

/** Deterministic stand-in log-probs, distinct per token and position so misalignment shows. */
export function fakeLogprob(token: number, position: number): number {
  return -(0.05 + ((token * 31 + position) % 17) / 20);
}

/** Stand-in for the policy's `forward`: a different function of token and position. */
export function fakeForwardLogprob(token: number, position: number): number {
  return -(0.5 + ((token * 7 + position) % 11) / 10);
}

export interface ScriptInput {
  /** The conversation so far (system, user, assistant, tool…), without the open assistant turn. */
  messages: ChatMessage[];
  request: SampleRequest;
  /** Seeded from the request's seed, the prompt index and the sample index. */
  rng: Rng;
  /** Which sample call this is (0-based, over the backend's life) and which prompt in it. */
  callIndex: number;
  promptIndex: number;
}

export type Script = (input: ScriptInput) => string;

export interface ScriptedBackendOptions {
  /** Emit the fence as three tokens (non-canonical), as a real sampler sometimes does. */
  charwise?: boolean;
  maxPositions?: number;
}

export interface RecordedCall {
  request: SampleRequest;
  conversations: ChatMessage[][];
}

export class ScriptedBackend implements ModelBackend {
  readonly eosTokenIds = [TOK_TURN_END];
  readonly maxPositions: number | undefined;
  readonly calls: RecordedCall[] = [];
  readonly forwardCalls: Datum[][] = [];
  /** The temperature each forward call asked for (1 when it gave none). */
  readonly forwardTemperatures: number[] = [];

  constructor(
    private readonly script: Script,
    private readonly opts: ScriptedBackendOptions = {},
  ) {
    this.maxPositions = opts.maxPositions;
  }

  async renderChat(
    messages: readonly ChatMessage[],
    opts: { addGenerationPrompt: boolean },
  ): Promise<number[]> {
    return fakeRenderChat(messages, opts.addGenerationPrompt);
  }

  async decode(ids: readonly number[]): Promise<string> {
    return fakeDecode(ids);
  }

  async sample(req: SampleRequest): Promise<SampledSequence[]> {
    const conversations = req.prompts.map((p) => fakeParseChat(p));
    this.calls.push({ request: req, conversations });
    const out: SampledSequence[] = [];
    conversations.forEach((messages, promptIndex) => {
      for (let k = 0; k < req.n; k++) {
        const rng = new Rng(`${req.seed}:${promptIndex}:${k}`);
        let text = this.script({
          messages,
          request: req,
          rng,
          callIndex: this.calls.length - 1,
          promptIndex,
        });
        let stopReason: SampledSequence["stopReason"] = "stop";
        // The earliest stop string ends the reply and stays in it, as in the engine.
        let cut = -1;
        for (const stop of req.stopStrings ?? []) {
          const at = text.indexOf(stop);
          if (at >= 0 && (cut < 0 || at + stop.length < cut)) cut = at + stop.length;
        }
        const hitStopString = cut >= 0;
        if (hitStopString) text = text.slice(0, cut);
        let tokens = this.opts.charwise ? fakeEncodeCharwise(text) : fakeEncode(text);
        if (!hitStopString) tokens.push(TOK_TURN_END);
        if (tokens.length > req.maxTokens) {
          tokens = tokens.slice(0, req.maxTokens);
          stopReason = "length";
        }
        const start = req.prompts[promptIndex]!.length;
        out.push({
          promptIndex,
          tokens,
          logprobs: tokens.map((t, i) => fakeLogprob(t, start + i)),
          stopReason,
        });
      }
    });
    return out;
  }

  async forward(datums: Datum[], opts?: { temperature?: number }): Promise<number[][]> {
    this.forwardCalls.push(datums);
    this.forwardTemperatures.push(opts?.temperature ?? 1);
    return datums.map((d) => d.targetIds.map((t, i) => fakeForwardLogprob(t, i + 1)));
  }
}
