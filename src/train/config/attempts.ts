/**
 * What every step that runs attempts takes from the run config: sampling settings and the
 * multi-turn loop's limits. Shared by the algorithms' option mappers (src/train/algorithms/) and
 * evaluation (options.ts).
 */
import type { LoopOptions, SamplingOptions } from "../../algo/types.ts";
import { int, num, obj, type Field } from "../../util/schema.ts";
import type { RunConfig, SamplingConfig } from "./types.ts";

/** The schema of a sampling block: temperature, top-p, top-k (null = none). */
export const samplingField = (): Field =>
  obj({
    temperature: num({ min: 0 }),
    topP: num({ min: 0, max: 1, exclusiveMin: true }),
    topK: int(1, { nullable: true }),
  });

export function samplingOptions(s: SamplingConfig): SamplingOptions {
  return { temperature: s.temperature, topP: s.topP, ...(s.topK !== null ? { topK: s.topK } : {}) };
}

export function loopOptions(cfg: RunConfig): LoopOptions {
  return {
    logprobTemperature: cfg.loss.temperature,
    maxTokensPerTurn: cfg.algo.maxTokensPerTurn,
    maxContextTokens: cfg.algo.maxContextTokens,
    contextOverflow: cfg.algo.contextOverflow,
    turnTokenLimit: cfg.algo.turnTokenLimit,
  };
}
