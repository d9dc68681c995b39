/**
 * The model as the agent loop sees it: render a chat to token ids, sample continuations, decode,
 * and score token sequences. Two implementations: `EngineBackend` (any `Engine`, i.e. the real
 * PyTorch engine) and `ScriptedBackend` in `src/testing/scripted.ts` (a fake tokenizer and a reply
 * script, for tests without an engine). The loop never tokenises sampled text: it keeps the ids `sample`
 * returned and uses `renderChat` only for the messages it did not sample.
 */
import type {
  ChatMessage,
  ChatRender,
  Datum,
  Engine,
  SampleRequest,
  SampledSequence,
} from "../engine/api.ts";

export interface ModelBackend {
  /** Renders a chat with the model's template. `addGenerationPrompt` appends the assistant header. */
  renderChat(messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }): Promise<number[]>;
  sample(req: SampleRequest): Promise<SampledSequence[]>;
  /** Text of sampled ids; special tokens (end-of-turn) are dropped. */
  decode(ids: readonly number[]): Promise<string>;
  /** Per-target log-probs of each datum under the current policy (for recomputed old log-probs). */
  forward(datums: Datum[], opts?: { temperature?: number }): Promise<number[][]>;
  /** Token ids that end an assistant turn; the loop passes them as stop tokens. */
  readonly eosTokenIds: readonly number[];
  /** The model's context window in tokens, when known. */
  readonly maxPositions?: number;
}

/**
 * Gathers the calls made within one turn of the event loop into one batched call. Every episode of a
 * batch renders its chat and decodes its reply at about the same time, so N round trips to the engine
 * become one. When the batched call fails, each call of that batch is retried on its own, so every
 * caller gets its own result or its own error (a batch never fails for one bad member).
 */
export class Coalescer<Req, Res> {
  private queue: { req: Req; resolve: (r: Res) => void; reject: (e: unknown) => void }[] = [];
  /** Batched calls made, and the requests they carried (for tests and benchmarks). */
  batches = 0;
  requests = 0;
  /** Set when the engine does not know the batched method (an older engine): one call each from then on. */
  private unsupported = false;

  constructor(
    private readonly many: (reqs: Req[]) => Promise<Res[]>,
    private readonly one: (req: Req) => Promise<Res>,
  ) {}

  call(req: Req): Promise<Res> {
    if (this.unsupported) return this.one(req);
    return new Promise<Res>((resolve, reject) => {
      if (this.queue.length === 0) setImmediate(() => void this.flush());
      this.queue.push({ req, resolve, reject });
    });
  }

  private async flush(): Promise<void> {
    const items = this.queue;
    this.queue = [];
    if (items.length === 0) return;
    this.requests += items.length;
    if (items.length === 1) {
      const it = items[0]!;
      await this.one(it.req).then(it.resolve, it.reject);
      return;
    }
    this.batches += 1;
    let results: Res[];
    try {
      results = await this.many(items.map((it) => it.req));
    } catch (e) {
      if ((e as { code?: unknown }).code === "unknown_method") this.unsupported = true;
      await Promise.all(items.map((it) => this.one(it.req).then(it.resolve, it.reject)));
      return;
    }
    items.forEach((it, i) => it.resolve(results[i]!));
  }
}

/** A `ModelBackend` over the engine API. Build it with `EngineBackend.create` after `loadModel`. */
export class EngineBackend implements ModelBackend {
  /** renderChat and decode calls coalesced into renderChats / decodeMany when the engine has them. */
  readonly renders: Coalescer<ChatRender, number[]> | null;
  readonly decodes: Coalescer<number[], string> | null;

  private constructor(
    readonly engine: Engine,
    readonly eosTokenIds: readonly number[],
    readonly maxPositions: number | undefined,
  ) {
    const renderChats = engine.renderChats?.bind(engine);
    const decodeMany = engine.decodeMany?.bind(engine);
    this.renders = renderChats ? new Coalescer(renderChats, (c) => engine.renderChat(c.messages, c)) : null;
    this.decodes = decodeMany
      ? new Coalescer(
          (seqs) => decodeMany(seqs, { skipSpecialTokens: true }),
          (ids) => engine.decode(ids, { skipSpecialTokens: true }),
        )
      : null;
  }

  static async create(engine: Engine): Promise<EngineBackend> {
    const info = await engine.info();
    if (!info.model) throw new Error("EngineBackend: the engine has no model loaded (call loadModel first)");
    return new EngineBackend(engine, info.model.eosTokenIds, info.model.maxPositions);
  }

  renderChat(messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }): Promise<number[]> {
    if (this.renders)
      return this.renders.call({ messages: [...messages], addGenerationPrompt: opts.addGenerationPrompt });
    return this.engine.renderChat([...messages], opts);
  }

  sample(req: SampleRequest): Promise<SampledSequence[]> {
    return this.engine.sample(req);
  }

  decode(ids: readonly number[]): Promise<string> {
    if (this.decodes) return this.decodes.call([...ids]);
    return this.engine.decode([...ids], { skipSpecialTokens: true });
  }

  forward(datums: Datum[], opts?: { temperature?: number }): Promise<number[][]> {
    return this.engine.forward(datums, opts);
  }
}
