/**
 * The run config's type: one typed object describing a training run (environment and data, model
 * and engine, algorithm and its options, optimiser and loss, evaluation, checkpoints, seed, run
 * directory). Its schema is schema.ts, its defaults defaults.ts; docs/training.md describes every key.
 */
import type { PromptProfileName } from "../../agent/prompts.ts";

export interface SamplingConfig {
  temperature: number;
  topP: number;
  topK: number | null;
}

/** An OpenAI-compatible chat endpoint (docs/reflectors.md). */
export interface ApiEndpointConfig {
  /** e.g. https://api.openai.com/v1, http://127.0.0.1:8000/v1 (`erl engine serve --openai`). */
  baseUrl: string | null;
  model: string | null;
  /** Name of the environment variable that holds the API key (the key itself is never in a config). */
  apiKeyEnv: string;
  /** Seconds per call. */
  timeout: number;
  /** Retries of a failed call (connection errors, 408, 409, 429, 5xx), with exponential back-off. */
  maxRetries: number;
  /** Calls in flight at once (1 suits a single local engine, which answers one call at a time). */
  concurrency: number;
  /** Prices per token (any currency), for the `…/cost` metric; null = not recorded. */
  pricePerInputToken: number | null;
  pricePerOutputToken: number | null;
}

export interface BaseRunConfig {
  /** Free text shown in `erl train --help` listings and kept in config.json. */
  description: string;
  /** Run name = directory name under `runsDir`; null derives `<env>-<algo>-seed<seed>-<time>`. */
  name: string | null;
  runsDir: string;
  seed: number;
  /**
   * A registered environment (src/envs/registry.ts). Its options, if it declares any, are a block
   * named after it (e.g. `hotpotqa.search`).
   */
  env: string;
  data: {
    /** Use only the first N tasks of the (seed-shuffled) train split; null = all. */
    trainTasks: number | null;
    /** Evaluate on the first N tasks of the eval split (in file order); null = all. */
    evalTasks: number | null;
    evalSplit: "test" | "train";
    /** Shuffle the train split with the run seed (reshuffled each pass). */
    shuffle: boolean;
  };
  model: {
    /** A local HF causal-LM directory (e.g. models/erl-tiny or test/fixtures/tiny-model). */
    path: string;
    /** "auto": the engine measures (bf16 on CUDA with bf16; on CPU only where a probe shows it faster). */
    dtype: "auto" | "float32" | "bfloat16";
    device: "cpu" | "cuda" | "auto";
    /** LoRA adapters; null = full fine-tuning. */
    lora: { rank: number; alpha: number; dropout: number; targetModules: string } | null;
    /** Frozen reference for the KL term: "auto" = "base" with LoRA, "copy" without; "none" disables. */
    reference: "auto" | "copy" | "base" | "none";
    gradientCheckpointing: boolean;
  };
  engine: {
    /**
     * "engine": this project's engine (a local child process, or `url`); "tinker": a Tinker service
     * through the official SDK (docs/tinker.md), with `baseUrl`, `apiKeyEnv` and `baseModel`.
     */
    kind: "engine" | "tinker";
    /** The Tinker service's URL; null = the SDK's default service (or $TINKER_BASE_URL). */
    baseUrl: string | null;
    /** Name of the environment variable holding the Tinker API key (the key itself is never in a config). */
    apiKeyEnv: string;
    /** The Tinker base model to train, e.g. "Qwen/Qwen3-4B-Instruct-2507" (model.path holds its tokenizer). */
    baseModel: string | null;
    /** A running engine server (`erl engine serve`); null starts a local child process. */
    url: string | null;
    /** Python interpreter for a local engine; null = $ERL_PYTHON or .venv/bin/python. */
    python: string | null;
    /** Who samples rollouts: the engine itself, or vLLM in its own process (src/engine/vllm.ts). */
    sampler: "engine" | "vllm";
    /** Python of the vLLM virtualenv; null = $ERL_VLLM_PYTHON or .venv-vllm/bin/python. */
    vllmPython: string | null;
  };
  /**
   * Who writes reflections: "policy" (the model being trained, as in the paper) or "openai" (any
   * OpenAI-compatible endpoint; its reflections are used but not trained).
   */
  reflector: ApiEndpointConfig & {
    kind: "policy" | "openai";
    /** null = algo.reflectionSampling's. */
    temperature: number | null;
    topP: number | null;
    /** The API's max_tokens for a reflection; null = algo.maxReflectionTokens. */
    maxTokens: number | null;
  };
  /**
   * The policy: "engine" (the model at model.path in the engine) or "openai" (an endpoint; only for
   * algo.name "erl-icl", which trains nothing).
   */
  policy: ApiEndpointConfig & { kind: "engine" | "openai" };
  /**
   * The algorithm and its settings: the keys below are every algorithm's; an algorithm adds its own
   * (ERL's memory and reflection keys: `ErlAlgoConfig` in algorithms/erl.ts), with their schema and
   * defaults in its descriptor (src/train/algorithms/).
   */
  algo: AlgoConfig;
  steps: number;
  /**
   * Wall-clock budget in seconds of run time: training stops after the step during which it ran
   * out (then the final evaluation and checkpoint happen). null = no limit; `steps` still caps.
   */
  timeBudget: number | null;
  /** Tasks per training step. */
  batchSize: number;
  optim: {
    lr: number;
    weightDecay: number;
    beta1: number;
    beta2: number;
    eps: number;
    /** Global grad-norm clip; null disables. */
    gradClip: number | null;
  };
  loss: {
    clipLow: number;
    clipHigh: number;
    dualClip: number | null;
    klCoef: number;
    aggregation: "seq-mean-token-sum" | "token-mean";
    microBatchSize: number;
    /** Truncated importance sampling cap (π_trainer / π_sampler weight); null disables. */
    tisCap: number | null;
    /**
     * Tasks per PPO mini-batch (× attempts per task = sequences; verl's ppo_mini_batch_size), each
     * mini-batch its own optimiser step after a seeded shuffle; null = one step on the whole batch.
     */
    miniBatchTasks: number | null;
    /** Log-probs from logits / temperature in rollouts and training (verl: the sampling T). */
    temperature: number;
    /** Clamp on log-ratios before exp (verl: 20); null = none. */
    logRatioClamp: number | null;
    /** Cap on the per-token k3 KL (verl: 10); null = none. */
    klClamp: number | null;
  };
  eval: {
    /** Evaluate every K steps; 0 = only the final evaluation (if `final`). */
    every: number;
    final: boolean;
    /** Evaluate before the first step too (step 0), to have a starting point on the curves. */
    initial: boolean;
    /** Samples per task; null = the environment's default (4; HotpotQA 1: `EnvConfig.evalSamples`). */
    n: number | null;
    sampling: SamplingConfig;
  };
  /**
   * Experiment tracking beside metrics.jsonl (which stays the source of truth): TensorBoard event
   * files in `<run>/tensorboard`, and/or a Weights & Biases run in `<run>/wandb` (src/train/tracking.ts).
   */
  tracking: {
    tensorboard: boolean;
    /** "offline": a local W&B run directory, no network (`wandb sync` uploads it later). */
    wandb: "off" | "offline" | "online";
    wandbProject: string;
    /** Python with the tensorboard and wandb packages; null = the engine's ($ERL_PYTHON or .venv). */
    python: string | null;
  };
  checkpoint: {
    /** Checkpoint every K steps (and always at the end). */
    every: number;
    /** Keep the newest K checkpoints (older ones are deleted once a newer one is complete). */
    keep: number;
  };
}

/** The keys of the `algo` block that every algorithm has; an algorithm's own keys come beside them. */
export interface AlgoConfig {
  /** A registered algorithm (src/train/algorithms/registry.ts). */
  name: string;
  /** Attempts per task; null = the algorithm's default (ERL 4, RLVR 10). */
  n: number | null;
  singleton: "reward-as-advantage" | "zero";
  allEqual: "zero" | "drop";
  profile: PromptProfileName;
  attemptSampling: SamplingConfig;
  maxTokensPerTurn: number;
  maxContextTokens: number;
  contextOverflow: "stop" | "shrink";
  turnTokenLimit: "step" | "stop";
  /** An algorithm's own keys (read through its own typed view, e.g. `erlAlgoConfig`). */
  [key: string]: unknown;
}

/** Environment option blocks, each named after its environment (values checked by its schema). */
export type EnvBlocks = { [env: string]: unknown };

/** The whole run config: the fixed keys, and a block per environment that declares options. */
export type RunConfig = BaseRunConfig & EnvBlocks;
