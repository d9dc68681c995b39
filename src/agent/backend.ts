/**
 * The model as the agent loop sees it: render a chat to token ids, sample continuations, decode,
 * and score token sequences. Two implementations: `EngineBackend` (any `Engine`, i.e. the real
 * PyTorch engine) and `ScriptedBackend` in `scripted.ts` (a fake tokenizer and a reply script, for
 * tests without an engine). The loop never tokenises sampled text: it keeps the ids `sample`
 * returned and uses `renderChat` only for the messages it did not sample.
 */
import type { ChatMessage, Datum, Engine, SampleRequest, SampledSequence } from "../engine/api.ts";

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

/** A `ModelBackend` over the engine API. Build it with `EngineBackend.create` after `loadModel`. */
export class EngineBackend implements ModelBackend {
  private constructor(
    readonly engine: Engine,
    readonly eosTokenIds: readonly number[],
    readonly maxPositions: number | undefined,
  ) {}

  static async create(engine: Engine): Promise<EngineBackend> {
    const info = await engine.info();
    if (!info.model) throw new Error("EngineBackend: the engine has no model loaded (call loadModel first)");
    return new EngineBackend(engine, info.model.eosTokenIds, info.model.maxPositions);
  }

  renderChat(messages: readonly ChatMessage[], opts: { addGenerationPrompt: boolean }): Promise<number[]> {
    return this.engine.renderChat([...messages], opts);
  }

  sample(req: SampleRequest): Promise<SampledSequence[]> {
    return this.engine.sample(req);
  }

  decode(ids: readonly number[]): Promise<string> {
    return this.engine.decode([...ids], { skipSpecialTokens: true });
  }

  forward(datums: Datum[], opts?: { temperature?: number }): Promise<number[][]> {
    return this.engine.forward(datums, opts);
  }
}
