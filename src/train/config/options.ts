/**
 * Config → what the run's parts take: the environment's options, evaluation's options, the
 * learner's loss settings and the optimiser's. (Each algorithm maps its own step options, in its
 * descriptor: src/train/algorithms/.)
 */
import type { EvalOptions, LearnerConfig } from "../../algo/types.ts";
import type { AdamWConfig } from "../../engine/api.ts";
import { envConfig } from "../../envs/registry.ts";
import type { EnvOptions } from "../../envs/types.ts";
import { attemptsPerTask } from "../algorithms/registry.ts";
import { loopOptions, samplingOptions } from "./attempts.ts";
import type { RunConfig } from "./types.ts";

/** The options a run passes to its environment family's constructor: its config block, if it declares one. */
export function envOptions(cfg: RunConfig): EnvOptions {
  return envConfig(cfg.env).options ? { ...(cfg[cfg.env] as EnvOptions) } : {};
}

/** Evaluation samples per task: `eval.n`, else the environment's default (4; HotpotQA 1). */
export function evalSamplesPerTask(cfg: RunConfig): number {
  return cfg.eval.n ?? envConfig(cfg.env).evalSamples ?? 4;
}

export function evalOptionsFrom(cfg: RunConfig): EvalOptions {
  return {
    ...loopOptions(cfg),
    n: evalSamplesPerTask(cfg),
    sampling: samplingOptions(cfg.eval.sampling),
    profile: cfg.algo.profile,
    split: cfg.data.evalSplit,
  };
}

export function learnerConfigFrom(cfg: RunConfig): LearnerConfig {
  const { miniBatchTasks, ...loss } = cfg.loss;
  // verl counts ppo_mini_batch_size in tasks and multiplies it by n.
  return { ...loss, miniBatchSize: miniBatchTasks === null ? null : miniBatchTasks * attemptsPerTask(cfg) };
}

export function optimConfigFrom(cfg: RunConfig): AdamWConfig {
  const o = cfg.optim;
  return {
    lr: o.lr,
    betas: [o.beta1, o.beta2],
    eps: o.eps,
    weightDecay: o.weightDecay,
    ...(o.gradClip !== null ? { gradClip: o.gradClip } : {}),
  };
}
