/**
 * The run config's schema: the fixed keys, the `algo` keys of every registered algorithm, and a
 * block for each registered environment that declares options. Built on each call, since
 * environments and algorithms registered by `--env-module` modules are known only at run time.
 * `validateConfig` checks a partial config against it and merges it over a base; `crossCheck` holds
 * the constraints between keys.
 */
import { PROMPT_PROFILES } from "../../agent/prompts.ts";
import { envConfig, knownEnvs } from "../../envs/registry.ts";
import { inputError } from "../../util/errors.ts";
import { bool, check, int, num, obj, oneOf, str, type Field, type Source } from "../../util/schema.ts";
import { algorithmFields, getAlgorithm, knownAlgorithms } from "../algorithms/registry.ts";
import { samplingField } from "./attempts.ts";
import { defaultConfig } from "./defaults.ts";
import type { RunConfig } from "./types.ts";

const endpointFields = (): Record<string, Field> => ({
  baseUrl: str({ nullable: true, nonEmpty: true }),
  model: str({ nullable: true, nonEmpty: true }),
  apiKeyEnv: str({ nonEmpty: true }),
  timeout: num({ min: 0, exclusiveMin: true }),
  maxRetries: int(0, { max: 20 }),
  concurrency: int(1, { max: 256 }),
  pricePerInputToken: num({ min: 0, nullable: true }),
  pricePerOutputToken: num({ min: 0, nullable: true }),
});

/** The fixed keys: everything but the environments' blocks. */
function fixedFields(): Record<string, Field> {
  return {
    description: str(),
    name: str({ nullable: true, nonEmpty: true }),
    runsDir: str({ nonEmpty: true }),
    seed: int(0),
    env: oneOf(knownEnvs()),
    data: obj({
      trainTasks: int(1, { nullable: true }),
      evalTasks: int(1, { nullable: true }),
      evalSplit: oneOf(["test", "train"]),
      shuffle: bool,
    }),
    model: obj({
      path: str({ nonEmpty: true }),
      dtype: oneOf(["auto", "float32", "bfloat16"]),
      device: oneOf(["cpu", "cuda", "auto"]),
      lora: obj(
        {
          rank: int(1),
          alpha: num({ min: 0, exclusiveMin: true }),
          dropout: num({ min: 0, max: 1 }),
          targetModules: str({ nonEmpty: true }),
        },
        true,
      ),
      reference: oneOf(["auto", "copy", "base", "none"]),
      gradientCheckpointing: bool,
    }),
    engine: obj({
      kind: oneOf(["engine", "tinker"]),
      baseUrl: str({ nullable: true, nonEmpty: true }),
      apiKeyEnv: str({ nonEmpty: true }),
      baseModel: str({ nullable: true, nonEmpty: true }),
      url: str({ nullable: true, nonEmpty: true }),
      python: str({ nullable: true, nonEmpty: true }),
      sampler: oneOf(["engine", "vllm"]),
      vllmPython: str({ nullable: true, nonEmpty: true }),
    }),
    reflector: obj({
      kind: oneOf(["policy", "openai"]),
      ...endpointFields(),
      temperature: num({ min: 0, max: 2, nullable: true }),
      topP: num({ min: 0, max: 1, exclusiveMin: true, nullable: true }),
      maxTokens: int(1, { nullable: true }),
    }),
    policy: obj({ kind: oneOf(["engine", "openai"]), ...endpointFields() }),
    algo: obj({
      name: oneOf(knownAlgorithms()),
      n: int(1, { nullable: true }),
      singleton: oneOf(["reward-as-advantage", "zero"]),
      allEqual: oneOf(["zero", "drop"]),
      profile: oneOf(PROMPT_PROFILES),
      attemptSampling: samplingField(),
      maxTokensPerTurn: int(1),
      maxContextTokens: int(16),
      contextOverflow: oneOf(["stop", "shrink"]),
      turnTokenLimit: oneOf(["step", "stop"]),
      ...algorithmFields(),
    }),
    steps: int(1),
    timeBudget: num({ min: 0, exclusiveMin: true, nullable: true }),
    batchSize: int(1),
    optim: obj({
      lr: num({ min: 0 }),
      weightDecay: num({ min: 0 }),
      beta1: num({ min: 0, max: 1 }),
      beta2: num({ min: 0, max: 1 }),
      eps: num({ min: 0, exclusiveMin: true }),
      gradClip: num({ min: 0, exclusiveMin: true, nullable: true }),
    }),
    loss: obj({
      clipLow: num({ min: 0, max: 1 }),
      clipHigh: num({ min: 0 }),
      dualClip: num({ min: 1, exclusiveMin: true, nullable: true }),
      klCoef: num({ min: 0 }),
      aggregation: oneOf(["seq-mean-token-sum", "token-mean"]),
      microBatchSize: int(1),
      tisCap: num({ min: 0, exclusiveMin: true, nullable: true }),
      miniBatchTasks: int(1, { nullable: true }),
      temperature: num({ min: 0, exclusiveMin: true }),
      logRatioClamp: num({ min: 0, exclusiveMin: true, nullable: true }),
      klClamp: num({ min: 0, exclusiveMin: true, nullable: true }),
    }),
    eval: obj({
      every: int(0),
      final: bool,
      initial: bool,
      n: int(1, { nullable: true }),
      sampling: samplingField(),
    }),
    tracking: obj({
      tensorboard: bool,
      wandb: oneOf(["off", "offline", "online"]),
      wandbProject: str({ nonEmpty: true }),
      python: str({ nullable: true, nonEmpty: true }),
    }),
    checkpoint: obj({ every: int(1), keep: int(1) }),
  };
}

/** The whole schema, for the environments and algorithms registered now. */
export function runSchema(): Field {
  const fields = fixedFields();
  for (const env of knownEnvs()) {
    const options = envConfig(env).options;
    if (!options) continue;
    if (Object.hasOwn(fields, env))
      throw new Error(`environment "${env}" declares options, but "${env}" is already a config key`);
    fields[env] = obj(options.schema);
  }
  return obj(fields);
}

/** Validates a partial config object and merges it over `base` (default: `defaultConfig()`). */
export function validateConfig(
  value: unknown,
  where: Source = {},
  base: RunConfig = defaultConfig(),
  cross = true,
): RunConfig {
  const cfg = check(runSchema(), value, base, "", where) as RunConfig;
  if (cross) crossCheck(cfg, where);
  return cfg;
}

/** Constraints between keys (and those of the config's algorithm, `Algorithm.check`). */
export function crossCheck(cfg: RunConfig, where: Source): void {
  if (cfg.model.reference === "base" && !cfg.model.lora)
    throw inputError(
      { ...where, key: "model.reference" },
      '"base" needs LoRA (model.lora); use "copy" for full fine-tuning',
    );
  if (cfg.loss.clipHigh <= 0) throw inputError({ ...where, key: "loss.clipHigh" }, "must be > 0");
  if (cfg.engine.kind === "tinker") tinkerCheck(cfg, where);
  for (const [block, api] of [
    ["reflector", cfg.reflector.kind === "openai"],
    ["policy", cfg.policy.kind === "openai"],
  ] as const) {
    if (!api) continue;
    for (const k of ["baseUrl", "model"] as const)
      if (cfg[block][k] === null)
        throw inputError({ ...where, key: `${block}.${k}` }, `required when ${block}.kind is "openai"`);
    if (!/^https?:\/\//.test(cfg[block].baseUrl!))
      throw inputError({ ...where, key: `${block}.baseUrl` }, "must start with http:// or https://");
  }
  // Log-probs are taken at loss.temperature in rollouts and the loss; verl takes them at the
  // sampling temperature. T = 1 (raw logits) is this project's CPU setting; any other T must be
  // the attempts' own, or every ratio starts away from 1 on the attempts' tokens.
  const t = cfg.loss.temperature;
  if (t !== 1 && t !== cfg.algo.attemptSampling.temperature)
    throw inputError(
      { ...where, key: "loss.temperature" },
      `${t} is neither 1 (log-probs of the raw logits) nor the attempts' sampling temperature (algo.attemptSampling.temperature ${cfg.algo.attemptSampling.temperature}); set them equal, as verl does`,
    );
  if (cfg.engine.sampler === "vllm" && t !== 1)
    throw inputError(
      { ...where, key: "loss.temperature" },
      `${t}: the vLLM sampler (engine.sampler "vllm") reports log-probs at temperature 1 only; use loss.temperature 1 with it`,
    );
  const algo = getAlgorithm(cfg.algo.name);
  if (cfg.policy.kind === "openai" && algo.trains) {
    const frozen = knownAlgorithms().filter((n) => !getAlgorithm(n).trains);
    throw inputError(
      { ...where, key: "policy.kind" },
      `an API policy cannot be trained: "openai" needs an algorithm that trains nothing (${frozen.map((n) => `"${n}"`).join(", ")}; got "${cfg.algo.name}")`,
    );
  }
  algo.check?.(cfg, where);
}

/** What a Tinker service can run (its built-in losses, LoRA only); docs/tinker.md. */
function tinkerCheck(cfg: RunConfig, where: Source): void {
  const need = (key: string, ok: boolean, why: string) => {
    if (!ok) throw inputError({ ...where, key }, `${why} with engine.kind "tinker" (docs/tinker.md)`);
  };
  need("engine.baseModel", cfg.engine.baseModel !== null, 'is required (e.g. "Qwen/Qwen3-4B-Instruct-2507")');
  need("engine.url", cfg.engine.url === null, "must be null (engine.baseUrl names the service)");
  need("engine.sampler", cfg.engine.sampler === "engine", 'must be "engine" (the service samples)');
  if (cfg.engine.baseUrl !== null)
    need("engine.baseUrl", /^https?:\/\//.test(cfg.engine.baseUrl), "must start with http(s)://");
  need("model.lora", cfg.model.lora !== null, "must be set (a Tinker service trains LoRA adapters)");
  need("loss.klCoef", cfg.loss.klCoef === 0, "must be 0 (no built-in Tinker loss has a KL term)");
  need("loss.dualClip", cfg.loss.dualClip === null, "must be null (no built-in Tinker loss has a dual clip)");
  need("loss.tisCap", cfg.loss.tisCap === null, "must be null");
  need("loss.logRatioClamp", cfg.loss.logRatioClamp === null, "must be null");
  need("loss.klClamp", cfg.loss.klClamp === null, "must be null");
  need(
    "loss.temperature",
    cfg.loss.temperature === 1,
    "must be 1 (the service's log-probs are at temperature 1)",
  );
}
