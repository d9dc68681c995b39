/**
 * The real dependencies of a training run: the engine client (a local child process or a remote
 * server, `src/engine/client.ts`), the model backend over it, the algorithms of `src/algo/` and the
 * environment registry. Loaded lazily so `erl train --help` and config errors cost nothing.
 */
import { join } from "node:path";
import type { Engine, LoadModelRequest } from "../engine/api.ts";
import type { ApiEndpointConfig, RunConfig } from "./config.ts";
import type { EnvFamily, EnvOptions } from "../envs/types.ts";
import type { EvaluateFn, MemoryJSON, ModelBackend, TrainOnSamplesFn } from "../algo/types.ts";
import type { Algorithm } from "./algorithms/types.ts";

/** What every algorithm's run shares: training on the step's samples, and evaluation. */
export interface Trainer {
  trainOnSamples: TrainOnSamplesFn;
  evaluate: EvaluateFn;
}

/** What a run needs from the rest of the system; tests substitute their own. */
export interface TrainDeps {
  /**
   * Starts an engine with the run's model loaded (the model path is already checked); `threads` fixes
   * a local engine's CPU threads (runs side by side, `erl compare --parallel`) instead of measuring.
   */
  startEngine(config: RunConfig, modelPath: string, opts?: { threads?: number }): Promise<Engine>;
  makeBackend(engine: Engine): Promise<ModelBackend>;
  /** The algorithm the config names (the registry's, src/train/algorithms/). */
  algorithm(name: string): Algorithm | Promise<Algorithm>;
  trainer(): Promise<Trainer>;
  /** The environment family by name, with the run's options for it (config/options.ts `envOptions`). */
  getEnv(name: string, opts?: EnvOptions): EnvFamily | Promise<EnvFamily>;
}

/** The engine's model request for a run config. */
export function loadModelRequest(cfg: RunConfig, modelPath: string): LoadModelRequest {
  const m = cfg.model;
  const reference = m.reference === "auto" ? (m.lora ? "base" : "copy") : m.reference;
  return {
    path: modelPath,
    dtype: m.dtype,
    device: m.device,
    ...(m.lora
      ? {
          lora: {
            rank: m.lora.rank,
            alpha: m.lora.alpha,
            dropout: m.lora.dropout,
            targetModules:
              m.lora.targetModules === "all-linear"
                ? "all-linear"
                : m.lora.targetModules.split(",").map((s) => s.trim()),
          },
        }
      : {}),
    // The KL term needs a reference only when its coefficient is non-zero.
    ...(reference !== "none" && cfg.loss.klCoef > 0 ? { reference } : {}),
    gradientCheckpointing: m.gradientCheckpointing,
    seed: cfg.seed,
  };
}

/**
 * The engine's stderr lines worth a line of progress, as shown: it re-measures its thread count during
 * a run, measures the training attention's precision per sequence length (bf16 models on CPU), and
 * names an environment setting it ignores. Everything else on its stderr stays in its log tail.
 */
export function engineProgressLine(line: string): string | null {
  for (const what of ["threads ", "attention ", "ignoring "]) {
    if (line.startsWith(`erl engine: ${what}`)) return `engine: ${line.slice("erl engine: ".length)}`;
  }
  return null;
}

/** Starts (or connects to) an engine and loads the run's model; closes the engine if loading fails. */
export async function startEngineFor(
  cfg: RunConfig,
  modelPath: string,
  opts: { threads?: number } = {},
): Promise<Engine> {
  const { openEngine } = await import("../engine/client.ts");
  const onStderr = (line: string) => {
    const shown = engineProgressLine(line);
    if (shown !== null) process.stderr.write(`${shown}\n`);
  };
  let engine: Engine =
    cfg.engine.kind === "tinker"
      ? await (await import("../engine/tinker.ts")).startTinkerBridge(cfg.engine, onStderr)
      : await openEngine({
          ...(cfg.engine.url ? { url: cfg.engine.url } : {}),
          ...(cfg.engine.python ? { python: cfg.engine.python } : {}),
          ...(opts.threads !== undefined ? { env: { ERL_ENGINE_THREADS: String(opts.threads) } } : {}),
          onStderr,
        });
  try {
    if (cfg.engine.sampler === "vllm") {
      const { VllmSampledEngine } = await import("../engine/vllm.ts");
      engine = await VllmSampledEngine.start(engine, {
        ...(cfg.engine.vllmPython ? { python: cfg.engine.vllmPython } : {}),
      });
    }
    await engine.loadModel(loadModelRequest(cfg, modelPath));
  } catch (e) {
    await engine.close().catch(() => undefined);
    throw e;
  }
  return engine;
}

export function defaultDeps(): TrainDeps {
  return {
    startEngine: startEngineFor,
    makeBackend: async (engine) => {
      const { EngineBackend } = await import("../agent/backend.ts");
      return EngineBackend.create(engine);
    },
    algorithm: async (name) => (await import("./algorithms/registry.ts")).getAlgorithm(name),
    trainer: async () => {
      const [learner, evaluation] = await Promise.all([
        import("../algo/learner.ts"),
        import("../algo/eval.ts"),
      ]);
      return { trainOnSamples: learner.trainOnSamples, evaluate: evaluation.evaluate };
    },
    getEnv: async (name, opts) => {
      const { getEnv } = await import("../envs/registry.ts");
      return getEnv(name, opts);
    },
  };
}

/** A run directory's config and newest checkpoint, for `erl eval` and `erl export`. */
export async function loadRunForInference(
  runDir: string,
): Promise<{ config: RunConfig; checkpoint: string; step: number; memory: MemoryJSON | undefined }> {
  const { RunFiles } = await import("./runfiles.ts");
  const { readLatestCheckpoint } = await import("./checkpoint.ts");
  const { validateConfig } = await import("./config.ts");
  const { UserError } = await import("../util/errors.ts");
  const files = new RunFiles(runDir);
  if (!files.exists()) throw new UserError(`${runDir}: not a run directory (no config.json)`);
  const raw = files.readConfig();
  const config = isSftConfig(raw)
    ? await sftAsRunConfig(raw, files.configFile)
    : validateConfig(raw, { file: files.configFile });
  const ckpt = readLatestCheckpoint(files.checkpointsDir);
  if (!ckpt) throw new UserError(`${runDir}: has no checkpoint yet (nothing trained to use)`);
  return {
    config,
    checkpoint: join(ckpt.dir, "engine"),
    step: ckpt.state.step,
    memory: (ckpt.state.memory ?? undefined) as MemoryJSON | undefined,
  };
}

/**
 * The OpenAI-compatible backend of a config block (`reflector` or `policy` with kind "openai"); the
 * key comes from the environment variable the block names.
 */
export async function apiBackendFor(
  block: "reflector" | "policy",
  endpoint: ApiEndpointConfig,
  sampling: { temperature?: number; topP?: number; maxTokens?: number } = {},
): Promise<import("../agent/openai-backend.ts").OpenAIBackend> {
  const { OpenAIBackend, apiKeyFrom } = await import("../agent/openai-backend.ts");
  if (!endpoint.baseUrl || !endpoint.model)
    throw new (await import("../util/errors.ts")).UserError(`${block}: baseUrl and model are required`);
  return new OpenAIBackend({
    baseUrl: endpoint.baseUrl,
    model: endpoint.model,
    apiKey: apiKeyFrom(endpoint.apiKeyEnv, `${block}.apiKeyEnv`),
    timeout: endpoint.timeout,
    maxRetries: endpoint.maxRetries,
    concurrency: endpoint.concurrency,
    ...(endpoint.pricePerInputToken !== null ? { pricePerInputToken: endpoint.pricePerInputToken } : {}),
    ...(endpoint.pricePerOutputToken !== null ? { pricePerOutputToken: endpoint.pricePerOutputToken } : {}),
    ...sampling,
  });
}

/** The reflector of a run: undefined when the policy reflects (the default). */
export async function reflectorFor(
  cfg: RunConfig,
): Promise<import("../agent/openai-backend.ts").OpenAIBackend | undefined> {
  const r = cfg.reflector;
  if (r.kind === "policy") return undefined;
  const { erlAlgoConfig } = await import("./algorithms/erl.ts");
  return apiBackendFor("reflector", r, {
    ...(r.temperature !== null ? { temperature: r.temperature } : {}),
    ...(r.topP !== null ? { topP: r.topP } : {}),
    maxTokens: r.maxTokens ?? erlAlgoConfig(cfg).maxReflectionTokens,
  });
}

function isSftConfig(raw: unknown): boolean {
  return typeof raw === "object" && raw !== null && (raw as { kind?: unknown }).kind === "sft";
}

/**
 * An SFT run's config as a run config (defaults for everything SFT does not have), so that `erl eval`,
 * `erl export` and `erl engine serve` use an SFT run like any other.
 */
async function sftAsRunConfig(raw: unknown, file: string): Promise<RunConfig> {
  const { validateSftConfig } = await import("./sft-config.ts");
  const { defaultConfig } = await import("./config.ts");
  const cfg = validateSftConfig(raw, { file });
  const base = defaultConfig();
  return {
    ...base,
    seed: cfg.seed,
    model: { ...cfg.model, reference: "none" },
    engine: { ...base.engine, url: cfg.engine.url, python: cfg.engine.python },
  };
}

/** The engine of an SFT run: the run config's engine start with the SFT config's model and engine keys. */
export async function startSftEngine(
  cfg: import("./sft-config.ts").SftConfig,
  modelPath: string,
): Promise<Engine> {
  return startEngineFor(await sftAsRunConfig(cfg, "config"), modelPath);
}
