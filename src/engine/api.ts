/**
 * The engine API as the TypeScript side sees it. `src/engine/client.ts` implements it over the
 * versioned wire protocol (`src/engine/protocol.ts` ⇄ `engine/erl_engine/protocol.py`), for a local
 * child process (stdio) or a remote server (HTTP). Everything above this file — agent loop,
 * algorithms, evaluation, pretraining — talks only to `Engine`.
 *
 * Conventions: token ids are integers; log-probs are natural-log floats; arrays of per-token values
 * are aligned with `targetIds` (position t holds the value for predicting targetIds[t] from
 * inputIds[0..t]).
 */

/** A compute dtype as the engine runs it. */
export type DType = "float32" | "bfloat16";
/**
 * A dtype as requested: "auto" lets the engine choose by measurement (bf16 on a CUDA device that
 * supports it; on CPU only where a short probe at load shows bf16 clearly faster, else fp32).
 */
export type DTypeRequest = DType | "auto";
export type Device = "cpu" | "cuda" | "auto";

export interface LoraConfig {
  rank: number;
  alpha: number;
  dropout?: number;
  /** Module names to adapt, e.g. ["q_proj","v_proj"]; "all-linear" for every linear layer. */
  targetModules: string[] | "all-linear";
}

export interface LoadModelRequest {
  /** A local HF model directory (config + safetensors + tokenizer), or omitted when `randomInit` is given. */
  path?: string;
  /** Create a randomly initialised model of this HF config (a plain object) with this tokenizer directory. */
  randomInit?: { config: Record<string, unknown>; tokenizerPath: string; seed: number };
  /** Default "auto". */
  dtype?: DTypeRequest;
  device: Device;
  /** Full fine-tuning when absent. */
  lora?: LoraConfig;
  /** Keep a frozen reference for KL: "copy" (full FT) or "base" (LoRA: adapters disabled). Omit for none. */
  reference?: "copy" | "base";
  /** Gradient checkpointing for long sequences. */
  gradientCheckpointing?: boolean;
  seed: number;
}

export type Role = "system" | "user" | "assistant" | "tool";
export interface ChatMessage {
  role: Role;
  content: string;
}

export interface ChatRender {
  messages: ChatMessage[];
  addGenerationPrompt?: boolean;
}

export interface SampleRequest {
  /** One entry per prompt. */
  prompts: number[][];
  /** Samples per prompt. */
  n: number;
  maxTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
  stopStrings?: string[];
  stopTokenIds?: number[];
  seed: number;
  /**
   * Temperature of the returned log-probs: log-softmax of logits / this (default 1). The reference
   * (verl) trains on log-probs at the sampling temperature; pass the same value to `forward` and to
   * the loss (`LossConfig.temperature`) so that a PPO ratio starts at 1.
   */
  logprobTemperature?: number;
}
export type SampleStopReason = "stop" | "length";
export interface SampledSequence {
  /** Index of the prompt this sequence continues. */
  promptIndex: number;
  tokens: number[];
  /**
   * Log-prob of each sampled token under the model's own distribution (logits at
   * `logprobTemperature`, default 1; no top-k/top-p truncation), whatever the sampling settings — so
   * it equals `forward`'s log-prob of the same token at the same temperature, and a PPO ratio
   * starts at 1.
   */
  logprobs: number[];
  stopReason: SampleStopReason;
}

/** One training/scoring example. */
export interface Datum {
  inputIds: number[];
  targetIds: number[];
  /** Cross-entropy weight per target (0 = masked). Also the loss mask for the RL losses. */
  weights: number[];
  /** Per-target advantage (RL losses). */
  advantages?: number[];
  /** Per-target log-prob under the sampling policy (RL losses). */
  oldLogprobs?: number[];
  /**
   * Per-target log-prob the sampler reported (its own implementation of the policy: the engine's
   * sampler, vLLM). The engine then reports the rollout–trainer gap (`mismatch_*` metrics), and
   * `tisCap` weights the policy term by min(exp(old - sampler), tisCap).
   */
  samplerLogprobs?: number[];
}

export type LossName = "cross_entropy" | "importance_sampling" | "ppo";
export type Aggregation = "seq-mean-token-sum" | "token-mean";
export interface LossConfig {
  name: LossName;
  aggregation?: Aggregation;
  /** PPO clip range: ratio clipped to [1 - clipLow, 1 + clipHigh]. */
  clipLow?: number;
  clipHigh?: number;
  /** Dual-clip constant c (> 1) for negative advantages; omit to disable. */
  dualClip?: number;
  /** Coefficient of the k3 KL estimator to the frozen reference; 0/omitted disables. */
  klCoef?: number;
  /**
   * Divide the summed loss by this instead of by this call's own count (sequences for
   * seq-mean-token-sum, tokens for token-mean), so one batch split over several forwardBackward
   * calls gives exactly the gradient of the whole batch.
   */
  normalizer?: number;
  /** Truncated importance sampling cap C (RL losses; needs `samplerLogprobs`); omit to disable. */
  tisCap?: number;
  /** Log-probs (policy and reference) from logits / temperature (default 1). */
  temperature?: number;
  /** Clamp log(π/π_old) and log(π_ref/π) to [−c, c] before exponentiating (verl: 20); omit for none. */
  logRatioClamp?: number;
  /** Cap the per-token k3 KL at this value (verl: 10); omit for none. */
  klClamp?: number;
}

/** How the engine lays datums out in its micro-batches (the results do not depend on it). */
export interface ScoreOptions {
  /**
   * Several datums end to end in one row (positions restart, attention stays within each) instead of
   * one padded row each: less padding, longer rows. Which is faster depends on the lengths and the
   * device; `erl sft` measures both.
   */
  pack?: boolean;
}

export interface ForwardBackwardResult {
  loss: number;
  metrics: Record<string, number>;
}

export interface AdamWConfig {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** Clip the global grad norm to this value; omit for no clipping. */
  gradClip?: number;
}

export interface EngineInfo {
  protocolVersion: number;
  engineVersion: string;
  torch: string;
  transformers: string;
  peft?: string;
  device: string;
  /** The dtype the model computes in ("auto" resolved). */
  dtype: DType;
  /** Why: "requested", or the measurement behind an "auto" choice. Present once a model is loaded. */
  dtypeReason?: string;
  /** torch's CPU threads, and why that many (ERL_ENGINE_THREADS, the test suite, or a start-up probe). */
  threads?: number;
  threadsReason?: string;
  /** The engine machine's CPU: model name and the vector extensions that decide matmul speed. */
  cpu?: { model: string; flags: string[]; capability?: string; logicalCpus?: number };
  parameters: { total: number; trainable: number };
  memory: { rssBytes: number; deviceBytes?: number };
  model?: { path?: string; vocabSize: number; maxPositions?: number; eosTokenIds: number[] };
}

export interface Engine {
  info(): Promise<EngineInfo>;
  loadModel(req: LoadModelRequest): Promise<EngineInfo>;

  /** Renders a chat with the model's chat template to token ids. */
  renderChat(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean }): Promise<number[]>;
  /**
   * `renderChat` for many conversations in one call, and `decode` for many sequences: one round trip
   * for a whole batch of episodes. Optional: a backend without them falls back to one call each.
   */
  renderChats?(chats: ChatRender[]): Promise<number[][]>;
  encode(text: string, opts?: { addSpecialTokens?: boolean }): Promise<number[]>;
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): Promise<string>;
  decodeMany?(seqs: number[][], opts?: { skipSpecialTokens?: boolean }): Promise<string[]>;

  sample(req: SampleRequest): Promise<SampledSequence[]>;
  /** Per-target log-probs for each datum (from logits / temperature; default 1). */
  forward(datums: Datum[], opts?: ScoreOptions & { temperature?: number }): Promise<number[][]>;
  /** Computes the loss and accumulates gradients. */
  forwardBackward(datums: Datum[], loss: LossConfig, opts?: ScoreOptions): Promise<ForwardBackwardResult>;
  /** Applies accumulated gradients and zeroes them. */
  optimStep(cfg: AdamWConfig): Promise<{ gradNorm: number; metrics: Record<string, number> }>;

  /** Weights + optimizer + RNG, written atomically with a checksum. */
  saveState(dir: string): Promise<void>;
  loadState(dir: string): Promise<void>;
  /** A plain HF directory (merged weights) or, with LoRA, an adapter directory loadable by peft. */
  export(dir: string, opts?: { mergeLora?: boolean }): Promise<void>;

  close(): Promise<void>;
}
