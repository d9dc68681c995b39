/** The run config's defaults (docs/training.md). */
import { envConfig, knownEnvs } from "../../envs/registry.ts";
import { algorithmDefaults } from "../algorithms/registry.ts";
import type { ApiEndpointConfig, RunConfig } from "./types.ts";

function defaultEndpoint(): ApiEndpointConfig {
  return {
    baseUrl: null,
    model: null,
    apiKeyEnv: "OPENAI_API_KEY",
    timeout: 60,
    maxRetries: 2,
    concurrency: 4,
    pricePerInputToken: null,
    pricePerOutputToken: null,
  };
}

/**
 * The defaults: CPU scale for erl-tiny on FrozenLake; presets and files override them. This is the
 * project's one table of defaults — the algorithm options, the learner's loss settings and the
 * optimiser all take theirs from here (through the mappers of options.ts and the algorithms'
 * descriptors, which add the defaults of their own `algo` keys, as environments add those of their
 * option blocks); the paper's values live only in the paper presets (configs/*-paper.json).
 */
export function defaultConfig(): RunConfig {
  return {
    description: "",
    name: null,
    runsDir: "runs",
    seed: 0,
    env: "frozenlake",
    data: { trainTasks: null, evalTasks: 32, evalSplit: "test", shuffle: true },
    model: {
      path: "models/erl-tiny",
      dtype: "auto",
      device: "cpu",
      lora: null,
      reference: "auto",
      gradientCheckpointing: false,
    },
    engine: {
      kind: "engine",
      baseUrl: null,
      apiKeyEnv: "TINKER_API_KEY",
      baseModel: null,
      url: null,
      python: null,
      sampler: "engine",
      vllmPython: null,
    },
    reflector: {
      kind: "policy",
      ...defaultEndpoint(),
      temperature: null,
      topP: null,
      maxTokens: null,
    },
    policy: { kind: "engine", ...defaultEndpoint() },
    algo: {
      name: "erl",
      n: null,
      singleton: "reward-as-advantage",
      allEqual: "zero",
      profile: "compact",
      attemptSampling: { temperature: 0.7, topP: 1, topK: null },
      maxTokensPerTurn: 48,
      maxContextTokens: 2048,
      contextOverflow: "stop",
      turnTokenLimit: "step",
      ...algorithmDefaults(),
    },
    steps: 20,
    timeBudget: null,
    batchSize: 8,
    optim: { lr: 1e-5, weightDecay: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, gradClip: 1 },
    loss: {
      clipLow: 0.2,
      clipHigh: 0.28,
      dualClip: 3,
      klCoef: 0.001,
      aggregation: "seq-mean-token-sum",
      microBatchSize: 8,
      tisCap: null,
      temperature: 1,
      logRatioClamp: null,
      klClamp: null,
      miniBatchTasks: null,
    },
    eval: {
      every: 5,
      final: true,
      initial: true,
      n: null,
      sampling: { temperature: 0.7, topP: 0.8, topK: 20 },
    },
    tracking: { tensorboard: false, wandb: "off", wandbProject: "erl", python: null },
    checkpoint: { every: 5, keep: 2 },
    ...envDefaults(),
  };
}

/** Each registered environment's option block, at its declared defaults. */
function envDefaults(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const env of knownEnvs()) {
    const options = envConfig(env).options;
    if (options) out[env] = structuredClone(options.defaults);
  }
  return out;
}
